package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// A second sender of the same source is refused while the lease is held,
// and takes over once it expired or its holder is gone; another source is
// never affected.
func TestLease(t *testing.T) {
	f := newFixture(t)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f.c.now = func() time.Time { return now }
	const src = "9d1a5e4c-0000-4000-8000-00000000000a"
	hostA := Holder{Host: "nas-a", PID: 100, BootID: "boot-a", Source: "/srv/data"}
	hostB := Holder{Host: "nas-b", PID: 200, BootID: "boot-b", Source: "/srv/data"}

	la, err := f.c.AcquireLease(f.ctx, src, hostA, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.c.AcquireLease(f.ctx, src, hostB, 30*time.Second)
	if !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), "pid 100 on nas-a") {
		t.Fatalf("second sender while the lease is held: %v, want ErrLeaseHeld naming the holder", err)
	}
	if _, err := f.c.AcquireLease(f.ctx, "9d1a5e4c-0000-4000-8000-00000000000b", hostB, 30*time.Second); err != nil {
		t.Fatalf("another source is refused: %v", err)
	}
	// The holder itself may acquire again (a retried run in one process).
	if _, err := f.c.AcquireLease(f.ctx, src, hostA, 30*time.Second); err != nil {
		t.Fatalf("the holder is refused its own lease: %v", err)
	}

	// Past the expiry the other sender takes over, and the first one,
	// back, learns that it lost the lease.
	now = now.Add(31 * time.Second)
	lb, err := f.c.AcquireLease(f.ctx, src, hostB, 30*time.Second)
	if err != nil {
		t.Fatalf("takeover after expiry: %v", err)
	}
	if err := la.write(f.ctx, false); !conflict(err) {
		t.Fatalf("the old holder refreshed a lease it lost: %v", err)
	}
	if err := lb.Release(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.AcquireLease(f.ctx, src, hostA, 30*time.Second); err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
}

// A lease of a process that died on this host is taken over at once: a
// sender killed with -9 and started again must not wait out the TTL.
func TestLeaseOfADeadLocalProcess(t *testing.T) {
	f := newFixture(t)
	const src = "9d1a5e4c-0000-4000-8000-00000000000c"
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	me := ThisProcess("/srv/data")
	ghost := me
	ghost.PID = dead.Process.Pid
	if _, err := f.c.AcquireLease(f.ctx, src, ghost, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.AcquireLease(f.ctx, src, me, time.Hour); err != nil {
		t.Fatalf("lease of a dead local process: %v", err)
	}
	// A live local process keeps it.
	live := ghost
	live.PID = os.Getppid()
	if _, err := f.c.AcquireLease(f.ctx, "9d1a5e4c-0000-4000-8000-00000000000d", live, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.AcquireLease(f.ctx, "9d1a5e4c-0000-4000-8000-00000000000d", me, time.Hour); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("lease of a live local process: %v, want ErrLeaseHeld", err)
	}
}

// Keep reports a lease taken over while its holder was away.
func TestLeaseKeepNoticesATakeover(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	now := time.Now()
	f.c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const src = "9d1a5e4c-0000-4000-8000-00000000000e"
	la, err := f.c.AcquireLease(f.ctx, src, Holder{Host: "a", PID: 1, BootID: "x"}, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	now = now.Add(time.Second)
	mu.Unlock()
	if _, err := f.c.AcquireLease(f.ctx, src, Holder{Host: "b", PID: 2, BootID: "y"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	go la.Keep(f.ctx, slog.Default(), func(err error) { lost <- err })
	select {
	case err := <-lost:
		if !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("lost with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Keep did not notice within 10s that the lease was taken over")
	}
}

// A refresh that landed although its reply was lost (a cut link) leaves
// the holder one revision behind: Keep must not take that for a takeover.
func TestLeaseKeepSurvivesALostRefreshReply(t *testing.T) {
	f := newFixture(t)
	const src = "9d1a5e4c-0000-4000-8000-00000000000f"
	me := Holder{Host: "a", PID: 1, BootID: "x"}
	l, err := f.c.AcquireLease(f.ctx, src, me, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	// The refresh whose reply was lost: the store moved on, l.rev did not.
	ghost := *l
	if err := ghost.write(f.ctx, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(f.ctx, time.Second)
	defer cancel()
	lost := make(chan error, 1)
	l.Keep(ctx, slog.Default(), func(err error) { lost <- err })
	select {
	case err := <-lost:
		t.Fatalf("Keep gave up a lease this holder still holds: %v", err)
	default:
	}
	if _, err := f.c.AcquireLease(f.ctx, src, Holder{Host: "b", PID: 2, BootID: "y"}, time.Hour); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("another sender got the lease Keep was refreshing: %v", err)
	}
}
