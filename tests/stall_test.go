package tests

import (
	"context"
	"strings"
	"testing"
)

// One of two targets has no receiver at all, and the data is larger than
// the window. The sender must not wait for it for ever: after
// --stall-timeout it drops that target from the run (failed, with a reason
// that says to check its receiver), the other target commits, and the
// command reports the failure.
func TestFanOutSilentTargetIsDroppedAfterTheStallTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		window string
	}{
		{"the window fills up", "8388608"},
		// The rest of the stream fits in the window: nothing holds the
		// sender back, but the run still must not wait for ever.
		{"the stream fits in the window", "1073741824"},
	} {
		t.Run(tc.name, func(t *testing.T) { silentTargetIsDropped(t, tc.window) })
	}
}

func silentTargetIsDropped(t *testing.T, window string) {
	source, live, _ := newPair(t, dataSet{seed: 16, bulk: 48 * mib})
	silent := newTarget(t, 1<<30, "backup-silent")
	srv := startServer(t)
	startReceiver(t, srv.url(), "live", live)
	silentRecv := startReceiver(t, srv.url(), "silent", silent)

	t.Logf("sending 48 MiB through a %s-byte window to targets live and silent; the receiver of silent dies once the replication is planned", window)
	send := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "live,silent",
		"--window", window, "--stall-timeout", "3s", source)
	waitForReplication(t, send, srv.liveStatus, "the replication to be planned", func(context.Context, replication) bool { return true })
	silentRecv.kill()
	res := send.wait(transferTimeout)
	if res.code != 1 {
		t.Fatalf("send exited %d, want 1 (one target failed): %s", res.code, res.stderr)
	}
	doc := srv.status()
	if len(doc.Replications) != 1 {
		t.Fatalf("%d replications, want 1", len(doc.Replications))
	}
	rep := doc.Replications[0]
	if ts := rep.Targets["silent"]; ts.State != "failed" || !strings.Contains(ts.Error, "its receiver") {
		t.Errorf("silent target: %+v, want failed with a reason naming its receiver", ts)
	}
	if ts := rep.Targets["live"]; ts.State != "committed" {
		t.Errorf("live target: %+v, want committed: a silent target must not take the live one with it", ts)
	}
	if !strings.Contains(res.stderr, "silent") {
		t.Errorf("stderr does not name the failed target: %s", res.stderr)
	}
	assertReplicated(t, rep.Snapshot, live)
	assertNoPartialCommitted(t, silent, rep)
}
