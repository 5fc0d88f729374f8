package broker

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/filelock"
)

// waitFor polls cond every 10 ms until it holds, failing the test after
// bound with what it waited for.
func waitFor(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", bound, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// An embedded server whose store lock file is removed locks the store
// again, so a second process is still refused it; when another process
// took the new lock first, the server stops rather than share the store.
func TestEmbeddedServerKeepsItsStoreLocked(t *testing.T) {
	defer func(every time.Duration) { storeLockCheckEvery = every }(storeLockCheckEvery)
	storeLockCheckEvery = 20 * time.Millisecond
	log := slog.New(slog.DiscardHandler)
	held := func(path string) bool {
		l, err := filelock.TryLock(path)
		if err == nil {
			_ = l.Close()
		}
		return errors.Is(err, filelock.ErrHeld)
	}

	// start runs a server on a new store, stopped when the subtest ends,
	// and returns the path of its lock file.
	start := func(t *testing.T) (*Embedded, string, string) {
		store := t.TempDir()
		e, err := StartServer(ServerConfig{Store: store, Listen: "127.0.0.1:0", Log: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Stop)
		return e, store, filepath.Join(store, lockName)
	}

	t.Run("removed, locked again", func(t *testing.T) {
		e, store, path := start(t)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		// The note is written once the new file is locked; probing with a
		// lock of our own before that could take the path first.
		waitFor(t, 10*time.Second, "the store to be locked again", func() bool { return filelock.Note(path) == e.ClientURL() })
		if !held(path) {
			t.Fatal("the store's new lock file is not locked")
		}
		if !e.Running() {
			t.Fatal("the server stopped although nobody else took the store")
		}
		if _, err := StartServer(ServerConfig{Store: store, Listen: "127.0.0.1:0", Log: log}); !errors.Is(err, ErrStoreInUse) {
			t.Fatalf("a second server on the store: %v, want ErrStoreInUse", err)
		}
	})

	t.Run("replaced by another process's, stops", func(t *testing.T) {
		e, _, path := start(t)
		// Another process locks a file of its own and renames it over the
		// lock file: the path never names an unlocked file the server could
		// take back first.
		other, err := filelock.TryLock(path + ".other")
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if err := os.Rename(path+".other", path); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the server to stop", func() bool { return !e.Running() })
	})
}
