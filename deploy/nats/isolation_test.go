package natsconf_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/streams"
)

// TestSitesIsolated runs deploy/nats/isolated: a stock hub whose sites'
// links log in as per-site users with permissions, and two stock site
// nodes with JetStream of their own, each with one target. A replication
// to both targets commits; while it runs, a client at site-a (whose
// requests cross the link with site-a's permissions) tries to read
// site-b's copy, work and the hub's streams, to create a consumer on a
// replication stream, to delete site-b's consumer, to publish into a
// replication stream, to change the state bucket and to report for
// site-b's target. Each must be refused, and each is shown to work for a
// client of the hub, so that a refusal is the permissions' doing.
func TestSitesIsolated(t *testing.T) {
	binaries(t)
	c := newCerts(t)
	source, payload := newSource(t, 24<<20)
	dstA, dstB := loopfs.New(t, 512<<20), loopfs.New(t, 512<<20)

	client, leaf := freeAddr(t), freeAddr(t)
	hubPassword := secret("hub-clients-" + filepath.Base(t.TempDir()))
	sitePassword := map[string]string{"site-a": secret("site-a-" + filepath.Base(t.TempDir())), "site-b": secret("site-b-" + filepath.Base(t.TempDir()))}
	conf := c.render(t, "isolated/hub.conf", "0.0.0.0:4222", client, "0.0.0.0:7422", leaf, "/var/lib/nats/jetstream", t.TempDir(),
		"CHANGE-ME-clients", hubPassword, "CHANGE-ME-site-a", sitePassword["site-a"], "CHANGE-ME-site-b", sitePassword["site-b"])
	hub := launch(t, "hub", nil, natsBin, "-c", conf)
	waitListening(t, hub, client)
	waitListening(t, hub, leaf)
	siteAddr := map[string]string{}
	for _, site := range []string{"site-a", "site-b"} {
		siteAddr[site] = freeAddr(t)
		conf := c.render(t, "isolated/"+site+".conf", "127.0.0.1:4222", siteAddr[site], "hub.example.net:7422", leaf,
			"/var/lib/nats/jetstream", t.TempDir(), "CHANGE-ME-"+site, sitePassword[site])
		p := launch(t, site, nil, natsBin, "-c", conf)
		waitListening(t, p, siteAddr[site])
	}
	hubCreds := broker.Credentials{TLSCA: c.ca.CAFile, Password: hubPassword}
	hubB := connectTo(t, "tls://snapjet@"+client, "", hubCreds)
	for _, site := range []string{"site-a", "site-b"} {
		js := siteJS(t, siteAddr[site], site, "hub")
		waitFor(t, site+"'s link to the hub", processStartTimeout, nil, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := js.AccountInfo(ctx)
			return err == nil
		})
	}

	// The state exists before the sites' receivers start: they may not
	// create it.
	if _, err := coordinator.OpenStore(t.Context(), hubB.JS); err != nil {
		t.Fatal(err)
	}
	recvA := launch(t, "receiver nas-a", nil, snapjetBin, "receive", "--server", "nats://"+siteAddr["site-a"], "--js-domain", "hub",
		"--inbox-prefix", "_INBOX_site-a", "--target", "nas-a", dstA.Dir)
	recvB := launch(t, "receiver nas-b", []string{"SNAPJET_INBOX_PREFIX=_INBOX_site-b", "SNAPJET_JS_DOMAIN=hub"}, snapjetBin, "receive",
		"--server", "nats://"+siteAddr["site-b"], "--target", "nas-b", dstB.Dir)
	send := launch(t, "send", []string{"SNAPJET_PASSWORD=" + hubPassword}, snapjetBin, "send", "--server", "tls://snapjet@"+client,
		"--tls-ca", c.ca.CAFile, "--to", "nas-a,nas-b", "--receiver-wait", "60s", "--rate-limit", "2MB/s", source)

	// The replication under way: its id, and site-b's copy with its consumer.
	var id string
	kv, err := hubB.JS.KeyValue(t.Context(), streams.StateBucket)
	waitFor(t, "the replication's work for nas-b", time.Minute, send, func() bool {
		if err != nil {
			kv, err = hubB.JS.KeyValue(t.Context(), streams.StateBucket)
			return false
		}
		keys, _ := kv.ListKeys(t.Context())
		if keys != nil {
			for k := range keys.Keys() {
				if rest, ok := strings.CutPrefix(k, "work.nas-b."); ok {
					id = rest
				}
			}
		}
		return id != ""
	})
	hubAtB, err := jetstream.NewWithDomain(hubB.NC, "site-b")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "nas-b's consumer on site-b's copy", time.Minute, send, func() bool {
		_, err := hubAtB.Consumer(t.Context(), streams.StreamName(id), streams.ConsumerName("nas-b"))
		return err == nil
	})

	attacker := siteConn(t, siteAddr["site-a"], "site-a")
	for _, tc := range isolationCases(id) {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if err := tc.try(ctx, hubB.NC, true); err != nil {
				t.Fatalf("from the hub, as a control: %v", err)
			}
			ctx, cancel = context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			if err := tc.try(ctx, attacker, false); err == nil {
				t.Errorf("site-a was allowed to %s", tc.name)
			} else {
				t.Logf("site-a refused: %v", err)
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sendSucceeded(ctx, t, send, "to two isolated sites")
	assertReceived(t, dstA.Dir, payload)
	assertReceived(t, dstB.Dir, payload)
	for _, p := range []*proc{recvA, recvB} {
		if p.exited() {
			t.Errorf("%s exited:\n%s", p.name, p.out.String())
		}
	}
	siteStatus(t, siteAddr["site-a"], id)
	// The site's monitoring check: status --config of a config with
	// site-a's receiver alone, its server section naming the hub's domain
	// and the site's inbox prefix.
	cfg := filepath.Join(t.TempDir(), "snapjet.yaml")
	yaml := fmt.Sprintf("server:\n  url: nats://%s\n  js_domain: hub\n  inbox_prefix: _INBOX_site-a\nreceivers:\n  - target: nas-a\n    dir: %s\n", siteAddr["site-a"], dstA.Dir)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := run(t, cmdTimeout, "status --config at site-a", nil, snapjetBin, "status", "--config", cfg)
	if code != 0 || !regexp.MustCompile(`nas-a +`+regexp.QuoteMeta(dstA.Dir)+` +yes +`+id+` +committed`).MatchString(out) {
		t.Errorf("status --config at site-a: exit %d, want 0 and nas-a's receiver answering, %s committed:\n%s", code, id, out)
	}

	recvA.kill()
	code, out = run(t, cmdTimeout, "status --target nas-a without its receiver", nil, snapjetBin, "status", "--server", "nats://"+siteAddr["site-a"],
		"--js-domain", "hub", "--inbox-prefix", "_INBOX_site-a", "--target", "nas-a")
	if code != 1 || !strings.Contains(out, "receiver does not answer") || !strings.Contains(out, "snapjet receive --target nas-a") {
		t.Errorf("status --target nas-a with its receiver down: exit %d, want 1 and the fix:\n%s", code, out)
	}
	code, out = run(t, cmdTimeout, "status --config without the receiver", nil, snapjetBin, "status", "--config", cfg)
	if code != 1 || !regexp.MustCompile(`nas-a +`+regexp.QuoteMeta(dstA.Dir)+` +NO +`).MatchString(out) || !strings.Contains(out, "nas-a: its receiver does not answer") {
		t.Errorf("status --config with nas-a's receiver down: exit %d, want 1 and the receiver named:\n%s", code, out)
	}
}

// siteStatus runs snapjet status at site-a as its operator would, with the
// site's permissions: --target nas-a shows its committed replication and
// its receiver; nas-b's and the whole state are refused, naming the fix.
func siteStatus(t *testing.T, siteA, id string) {
	t.Helper()
	at := []string{"status", "--server", "nats://" + siteA, "--js-domain", "hub", "--inbox-prefix", "_INBOX_site-a"}
	code, out := run(t, cmdTimeout, "status --target nas-a at site-a", nil, snapjetBin, append(at, "--target", "nas-a")...)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "committed") || !strings.Contains(out, "site site-a") {
		t.Errorf("status --target nas-a at site-a: exit %d, want 0 and a line for %s committed, from a receiver at site-a:\n%s", code, id, out)
	}
	code, out = run(t, cmdTimeout, "status --target nas-b at site-a", nil, snapjetBin, append(at, "--target", "nas-b")...)
	if code != 1 || strings.Contains(out, id) || !strings.Contains(out, "only its own targets") {
		t.Errorf("status --target nas-b at site-a: exit %d, want 1, nothing of %s, and a pointer to the site's own targets:\n%s", code, id, out)
	}
	code, out = run(t, cmdTimeout, "status at site-a", nil, snapjetBin, at...)
	if code != 1 || strings.Contains(out, id) || !strings.Contains(out, "--target") {
		t.Errorf("status at site-a: exit %d, want 1, nothing of %s, and a pointer to --target:\n%s", code, id, out)
	}
}

// isolationCase is one thing site-a must not do to what is site-b's or
// shared. try does it on nc and returns nil only when it reached its object
// (a read answered, a write answered by the stream). The control, a client
// of the hub, does the harmless form of it: a write that the stream refuses
// (an expected last sequence that cannot match), a delete of a consumer
// that does not exist, a report of an attempt that does not exist.
type isolationCase struct {
	name string
	try  func(ctx context.Context, nc *nats.Conn, control bool) error
}

// never is an expected last sequence no stream reaches: a publish with it
// is answered and refused, and stores nothing.
const never = 1 << 62

func isolationCases(id string) []isolationCase {
	stream := streams.StreamName(id)
	in := func(nc *nats.Conn, domain string) jetstream.JetStream {
		js, _ := jetstream.NewWithDomain(nc, domain)
		return js
	}
	// answered is nil when err is the stream's own refusal of a write.
	answered := func(err error) error {
		var apiErr *jetstream.APIError
		if err == nil || errors.As(err, &apiErr) {
			return nil
		}
		return err
	}
	return []isolationCase{
		{"read site-b's copy", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := in(nc, "site-b").Stream(ctx, stream)
			return err
		}},
		{"read a chunk of the hub's stream", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := nc.RequestWithContext(ctx, "$JS.hub.API.DIRECT.GET."+stream, []byte(`{"seq":1}`))
			return err
		}},
		{"create a consumer on the hub's stream", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			js := in(nc, "hub")
			c, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{InactiveThreshold: 5 * time.Second})
			if err == nil {
				_ = js.DeleteConsumer(ctx, stream, c.CachedInfo().Name)
			}
			return err
		}},
		{"read nas-b's work", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := nc.RequestWithContext(ctx, "$JS.hub.API.DIRECT.GET.KV_"+streams.StateBucket+".$KV."+streams.StateBucket+".work.nas-b."+id, nil)
			return err
		}},
		{"read the record", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := nc.RequestWithContext(ctx, "$JS.hub.API.DIRECT.GET.KV_"+streams.StateBucket+".$KV."+streams.StateBucket+".repl."+id, nil)
			return err
		}},
		{"change the state bucket", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			// The same configuration again: it changes nothing, but only
			// a user allowed to change the bucket gets an answer.
			js := in(nc, "hub")
			s, err := js.Stream(ctx, "KV_"+streams.StateBucket)
			if err == nil {
				_, err = js.UpdateStream(ctx, s.CachedInfo().Config)
			}
			return err
		}},
		{"write a key of the state", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := in(nc, "hub").Publish(ctx, "$KV."+streams.StateBucket+".work.nas-b."+id, []byte("{}"),
				jetstream.WithExpectLastSequencePerSubject(never))
			return answered(err)
		}},
		{"publish into a replication stream", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			_, err := in(nc, "hub").Publish(ctx, streams.Subject(id), nil, jetstream.WithExpectLastSequence(never))
			return answered(err)
		}},
		{"delete nas-b's consumer at site-b", func(ctx context.Context, nc *nats.Conn, control bool) error {
			name := streams.ConsumerName("nas-b")
			if control {
				name = "target_nobody" // not found: answered, and nas-b keeps its consumer
			}
			err := in(nc, "site-b").DeleteConsumer(ctx, stream, name)
			if control && errors.Is(err, jetstream.ErrConsumerNotFound) {
				return nil
			}
			return err
		}},
		{"receive the feed of site-b's copy", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			sub, err := nc.SubscribeSync(streams.SiteSubject("site-b", id))
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			_, err = sub.NextMsgWithContext(ctx)
			return err
		}},
		{"report for nas-b", func(ctx context.Context, nc *nats.Conn, _ bool) error {
			// A progress report of an attempt that does not exist: the
			// coordinator answers "stale" and changes nothing.
			body, _ := json.Marshal(streams.Report{Event: streams.EvProgress, Target: "nas-b", Attempt: 99})
			_, err := nc.RequestWithContext(ctx, streams.ReportSubject(id, "nas-b"), body)
			return err
		}},
	}
}

// siteConn connects to a site node as one of its clients, with the site's
// inbox prefix.
func siteConn(t *testing.T, addr, site string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect("nats://"+addr, nats.CustomInboxPrefix("_INBOX_"+site), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect to %s: %v", site, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// siteJS is the JetStream of domain as a client of site's node sees it.
func siteJS(t *testing.T, addr, site, domain string) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.NewWithDomain(siteConn(t, addr, site), domain)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
