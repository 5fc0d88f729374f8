package tests

import (
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/netfault"
)

// startProxy puts a netfault relay in front of upstream for the test's
// lifetime: a link the test can cut (Cut), take down (SetDown) and measure
// (Up: client to upstream, Down: upstream to client).
func startProxy(t *testing.T, upstream string) *netfault.Relay {
	t.Helper()
	p, err := netfault.New(upstream)
	if err != nil {
		t.Fatalf("proxy to %s: %v", upstream, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// slowLinkDelay holds each read a slow link forwards: reads are forwarded
// one at a time, so it caps the link at a few MB/s on loopback and a 64 MiB
// stream takes seconds instead of a fraction of one.
const slowLinkDelay = 30 * time.Millisecond

// slowLink returns a server URL behind a relay slow enough that a test can
// act midway through one client's transfer, e.g. kill that target's
// receiver at a third of the stream, however fast the rest of the machine
// is: without it a small stream may be complete before the first poll.
func slowLink(t *testing.T, s *natsServer) string {
	t.Helper()
	p := startProxy(t, s.addr)
	p.SetDelay(slowLinkDelay)
	return "nats://" + p.Addr()
}
