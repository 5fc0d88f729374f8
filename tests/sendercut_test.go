package tests

import (
	"context"
	"strings"
	"testing"
	"time"
)

// The network between the sender and the NATS server fails mid-transfer
// (the receiver talks to the server directly). The sender must carry on
// from the last chunk the stream holds, and every chunk must reach the
// target exactly once: the replication commits in its first attempt.
func TestSenderConnectionCutMidTransfer(t *testing.T) {
	source, target, size := newPair(t, dataSet{seed: 17, bulk: 96 * mib})
	srv := startServer(t)
	proxy := startProxy(t, srv.addr)
	startReceiver(t, srv.url(), "backup", target)
	t.Logf("sender connects through a proxy at %s, the receiver directly to %s", proxy.Addr(), srv.addr)
	// A small window keeps the sender in step with the receiver and the
	// link is slow, so the cut lands while the sender is still publishing.
	proxy.SetDelay(slowLinkDelay)
	send := startSnapjet(t, "send", "send", "--server", "nats://"+proxy.Addr(), "--to", "backup", "--window", "16777216", source)

	rep := waitForReplication(t, send, srv.liveStatus, "the cut point", newProbe(t, srv.url()).appliedAtLeast(killPoint, size, chunkSize, target))
	proxy.SetDown(true)
	cut := proxy.Cut()
	t.Logf("cut %d sender connections; network down until the sender tried to reconnect", cut)
	if cut == 0 {
		t.Fatal("the sender had no connection through the proxy to cut")
	}
	waitUntil(t, send, 30*time.Second, "the sender to find the network down", func(context.Context) bool { return proxy.Refused() > 0 })
	proxy.SetDown(false)

	res := send.wait(transferTimeout)
	if res.code != 0 {
		t.Fatalf("send failed with code %d: %s", res.code, res.stderr)
	}
	done := assertDone(t, srv.status(), rep.SnapshotName)
	if done.Attempt != 1 {
		t.Errorf("attempt %d: the cut restarted the replication instead of resuming it", done.Attempt)
	}
	t.Logf("figures: %d chunks, %d wire bytes stored, %d bytes through the proxy to the server; resumed in place: %v",
		done.TotalChunks, done.WireBytes, proxy.Up(), strings.Contains(res.stderr, "republished unconfirmed chunks"))
	assertAllChunksApplied(t, done, target, 0)
	assertCaughtUp(t, rep, source, target)
}
