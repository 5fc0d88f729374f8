package tests

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/netfault"
	"github.com/snapjet/snapjet/streams"
)

// sites is a hub with site nodes that run JetStream in domains of their
// own (issue 8): the hub is `snapjet server --domain hub --leaf-listen`,
// site-a a stock nats-server configured like deploy/nats/site.conf, and
// site-b `snapjet server --domain site-b --hub`. Each site's one link to
// the hub runs through a byte-counting relay that the test can cut.
type sites struct {
	t       *testing.T
	hubAddr string
	addr    map[string]string          // client address of each site node
	link    map[string]*netfault.Relay // each site's link to the hub
	js      map[string]jetstream.JetStream
	procs   []*proc
}

func startSites(t *testing.T) *sites {
	t.Helper()
	s := &sites{t: t, hubAddr: freeAddr(t), addr: map[string]string{}, link: map[string]*netfault.Relay{}, js: map[string]jetstream.JetStream{}}
	leafPort := freeAddr(t)
	hub := startSnapjet(t, "hub", "server", "--store", t.TempDir(), "--listen", s.hubAddr, "--domain", "hub", "--leaf-listen", leafPort)
	waitUntil(t, hub, 30*time.Second, "the hub's leafnode port "+leafPort, func(context.Context) bool { return dialable(leafPort) })
	s.procs = append(s.procs, hub)
	for _, name := range []string{"site-a", "site-b"} {
		s.addr[name] = freeAddr(t)
		s.link[name] = startProxy(t, leafPort)
	}
	dir := t.TempDir()
	conf := writeConfig(t, dir, "site-a.conf", fmt.Sprintf(`
server_name: snapjet-site-a
listen: %q
max_payload: 8MB
jetstream { store_dir: %q, domain: site-a }
leafnodes { remotes = [ { url: "nats-leaf://%s" } ] }
`, s.addr["site-a"], filepath.Join(dir, "site-a"), s.link["site-a"].Addr()))
	s.procs = append(s.procs, startCommand(t, "site-a", natsServerBinary(t), "-c", conf),
		startSnapjet(t, "site-b", "server", "--store", t.TempDir(), "--listen", s.addr["site-b"], "--domain", "site-b",
			"--hub", "nats-leaf://"+s.link["site-b"].Addr()))
	for name, addr := range s.addr {
		waitUntil(t, nil, 30*time.Second, name+" to accept clients on "+addr, func(context.Context) bool { return dialable(addr) })
		nc, err := nats.Connect("nats://"+addr, nats.Name("e2e-"+name), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatalf("connect to %s: %v", name, err)
		}
		t.Cleanup(nc.Close)
		if s.js[name], err = jetstream.NewWithDomain(nc, "hub"); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, nil, 30*time.Second, name+"'s link to the hub", func(ctx context.Context) bool { return s.linkUp(ctx, name) })
	}
	return s
}

func (s *sites) hubURL() string { return "nats://" + s.hubAddr }

func (s *sites) liveStatus(ctx context.Context) (statusDoc, error) {
	return readStatus(ctx, "--server", s.hubURL())
}

// linkUp reports whether a client of site's node reaches the hub's JetStream.
func (s *sites) linkUp(ctx context.Context, site string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := s.js[site].AccountInfo(ctx)
	return err == nil
}

// receiver starts the receiver of target at site's node.
func (s *sites) receiver(site, target, dir string) *proc {
	return startReceiver(s.t, "nats://"+s.addr[site], target, dir, "--js-domain", "hub")
}

// siteStreams lists the replication streams in site's own JetStream.
func (s *sites) siteStreams(ctx context.Context, site string) ([]string, error) {
	nc, err := nats.Connect("nats://" + s.addr[site])
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	var names []string
	list := js.StreamNames(ctx)
	for n := range list.Name() {
		names = append(names, n)
	}
	return names, list.Err()
}

// TestOneCopyPerSite sends one replication from the hub to two targets at
// each of two sites, with a window much smaller than the stream: each
// site's node keeps a copy of the stream that its two targets consume, so
// the stream crosses each site's link once (at most 1.02 times the bytes
// the sender stored, control traffic included), every target commits a
// replica equal to the source, and the copies are gone at the end. In the
// cut cases, site-a's link is cut for 10 s or 3 min while its targets
// receive: the data waits at the hub within the window, the replication
// still commits everywhere without a restart, within recoveryBound of the
// link's return plus the time the rest of the stream takes at the rate
// limit, and the link carries at most 1.05 times the stream.
func TestOneCopyPerSite(t *testing.T) {
	for _, c := range []siteCase{
		{name: "steady", bound: 1.02},
		{name: "cut-10s", cut: 10 * time.Second, bound: 1.05, recover: recoveryBound},
		{name: "cut-3m", cut: 3 * time.Minute, bound: 1.05, recover: recoveryBound},
	} {
		t.Run(c.name, func(t *testing.T) { oneCopyPerSite(t, c) })
	}
}

// siteCase is one run of TestOneCopyPerSite: how long site-a's link is
// cut, the most the stream may cost on each link, and how soon after the
// link's return the replication must be over.
type siteCase struct {
	name         string
	cut, recover time.Duration
	bound        float64
}

func oneCopyPerSite(t *testing.T, c siteCase) {
	cut, bound := c.cut, c.bound
	s := startSites(t)
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	// After a cut the site's feed goes on from the copy's last flow-control
	// acknowledgement: up to a window (8 MiB here) crosses twice, which is
	// 5 % of a 160 MiB stream.
	bulk := int64(40 * mib)
	if cut > 0 {
		bulk = 160 * mib
	}
	dataSet{seed: 61, bulk: bulk}.newSource(t, source)
	targets := map[string]string{"a1": "site-a", "a2": "site-a", "b1": "site-b", "b2": "site-b"}
	dirs := map[string]string{}
	procs := append([]*proc{}, s.procs...)
	for name, site := range targets {
		dirs[name] = newTarget(t, 1<<30, name)
		procs = append(procs, s.receiver(site, name, dirs[name]))
	}
	args := []string{"send", "--server", s.hubURL(), "--to", "a1,a2,b1,b2", "--window", "8MiB"}
	// The cut must land mid-transfer: at 16 MB/s, the rest of the stream
	// after the cut takes about 7 s.
	const rest = 10 * time.Second
	if cut > 0 {
		args = append(args, "--rate-limit", "16MB/s")
	}
	send := startSnapjet(t, "send", append(args, source)...)
	procs = append(procs, send)

	if cut > 0 {
		waitForReplication(t, send, s.liveStatus, "site-a's targets a third through", func(_ context.Context, r replication) bool {
			return r.TotalBytes == 0 && r.Targets["a1"].BytesApplied > bulk/3
		})
		s.wan("site-a").cutLink()
		timer := time.NewTimer(cut)
		select {
		case <-timer.C:
		case <-send.done:
			t.Fatalf("send ended while site-a was away:\n%s", send.stderr.String())
		}
	}
	back := time.Now()
	if cut > 0 {
		back = s.wan("site-a").restoreLink()
	}
	res := send.wait(transferTimeout)
	if res.code != 0 {
		t.Fatalf("send exited %d:\n%s%s", res.code, res.stdout, res.stderr)
	}
	if took := time.Since(back); cut > 0 && took > c.recover+rest {
		t.Errorf("send finished %v after site-a's link returned, want within %v", took.Round(time.Millisecond), c.recover+rest)
	} else if cut > 0 {
		t.Logf("figures: send finished %v after site-a's link returned", took.Round(time.Millisecond))
	}
	for _, p := range procs[:len(procs)-1] {
		if p.exited() {
			t.Errorf("%s exited during the run: a site must recover without restarts", p.name)
		}
	}
	doc := s.status()
	r, _ := doc.newest()
	for name := range targets {
		if ts := r.Targets[name]; ts.State != "committed" {
			t.Errorf("%s: %+v, want committed", name, ts)
		}
	}
	assertReplicated(t, r.Snapshot, dirs["a1"], dirs["a2"], dirs["b1"], dirs["b2"])
	for site, link := range s.link {
		ratio := float64(link.Down()) / float64(r.WireBytes)
		t.Logf("figures: %s's link carried %d bytes to the site and %d to the hub, for a %d-byte stream (%d raw): %.4f of it",
			site, link.Down(), link.Up(), r.WireBytes, r.TotalBytes, ratio)
		if ratio > bound {
			t.Errorf("%s's link carried %.3f times the stream, want at most %.2f: the site's targets must share one copy", site, ratio, bound)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for site := range s.link {
		names, err := s.siteStreams(ctx, site)
		if err != nil {
			t.Errorf("streams at %s: %v", site, err)
		}
		for _, n := range names {
			if strings.HasPrefix(n, streams.StreamName("")) {
				t.Errorf("%s still holds %s after the replication finished", site, n)
			}
		}
	}
}

func (s *sites) status() statusDoc {
	s.t.Helper()
	return mustStatus(s.t, "--server", s.hubURL())
}

// siteLink is one site of sites as a wanSite.
type siteLink struct {
	*sites
	site string
}

func (s *sites) wan(site string) siteLink { return siteLink{s, site} }

func (l siteLink) linkUp(ctx context.Context) bool { return l.sites.linkUp(ctx, l.site) }

// cutLink cuts the site's link to the hub and keeps refusing new
// connections; it returns once a client of the site no longer reaches the
// hub's JetStream.
func (l siteLink) cutLink() {
	l.t.Helper()
	link := l.link[l.site]
	link.SetDown(true)
	if n := link.Cut(); n == 0 {
		l.t.Fatalf("%s had no connection to the hub to cut", l.site)
	}
	l.t.Logf("WAN of %s down after %d bytes to the site", l.site, link.Down())
	waitUntil(l.t, nil, 10*time.Second, l.site+" to lose the hub", func(ctx context.Context) bool { return !l.linkUp(ctx) })
}

func (l siteLink) restoreLink() time.Time {
	l.link[l.site].SetDown(false)
	l.t.Logf("WAN of %s up again", l.site)
	return time.Now()
}

// TestReceiverAtASiteWithoutTheHubsDomain: a receiver at a site node
// started without --js-domain hub watches for its work in the site's own
// JetStream, where no work ever comes. The sender must say so at once and
// name the fix, not wait for the stall timeout.
func TestReceiverAtASiteWithoutTheHubsDomain(t *testing.T) {
	s := startSites(t)
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	dataSet{seed: 62, bulk: mib}.newSource(t, source)
	startReceiver(t, "nats://"+s.addr["site-a"], "lost", newTarget(t, 1<<30, "lost"))
	res := startSnapjet(t, "send", "send", "--server", s.hubURL(), "--to", "lost", "--receiver-wait", "60s", source).wait(transferTimeout)
	if res.code == 0 || !strings.Contains(res.stderr, "--js-domain hub") {
		t.Fatalf("send exited %d, want a failure naming --js-domain hub:\n%s", res.code, res.stderr)
	}
	t.Logf("send exited %d: %s", res.code, strings.TrimSpace(res.stderr))
}
