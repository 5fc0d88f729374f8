// Package natsconf_test checks the example nats-server configurations next
// to it: they load, agree with each other and with snapjet, and a client of
// the leaf node can use the hub's JetStream the way a snapjet receiver does
// (no JetStream domain in the client), with chunks above NATS' default
// 1 MB message limit.
package natsconf_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/snapjet/snapjet/internal/broker"
)

func load(t *testing.T, file string) *server.Options {
	t.Helper()
	opts, err := server.ProcessConfigFile(file)
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

func TestConfigsAgree(t *testing.T) {
	hub, leaf := load(t, "hub.conf"), load(t, "leaf.conf")
	for name, o := range map[string]*server.Options{"hub.conf": hub, "leaf.conf": leaf} {
		if o.MaxPayload < broker.EmbeddedMaxPayload {
			t.Errorf("%s: max_payload %d is below the embedded server's %d, so chunks would shrink", name, o.MaxPayload, broker.EmbeddedMaxPayload)
		}
	}
	if !hub.JetStream || hub.JetStreamDomain == "" {
		t.Errorf("hub.conf: JetStream %v with domain %q; want JetStream with a domain", hub.JetStream, hub.JetStreamDomain)
	}
	if leaf.JetStream {
		t.Error("leaf.conf runs JetStream; its clients would not reach the hub's streams")
	}
	if got := leaf.JsAccDefaultDomain["$G"]; got != hub.JetStreamDomain {
		t.Errorf("leaf.conf default_js_domain for $G is %q, hub.conf's domain is %q", got, hub.JetStreamDomain)
	}
	if len(leaf.LeafNode.Remotes) != 1 || len(leaf.LeafNode.Remotes[0].URLs) == 0 {
		t.Fatalf("leaf.conf: want one remote with a URL, got %+v", leaf.LeafNode.Remotes)
	}
	u := leaf.LeafNode.Remotes[0].URLs[0]
	password, _ := u.User.Password()
	if u.Port() != strconv.Itoa(hub.LeafNode.Port) || u.User.Username() != hub.LeafNode.Username || password != hub.LeafNode.Password {
		t.Errorf("leaf.conf remote %s does not match hub.conf's leafnode port %d and credentials", u.Redacted(), hub.LeafNode.Port)
	}
}

// TestReceiverThroughLeaf runs both configurations (on free ports, with a
// temporary store) and plays sender on the hub and receiver on the leaf.
func TestReceiverThroughLeaf(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	hubOpts := load(t, "hub.conf")
	hubOpts.StoreDir = t.TempDir()
	hubOpts.LeafNode.Host, hubOpts.LeafNode.Port = "127.0.0.1", freePort(t)
	hub := start(t, hubOpts)

	leafOpts := load(t, "leaf.conf")
	remote := leafOpts.LeafNode.Remotes[0].URLs[0]
	remote.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(hubOpts.LeafNode.Port))
	leaf := start(t, leafOpts)
	for deadline := time.Now().Add(10 * time.Second); hub.NumLeafNodes() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the leaf node did not connect to the hub")
		}
	}

	user := hubOpts.Users[0]
	sender := connect(t, hub.ClientURL(), nats.UserInfo(user.Username, user.Password))
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
