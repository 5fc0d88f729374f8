// Package tests holds snapjet's end-to-end failure scenarios: each test
// drives the real snapjet binary against loop-backed btrfs filesystems and a
// real NATS server, breaks something on purpose (a SIGKILL, a cut
// connection, a full disk, bad input) and checks what a user would check
// afterwards: the replicated snapshot is complete, read-only, carries the
// source's UUID and has the same tree as the source, and no partial receive
// is ever taken for complete.
//
// The suite needs root (loop devices, mount) and btrfs-progs; it builds
// ./cmd/snapjet once (and the standalone nats-server go.mod pins, for the
// hub and leaf node of TestLeafLinkCut). TestLeafLinkCut, which holds a WAN
// link down for 10 s and for 3 minutes, takes about five and a half minutes
// of the run on two cores:
//
//	sudo go test ./tests -v
//
// tests/FINDINGS.md records the implementation faults it found.
package tests
