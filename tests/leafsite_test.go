package tests

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/netfault"
)

// The hub-and-leaf deployment of deploy/nats: a standalone nats-server hub
// with JetStream in domain "hub", and a stock nats-server leaf node without
// JetStream whose clients reach the hub's JetStream through
// default_js_domain, and whose one link to the hub runs through a proxy, so
// a test can cut the WAN. The configurations carry what matters for that
// (domain, default_js_domain, max_payload, the leafnode link and its
// authorization) on loopback ports; they leave out TLS and client
// passwords, which deploy/nats's own tests cover.

var (
	natsServerOnce sync.Once
	natsServerPath string
	natsServerErr  error
)

// natsServerBinary builds the standalone nats-server once per test binary,
// the version go.mod pins (it is a module dependency already, so this needs
// no network), next to the snapjet binary TestMain built.
func natsServerBinary(t *testing.T) string {
	t.Helper()
	natsServerOnce.Do(func() {
		out := filepath.Join(filepath.Dir(snapjetBin), "nats-server")
		build := exec.Command("go", "build", "-o", out, "github.com/nats-io/nats-server/v2")
		if msg, err := build.CombinedOutput(); err != nil {
			natsServerErr = fmt.Errorf("build nats-server: %v: %s", err, msg)
			return
		}
		natsServerPath = out
	})
	if natsServerErr != nil {
		t.Fatal(natsServerErr)
	}
	return natsServerPath
}

// leafSite is a hub with a leaf node whose link to the hub can be cut.
type leafSite struct {
	t        *testing.T
	hub      *proc
	leaf     *proc
	link     *netfault.Relay // the leaf node's connection to the hub's leafnode port
	hubAddr  string          // clients of the hub (senders) connect here
	leafAddr string          // clients at the site (receivers) connect here
	leafJS   jetstream.JetStream
}

// startLeafSite starts the hub, the proxy and the leaf node, and returns
// once a client of the leaf node can use the hub's JetStream.
func startLeafSite(t *testing.T) *leafSite {
	t.Helper()
	bin := natsServerBinary(t)
	dir := t.TempDir()
	s := &leafSite{t: t, hubAddr: freeAddr(t), leafAddr: freeAddr(t)}
	hubLeafAddr := freeAddr(t)
	s.link = startProxy(t, hubLeafAddr)

	hubConf := writeConfig(t, dir, "hub.conf", fmt.Sprintf(`
server_name: snapjet-hub
listen: %q
max_payload: 8MB
jetstream {
  store_dir: %q
  domain: hub
  max_file_store: 8GB
  max_memory_store: 256MB
}
leafnodes {
  listen: %q
  # The hub tells leaf nodes where else to reach it; in a real deployment
  # that is its WAN address, here the proxy's.
  advertise: %q
  authorization { user: leaf, password: "CHANGE-ME-leaf" }
}
`, s.hubAddr, filepath.Join(dir, "jetstream"), hubLeafAddr, s.link.Addr()))
	s.hub = startCommand(t, "hub", bin, "-c", hubConf)
	waitUntil(t, s.hub, 30*time.Second, "the hub to accept clients on "+s.hubAddr, func(ctx context.Context) bool {
		return dialable(s.hubAddr)
	})
	waitUntil(t, s.hub, 30*time.Second, "the hub's leafnode port "+hubLeafAddr, func(ctx context.Context) bool {
		return dialable(hubLeafAddr)
	})

	leafConf := writeConfig(t, dir, "leaf.conf", fmt.Sprintf(`
server_name: snapjet-leaf-site-a
listen: %q
max_payload: 8MB
# Clients without an account ($G) use the hub's JetStream.
default_js_domain: { $G: hub }
leafnodes {
  remotes = [ { url: "nats-leaf://leaf:CHANGE-ME-leaf@%s" } ]
}
`, s.leafAddr, s.link.Addr()))
	s.leaf = startCommand(t, "leaf", bin, "-c", leafConf)
	waitUntil(t, s.leaf, 30*time.Second, "the leaf node to accept clients on "+s.leafAddr, func(ctx context.Context) bool {
		return dialable(s.leafAddr)
	})

	nc, err := nats.Connect("nats://"+s.leafAddr, nats.Name("e2e-link-check"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to the leaf node: %v", err)
	}
	t.Cleanup(nc.Close)
	if s.leafJS, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, s.leaf, 30*time.Second, "the leaf node's link to the hub", s.linkUp)
	t.Logf("hub at %s (leafnode port %s), leaf node at %s, its link to the hub through %s", s.hubAddr, hubLeafAddr, s.leafAddr, s.link.Addr())
	return s
}

// hubURL is how senders, status and probes reach the hub.
func (s *leafSite) hubURL() string { return "nats://" + s.hubAddr }

// leafURL is how the site's receivers reach the leaf node.
func (s *leafSite) leafURL() string { return "nats://" + s.leafAddr }

// liveStatus reads status through the hub.
func (s *leafSite) liveStatus(ctx context.Context) (statusDoc, error) {
	return readStatus(ctx, "--server", s.hubURL())
}

// status reads status where it must work.
func (s *leafSite) status() statusDoc {
	s.t.Helper()
	return mustStatus(s.t, "--server", s.hubURL())
}

// linkUp reports whether a client of the leaf node gets an answer from the
// hub's JetStream, which is what a receiver at the site needs.
func (s *leafSite) linkUp(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := s.leafJS.AccountInfo(ctx)
	return err == nil
}

// cutLink cuts the leaf node's connection to the hub and keeps refusing
// new ones, like a WAN that went down. It returns once a client of the leaf
// node no longer reaches the hub's JetStream.
func (s *leafSite) cutLink() {
	s.t.Helper()
	s.link.SetDown(true)
	n := s.link.Cut()
	if n == 0 {
		s.t.Fatal("the leaf node had no connection to the hub to cut")
	}
	s.t.Logf("WAN down: cut %d leaf connection(s) after %d bytes to the leaf node and %d to the hub", n, s.link.Down(), s.link.Up())
	waitUntil(s.t, nil, 10*time.Second, "the leaf node to lose the hub", func(ctx context.Context) bool {
		return !s.linkUp(ctx)
	})
}

// restoreLink lets the leaf node connect again and returns the moment it
// did so: the start of every bound on recovery.
func (s *leafSite) restoreLink() time.Time {
	s.link.SetDown(false)
	s.t.Log("WAN up again: the proxy accepts the leaf node's connection")
	return time.Now()
}

// writeConfig writes a nats-server configuration file into dir.
func writeConfig(t *testing.T, dir, name, conf string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	if err := os.WriteFile(out, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// dialable reports whether something accepts TCP connections at addr.
func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
