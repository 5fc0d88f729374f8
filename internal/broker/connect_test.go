package broker

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"
)

// A client started while its server is down (restarting, its link cut)
// waits for it within ConnectWait instead of failing at once; without a
// wait it fails at once with the hint.
func TestConnectWaitsForAServerThatComesBack(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	start := time.Now()
	_, err = Connect(Options{Server: "nats://" + addr, Name: t.Name(), Log: log})
	if err == nil || !strings.Contains(err.Error(), "is the server running") || time.Since(start) > 10*time.Second {
		t.Fatalf("connect without a wait: %v after %v, want a prompt failure with the hint", err, time.Since(start))
	}

	type res struct {
		b   *Broker
		err error
	}
	done := make(chan res, 1)
	go func() {
		b, err := Connect(Options{Server: "nats://" + addr, Name: t.Name(), ConnectWait: time.Minute, Log: log})
		done <- res{b, err}
	}()
	srv, err := StartServer(ServerConfig{Store: t.TempDir(), Listen: addr, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatalf("connect while the server came up: %v", r.err)
		}
		r.b.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("the waiting client did not connect within 30 s of the server coming up")
	}

	// The wait ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ConnectContext(ctx, Options{Server: "nats://127.0.0.1:1", Name: t.Name(), ConnectWait: time.Hour, Log: log}); err == nil {
		t.Fatal("a cancelled connect succeeded")
	}
}
