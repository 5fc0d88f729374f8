package broker

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
)

// Two processes must never serve one JetStream store: the second is told
// where the first one's server is, and a read-only client can join it.
func TestStoreServedByOneProcessAtATime(t *testing.T) {
	store := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	first, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "first", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()

	_, err = Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "second", Log: log})
	if !errors.Is(err, ErrStoreInUse) {
		t.Fatalf("second embedded server on the same store: %v, want ErrStoreInUse", err)
	}
	if !strings.Contains(err.Error(), first.URL()) || !strings.Contains(err.Error(), "--server") {
		t.Errorf("error %q does not say where the running server is and how to use it", err)
	}

	joined, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "status", JoinRunning: true, Log: log})
	if err != nil {
		t.Fatalf("join the running server: %v", err)
	}
	if joined.URL() != first.URL() {
		t.Errorf("joined %s, the running server is %s", joined.URL(), first.URL())
	}
	joined.Close()

	first.Close()
	again, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "after", Log: log})
	if err != nil {
		t.Fatalf("the store stays locked after its server stopped: %v", err)
	}
	again.Close()
}

func TestUnreachableServerSaysWhatToDo(t *testing.T) {
	_, err := Connect(Options{Server: "nats://127.0.0.1:1", Name: "x", Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "is the server running") {
		t.Fatalf("connect to a dead server: %v, want a hint to start one", err)
	}
}

// JoinOnly never starts a server: without a running one it says so.
func TestJoinOnly(t *testing.T) {
	store := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	_, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "status", JoinOnly: true, Log: log})
	if !errors.Is(err, ErrNoServer) || !strings.Contains(err.Error(), "snapjet daemon") {
		t.Fatalf("join without a server: %v, want ErrNoServer with what to do", err)
	}
	first, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "first", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	joined, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "status", JoinOnly: true, Log: log})
	if err != nil {
		t.Fatalf("join the running server: %v", err)
	}
	defer joined.Close()
	if joined.URL() != first.URL() {
		t.Errorf("joined %s, want %s", joined.URL(), first.URL())
	}
	first.Close()
	if _, err := Connect(Options{Store: store, Listen: "127.0.0.1:0", Name: "status", JoinOnly: true, Log: log}); !errors.Is(err, ErrNoServer) {
		t.Errorf("after the server stopped: %v, want ErrNoServer", err)
	}
}
