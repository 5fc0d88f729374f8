package receiver

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/internal/filelock"
)

// A second receiver on a target is refused for good, with the first one's
// pid and the fix; once the first stops, the target can be served again.
func TestLockRefusesSecondReceiverWithPID(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".snapjet"), 0o700); err != nil {
		t.Fatal(err)
	}
	first, err := (&Receiver{dir: dir}).lock()
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&Receiver{dir: dir}).lock()
	if err == nil {
		t.Fatal("a second receiver locked the same target")
	}
	pid := "(pid " + strconv.Itoa(os.Getpid()) + ")"
	if !driver.IsPermanent(err) || !strings.Contains(err.Error(), pid) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("second lock: %v (permanent %v); want a permanent error naming %s and saying \"stop it first\"", err, driver.IsPermanent(err), pid)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := (&Receiver{dir: dir}).lock()
	if err != nil {
		t.Fatalf("lock after the first receiver stopped: %v", err)
	}
	again.Close()
}

// A receiver whose lock file is removed stops for good, saying why, so a
// second receiver that locks the new file never shares the target with it.
func TestReceiverStopsWhenItsLockFileIsRemoved(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".snapjet"), 0o700); err != nil {
		t.Fatal(err)
	}
	rc := &Receiver{dir: dir, log: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	l, err := rc.lock()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx, stop := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() { defer close(done); rc.watchLock(ctx, l, 10*time.Millisecond, stop) }()
	if err := os.RemoveAll(filepath.Join(dir, ".snapjet")); err != nil {
		t.Fatal(err)
	}
	<-done
	err = context.Cause(ctx)
	if !errors.Is(err, filelock.ErrLost) || !driver.IsPermanent(err) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("after the lock file was removed: %v (permanent %v), want a permanent error naming %s and wrapping ErrLost", err, driver.IsPermanent(err), dir)
	}
}
