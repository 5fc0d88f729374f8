package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor polls cond (an observation of files or logs) until it holds,
// for at most d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDaemon: on real btrfs with the embedded server, the daemon runs its
// receivers and a job every second to a local and a remote target with
// retention; a reload with an invalid file keeps the old config, a valid
// one applies; cancelling (SIGTERM) returns nil.
func TestDaemon(t *testing.T) {
	ctx := context.Background()
	fs := loopfs.New(t, 256<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	local := filepath.Join(fs.Dir, "backup")
	siteB := filepath.Join(fs.Dir, "site-b")
	for _, d := range []string{filepath.Dir(src), local, siteB} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := btrfs.CreateSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f"), []byte(strings.Repeat("data", 50000)), 0o644); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`
server: {store: %s, listen: "127.0.0.1:0"}
jobs:
  - name: share
    source: %s
    targets: [%s, "remote:site-b"]
    schedule: "@every 1s"
    retain:
      source: {latest: 2}
      target: {latest: 2}
receivers:
  - {target: site-b, dir: %s}
`, t.TempDir(), src, local, siteB)
	cfg := writeConfig(t, text)
	logs := &lockedBuffer{}
	g := &globals{log: slog.New(slog.NewTextHandler(logs, nil))}
	dctx, stop := context.WithCancel(ctx)
	defer stop()
	reload := make(chan os.Signal, 1)
	result := make(chan error, 1)
	go func() { result <- runDaemon(dctx, g, os.Stderr, cfg, "", reload) }()

	waitFor(t, 90*time.Second, "three runs done", func() bool { return strings.Count(logs.String(), `msg="run done"`) >= 3 })
	for _, dir := range []string{local, siteB} {
		if n := len(snapshotsIn(t, dir)); n < 1 || n > 3 {
			// latest 2, plus at most one that arrived after the last prune
			t.Errorf("%s holds %d snapshots", dir, n)
		}
	}

	if err := os.WriteFile(cfg, []byte("jobs: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- nil
	waitFor(t, 10*time.Second, "reload refused", func() bool { return strings.Contains(logs.String(), "reload refused") })
	runs := strings.Count(logs.String(), `msg="run done"`)
	waitFor(t, 30*time.Second, "runs go on with the old config", func() bool { return strings.Count(logs.String(), `msg="run done"`) > runs })

	// A valid reload: slower schedule, and the receiver moves to another
	// directory (the old one stops, the new one starts).
	siteB2 := filepath.Join(fs.Dir, "site-b2")
	if err := os.MkdirAll(siteB2, 0o755); err != nil {
		t.Fatal(err)
	}
	next := strings.Replace(strings.Replace(text, "@every 1s", "@every 1h", 1), "dir: "+siteB, "dir: "+siteB2, 1)
	if err := os.WriteFile(cfg, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- nil
	waitFor(t, 10*time.Second, "reload", func() bool { return strings.Contains(logs.String(), "config reloaded") })
	waitFor(t, 10*time.Second, "the moved receiver ready", func() bool {
		return strings.Contains(logs.String(), `msg="receiver ready" target=site-b dir=`+siteB2)
	})
	if !strings.Contains(logs.String(), "receiver removed from the config; stopping it") {
		t.Error("the old receiver was not stopped")
	}

	if err := g.health(); err != nil {
		t.Errorf("healthz while running: %v", err)
	}
	stop()
	select {
	case err := <-result:
		if err != nil {
			t.Fatalf("daemon returned %v", err)
		}
		if err := g.health(); err == nil || !strings.Contains(err.Error(), "NATS connection is CLOSED") {
			t.Errorf("healthz after the connection closed: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("daemon did not stop within 60 s of SIGTERM")
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("daemon log:\n%s", logs)
	}
}
