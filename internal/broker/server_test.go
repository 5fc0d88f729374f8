package broker

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/testpki"
)

// A site node links to a hub over plain nats-leaf:// (the TLS form runs as
// processes in deploy/nats), and its clients use either JetStream by domain.
func TestSiteNodeLinksToHub(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	leaf := freeAddr(t)
	hub, err := StartServer(ServerConfig{Store: t.TempDir(), Listen: "127.0.0.1:0", Domain: "hub", LeafListen: leaf, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer hub.Stop()
	site, err := StartServer(ServerConfig{Store: t.TempDir(), Listen: "127.0.0.1:0", Domain: "site-a", Hub: "nats-leaf://" + leaf, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer site.Stop()
	watchCtx, stopWatch := context.WithCancel(ctx)
	var logs syncBuffer
	done := make(chan struct{})
	go func() {
		site.WatchHub(watchCtx, "nats-leaf://"+leaf, slog.New(slog.NewTextHandler(&logs, nil)))
		close(done)
	}()
	defer func() { stopWatch(); <-done }()

	for domain, want := range map[string]string{"": "site-a", "hub": "hub"} {
		b, err := Connect(Options{Server: site.ClientURL(), Name: "site client", JSDomain: domain, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		var info *jetstream.AccountInfo
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			info, err = b.JS.AccountInfo(actx)
			cancel()
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		b.Close()
		if err != nil || info.Domain != want {
			t.Errorf("JetStream with domain %q from the site: %+v, %v; want domain %s", domain, info, err, want)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "link to hub up"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"link to hub up\" log line: %q", logs.String())
		}
	}
}

func TestServerConfigErrorsSayWhatToDo(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.New(t, dir, "ca")
	cert, _ := ca.Issue(t, "node")
	_, otherKey := ca.Issue(t, "other")
	for _, tc := range []struct {
		name string
		cfg  ServerConfig
		want error
		hint string
	}{
		{"site without a domain", ServerConfig{Hub: "nats-leaf://127.0.0.1:7422"}, nil, "--domain"},
		{"site in the hub's domain", ServerConfig{Hub: "nats-leaf://127.0.0.1:7422", Domain: "hub"}, nil, "name of its own"},
		{"password in --hub", ServerConfig{Hub: "nats-leaf://leaf:pw@127.0.0.1:7422", Domain: "s"}, ErrSecretInArgs, "--hub-creds"},
		{"missing hub creds", ServerConfig{Hub: "nats-leaf://127.0.0.1:7422", Domain: "s", HubCreds: filepath.Join(dir, "nope")}, ErrCredentialFile, "--hub-creds"},
		{"hub CA that is no CA", ServerConfig{Hub: "tls://127.0.0.1:7422", Domain: "s", HubTLSCA: otherKey}, ErrCredentialFile, "--hub-tls-ca"},
		{"listener certificate without key", ServerConfig{TLSCert: cert}, ErrCredentialFile, "--server-tls-key"},
		{"listener key of another certificate", ServerConfig{TLSCert: cert, TLSKey: otherKey}, ErrCredentialFile, "belong together"},
		{"bad leaf address", ServerConfig{LeafListen: "7422"}, nil, "--leaf-listen"},
		{"bad monitoring address", ServerConfig{MonitorListen: "localhost"}, nil, "--monitor-listen"},
	} {
		tc.cfg.Listen = "127.0.0.1:0"
		_, err := tc.cfg.options()
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.hint) {
			t.Errorf("%s: %v; want %v naming %q", tc.name, err, tc.want, tc.hint)
		}
		if err != nil && strings.Contains(err.Error(), ":pw@") {
			t.Errorf("%s: the error shows the password: %v", tc.name, err)
		}
	}
}

// The monitoring port serves the server's own views: JetStream use in
// /jsz, the server in /varz.
func TestMonitorListen(t *testing.T) {
	srv, err := StartServer(ServerConfig{Store: t.TempDir(), Listen: "127.0.0.1:0", MonitorListen: "127.0.0.1:0",
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	addr := srv.MonitorAddr()
	if addr == nil {
		t.Fatal("no monitoring address")
	}
	for path, want := range map[string]string{"/jsz": `"config"`, "/varz": `"server_name": "snapjet"`} {
		resp, err := http.Get("http://" + addr.String() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %s, want 200 with %s:\n%.300s", path, resp.Status, want, body)
		}
	}
}
