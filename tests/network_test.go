package tests

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// The network between the receiver and the NATS server fails mid-transfer
// (every connection through a proxy is cut, and may stay unreachable for a
// while; the sender talks to the server directly). The receiver must carry on from its last acknowledged chunk:
// at most one window of unacknowledged chunks comes again, which the
// proxy's byte count confirms independently of snapjet's own counters.
func TestReceiverConnectionCutMidTransfer(t *testing.T) {
	const (
		smallChunk    = 256 << 10
		maxAckPending = 64 // chunks a receiver's consumer may hold unacknowledged
		// Per delivered message NATS adds a MSG line, a reply subject and
		// headers; the receiver also sends acks and progress of its own.
		overheadPerChunk = 1 << 10
		overheadFixed    = 1 * mib
	)
	tests := []struct {
		name   string
		outage time.Duration
	}{
		{name: "cut", outage: 0},
		{name: "cut and unreachable for 3s", outage: 3 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source, target, size := newPair(t, dataSet{seed: 3, bulk: 96 * mib})
			srv := startServer(t)
			proxy := startProxy(t, srv.addr)
			proxy.SetDelay(slowLinkDelay) // the cut lands mid-transfer, however fast the machine
			t.Logf("receiver connects through a proxy at %s, the sender directly to %s", proxy.Addr(), srv.addr)
			recv := startReceiver(t, "nats://"+proxy.Addr(), "backup", target)
			send := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "backup", "--chunk-size", strconv.Itoa(smallChunk), source)

			rep := waitForReplication(t, send, srv.liveStatus, "the cut point", newProbe(t, srv.url()).appliedAtLeast(killPoint, size, smallChunk, target))
			proxy.SetDown(true)
			cut := proxy.Cut()
			t.Logf("cut %d receiver connections after %d bytes had passed to the receiver; network down for %v", cut, proxy.Down(), tc.outage)
			if cut == 0 {
				t.Fatal("the receiver had no connection through the proxy to cut")
			}
			if tc.outage > 0 {
				cutAt := time.Now()
				// The outage only tests something once the receiver has
				// found the network down; then it lasts its full length.
				waitUntil(t, recv, 30*time.Second, "the receiver to find the network down", func(context.Context) bool { return proxy.Refused() > 0 })
				time.Sleep(time.Until(cutAt.Add(tc.outage)))
			}
			proxy.SetDown(false)

			if res := send.wait(transferTimeout); res.code != 0 {
				t.Fatalf("send failed with code %d: %s", res.code, res.stderr)
			}
			done := assertDone(t, srv.status(), rep.SnapshotName)
			_, ts, ok := done.target(target)
			if !ok {
				t.Fatalf("status of %s has no target for %s", done.ID, target)
			}
			t.Logf("figures: %d chunks, %d wire bytes sent, %d redelivered chunks, %d bytes to the receiver through the proxy, %d back",
				done.TotalChunks, done.WireBytes, ts.RedeliveredChunks, proxy.Down(), proxy.Up())
			if ts.RedeliveredChunks > maxAckPending {
				t.Errorf("%d chunks were redelivered, more than one window of %d unacknowledged chunks", ts.RedeliveredChunks, maxAckPending)
			}
			limit := done.WireBytes + maxAckPending*smallChunk + done.TotalChunks*overheadPerChunk + overheadFixed
			if down := proxy.Down(); down > limit {
				t.Errorf("%d bytes reached the receiver, more than the %d wire bytes plus one window (limit %d): the transfer restarted instead of resuming",
					down, done.WireBytes, limit)
			}
			assertCaughtUp(t, rep, source, target)
		})
	}
}
