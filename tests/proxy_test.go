package tests

import (
	"testing"

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
