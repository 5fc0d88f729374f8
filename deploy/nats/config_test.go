// Package natsconf_test checks the example nats-server configurations next
// to it: they load, agree with each other and with snapjet, and a client of
// the leaf node can use the hub's JetStream the way a snapjet receiver does
// (no JetStream domain in the client), with chunks above NATS' default
// 1 MB message limit. topology_test.go runs them as real processes.
package natsconf_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/testpki"
)

// certs are the example configurations' certificate files, generated for
// a test: the same private CA signs the hub's and the sites' certificates.
type certs struct {
	ca           *testpki.CA
	replacements []string // for strings.NewReplacer: example path, test path
}

func newCerts(t *testing.T) *certs {
	t.Helper()
	dir := t.TempDir()
	c := &certs{ca: testpki.New(t, dir, "snapjet")}
	c.replacements = []string{"/etc/nats/certs/ca.pem", c.ca.CAFile}
	for _, name := range []string{"hub", "hub-1", "hub-2", "hub-3", "site-a", "site-b"} {
		cert, key := c.ca.Issue(t, name)
		c.replacements = append(c.replacements, "/etc/nats/certs/"+name+"-key.pem", key, "/etc/nats/certs/"+name+".pem", cert)
	}
	return c
}

// render writes the example configuration file with the certificate paths
// and the given replacements (pairs of old, new) applied, and returns the
// path of the copy.
func (c *certs) render(t *testing.T, file string, replacements ...string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer(append(replacements, c.replacements...)...).Replace(string(b))
	out := filepath.Join(t.TempDir(), filepath.Base(file))
	if err := os.WriteFile(out, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *certs) load(t *testing.T, file string, replacements ...string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(c.render(t, file, replacements...))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return opts
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func start(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", server.RANDOM_PORT, true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("%s did not start", opts.ServerName)
	}
	return s
}

func mutualTLS(c *tls.Config) bool {
	return c != nil && c.ClientAuth == tls.RequireAndVerifyClientCert && c.ClientCAs != nil
}

func TestConfigsAgree(t *testing.T) {
	c := newCerts(t)
	hub, leaf, site := c.load(t, "hub.conf"), c.load(t, "leaf.conf"), c.load(t, "site.conf")
	all := map[string]*server.Options{"hub.conf": hub, "leaf.conf": leaf, "site.conf": site}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("cluster/hub-%d.conf", i)
		all[name] = c.load(t, name)
	}
	for name, o := range all {
		if o.MaxPayload < broker.EmbeddedMaxPayload {
			t.Errorf("%s: max_payload %d is below the embedded server's %d, so chunks would shrink", name, o.MaxPayload, broker.EmbeddedMaxPayload)
		}
		if o.LeafNode.Port != 0 && !mutualTLS(o.LeafNode.TLSConfig) {
			t.Errorf("%s: the leafnode listener does not require TLS with client certificates", name)
		}
		for _, r := range o.LeafNode.Remotes {
			if r.TLSConfig == nil || len(r.TLSConfig.Certificates) == 0 || r.TLSConfig.RootCAs == nil {
				t.Errorf("%s: the link to the hub has no TLS with a CA and a client certificate", name)
			}
		}
		if o.Cluster.Port != 0 && !mutualTLS(o.Cluster.TLSConfig) {
			t.Errorf("%s: cluster routes without mutual TLS", name)
		}
		if strings.HasPrefix(name, "cluster/") && (o.JetStreamDomain != hub.JetStreamDomain || len(o.Routes) != 3) {
			t.Errorf("%s: domain %q and %d routes, want the hub's domain %q and routes to all 3 nodes", name, o.JetStreamDomain, len(o.Routes), hub.JetStreamDomain)
		}
	}
	if !hub.JetStream || hub.JetStreamDomain != broker.DefaultHubDomain {
		t.Errorf("hub.conf: JetStream %v with domain %q; want JetStream with domain %q, what snapjet server --hub-domain assumes", hub.JetStream, hub.JetStreamDomain, broker.DefaultHubDomain)
	}
	if hub.TLSConfig == nil {
		t.Error("hub.conf: clients connect without TLS")
	}
	if leaf.JetStream {
		t.Error("leaf.conf runs JetStream; its clients would not reach the hub's streams")
	}
	if got := leaf.JsAccDefaultDomain["$G"]; got != hub.JetStreamDomain {
		t.Errorf("leaf.conf default_js_domain for $G is %q, hub.conf's domain is %q", got, hub.JetStreamDomain)
	}
	if !site.JetStream || site.JetStreamDomain == "" || site.JetStreamDomain == hub.JetStreamDomain || site.ServerName == hub.ServerName {
		t.Errorf("site.conf: JetStream %v, domain %q, name %q; want a JetStream and a name of its own", site.JetStream, site.JetStreamDomain, site.ServerName)
	}
	for name, o := range map[string]*server.Options{"leaf.conf": leaf, "site.conf": site} {
		if len(o.LeafNode.Remotes) != 1 || len(o.LeafNode.Remotes[0].URLs) == 0 {
			t.Fatalf("%s: want one remote with a URL, got %+v", name, o.LeafNode.Remotes)
		}
		if u := o.LeafNode.Remotes[0].URLs[0]; u.Port() != strconv.Itoa(hub.LeafNode.Port) || u.Scheme != "tls" {
			t.Errorf("%s: remote %s does not match hub.conf's leafnode port %d over TLS", name, u.Redacted(), hub.LeafNode.Port)
		}
	}
}

// TestReceiverThroughLeaf runs both configurations (on free ports, with a
// temporary store) and plays sender on the hub and receiver on the leaf.
func TestReceiverThroughLeaf(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c := newCerts(t)
	hubOpts := c.load(t, "hub.conf")
	hubOpts.StoreDir = t.TempDir()
	hubOpts.LeafNode.Host, hubOpts.LeafNode.Port = "127.0.0.1", freePort(t)
	hub := start(t, hubOpts)

	leafOpts := c.load(t, "leaf.conf", "hub.example.net:7422", net.JoinHostPort("127.0.0.1", strconv.Itoa(hubOpts.LeafNode.Port)))
	leaf := start(t, leafOpts)
	for deadline := time.Now().Add(10 * time.Second); hub.NumLeafNodes() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the leaf node did not connect to the hub")
		}
	}

	user := hubOpts.Users[0]
	sender := connect(t, hub.ClientURL(), nats.UserInfo(user.Username, user.Password), nats.RootCAs(c.ca.CAFile))
	receiver := connect(t, leaf.ClientURL())
	sjs, err := jetstream.New(sender)
	if err != nil {
		t.Fatal(err)
	}
	rjs, err := jetstream.New(receiver) // no domain, as snapjet does
	if err != nil {
		t.Fatal(err)
	}

	if _, err := sjs.CreateStream(ctx, jetstream.StreamConfig{Name: "SNAPJET_conftest", Subjects: []string{"snapjet.data.conftest"}}); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 4<<20/16) // 4 MiB: above the NATS default limit
	if _, err := sjs.Publish(ctx, "snapjet.data.conftest", chunk); err != nil {
		t.Fatalf("publish a 4 MiB chunk to the hub: %v", err)
	}
	skv, err := sjs.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "snapjet_conftest"})
	if err != nil {
		t.Fatal(err)
	}

	// Interest crosses the leaf connection shortly after it is up.
	var stream jetstream.Stream
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if stream, err = rjs.Stream(ctx, "SNAPJET_conftest"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("the leaf's client cannot see the hub's stream: %v", err)
	}
	consumer, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "target_conftest", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := consumer.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for msg := range batch.Messages() {
		got = msg.Data()
		if err := msg.DoubleAck(ctx); err != nil {
			t.Errorf("ack through the leaf: %v", err)
		}
	}
	if batch.Error() != nil || !bytes.Equal(got, chunk) {
		t.Fatalf("fetched %d bytes (error %v), want the %d-byte chunk", len(got), batch.Error(), len(chunk))
	}
	if info, err := consumer.Info(ctx); err != nil || info.AckFloor.Stream != 1 {
		t.Errorf("ack floor after the ack: %+v, %v; want stream sequence 1", info, err)
	}

	rkv, err := rjs.KeyValue(ctx, "snapjet_conftest")
	if err != nil {
		t.Fatalf("the leaf's client cannot open the hub's KV bucket: %v", err)
	}
	if _, err := rkv.Put(ctx, "target.conftest", []byte("committed")); err != nil {
		t.Fatalf("KV put through the leaf: %v", err)
	}
	if entry, err := skv.Get(ctx, "target.conftest"); err != nil || string(entry.Value()) != "committed" {
		t.Errorf("the hub reads %v, %v; want the value the leaf's client wrote", entry, err)
	}

	// Senders ask receivers directly (core request-reply) across the link.
	sub, err := receiver.Subscribe("snapjet.conftest.inventory", func(m *nats.Msg) { _ = m.Respond([]byte("inventory")) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := receiver.Flush(); err != nil {
		t.Fatal(err)
	}
	var reply *nats.Msg
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if reply, err = sender.Request("snapjet.conftest.inventory", nil, time.Second); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || string(reply.Data) != "inventory" {
		t.Errorf("request from the hub to a receiver on the leaf: %v", err)
	}
}

func connect(t *testing.T, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(fmt.Errorf("connect %s: %w", url, err))
	}
	t.Cleanup(nc.Close)
	return nc
}
