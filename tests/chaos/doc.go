// Package chaos is snapjet's randomized fault runner. Each trial builds
// real loop-backed btrfs filesystems, a `snapjet server`, and either
// `snapjet send` with one `snapjet receive` per target or `snapjet
// replicate`, every client talking to the server through a TCP relay that
// can be cut. It replicates a source over a few rounds with incremental
// changes between them, injects exactly one fault at a random moment
// (kill -9 of the sender, a receiver or the server, a server restart, a
// cut link, a receiver down for a while), lets the system recover, and
// checks what a user would check: every committed snapshot equals its
// source, nothing partial sits at a final name, staging is empty,
// `snapjet status --json` matches the disks, and no process hung.
//
// It is not part of `go test ./...` (this package has no tests); run it
// with scripts/chaos. Every choice of a trial comes from a PRNG seeded by
// (seed, trial number), so a failing trial is rerun with the same -seed and
// -trial; the timing of the machine is, of course, not reproduced.
package chaos
