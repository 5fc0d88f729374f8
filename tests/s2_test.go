package tests

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Chunks compressed with S2 (`send --compress s2`, the level auto takes
// while the link has room) reach a target whose receiver announced it
// reads S2: the record keeps that announcement, the sender's chunks went S2
// and shrank, and the received tree equals the source. The receiver
// reported its pace (time at the attempt, time busy), which auto reads to
// tell a full link from busy targets.
func TestS2ChunksReachATargetThatReadsThem(t *testing.T) {
	source, target, _ := newPair(t, dataSet{seed: 43, bulk: 4 * mib})
	var text bytes.Buffer
	for i := 0; text.Len() < 24*mib; i++ {
		fmt.Fprintf(&text, "%08d snapjet sends btrfs snapshots over NATS JetStream, chunk by chunk, and resumes where it stopped\n", i)
	}
	if err := os.WriteFile(filepath.Join(source, "log.txt"), text.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t)
	startReceiver(t, srv.url(), "backup", target)

	res := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "backup", "--compress", "s2", source).wait(transferTimeout)
	if res.code != 0 {
		t.Fatalf("send exited %d: %s", res.code, res.stderr)
	}
	rep, ok := srv.status().newest()
	if !ok {
		t.Fatal("status lists no replication after a successful send")
	}
	if !slices.Contains(rep.Decodes, "s2") {
		t.Errorf("the record says its targets read %v: the receiver's announcement of s2 was lost", rep.Decodes)
	}
	if !strings.Contains(res.stderr, "s2:") {
		t.Errorf("the sender's log counts no chunk at s2: %s", res.stderr)
	}
	t.Logf("figures: %d bytes of send stream, %d on the wire (%.3f)", rep.TotalBytes, rep.WireBytes, float64(rep.WireBytes)/float64(rep.TotalBytes))
	if rep.WireBytes*10 > rep.TotalBytes*7 {
		t.Errorf("%d wire bytes for a %d-byte stream of mostly text: the chunks did not shrink", rep.WireBytes, rep.TotalBytes)
	}
	for name, ts := range rep.Targets {
		if ts.ElapsedMs <= 0 || ts.BusyMs < 0 || ts.BusyMs > ts.ElapsedMs {
			t.Errorf("target %s reported %d ms busy of %d ms at the attempt: want 0 <= busy <= elapsed, elapsed > 0", name, ts.BusyMs, ts.ElapsedMs)
		}
	}
	assertReplicated(t, rep.Snapshot, target)
}
