package schedule

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/snapjet/snapjet/internal/fakeclock"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

type harness struct {
	t        *testing.T
	clk      *fakeclock.Clock
	s        *Scheduler
	started  chan string
	finished chan string
	release  map[string]chan struct{}
	logs     *syncBuffer
	cancel   context.CancelFunc
	stopped  chan struct{}
	runCtx   chan context.Context
}

const bound = 10 * time.Second // every wait of the test is bounded

func newHarness(t *testing.T, jobs ...Job) *harness {
	h := &harness{t: t, clk: fakeclock.New(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)),
		started: make(chan string, 10), finished: make(chan string, 10), release: map[string]chan struct{}{},
		logs: &syncBuffer{}, stopped: make(chan struct{}), runCtx: make(chan context.Context, 10)}
	for _, j := range []string{"a", "b"} {
		h.release[j] = make(chan struct{})
	}
	run := func(ctx context.Context, job string) {
		h.runCtx <- ctx
		h.started <- job
		select {
		case <-h.release[job]:
		case <-ctx.Done():
		}
	}
	h.s = New(h.clk, run, slog.New(slog.NewTextHandler(h.logs, nil)))
	h.s.finished = h.finished
	h.s.Set(jobs)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.s.Run(ctx); close(h.stopped) }()
	h.settled()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.stopped:
		case <-time.After(bound):
			t.Error("scheduler did not stop")
		}
	})
	return h
}

// settled waits until the scheduler waits on the clock again.
func (h *harness) settled() {
	h.t.Helper()
	select {
	case <-h.clk.Blocked:
	case <-time.After(bound):
		h.t.Fatal("scheduler did not wait on the clock")
	}
}

func (h *harness) advance(d time.Duration) {
	h.t.Helper()
	h.clk.Advance(d)
	h.settled()
}

func (h *harness) expectStart(job string) {
	h.t.Helper()
	select {
	case got := <-h.started:
		<-h.runCtx
		if got != job {
			h.t.Fatalf("started %s, want %s", got, job)
		}
	case <-time.After(bound):
		h.t.Fatalf("%s did not start", job)
	}
}

func (h *harness) expectNoStart() {
	h.t.Helper()
	select {
	case got := <-h.started:
		h.t.Fatalf("%s started unexpectedly", got)
	default:
	}
}

func (h *harness) finish(job string) {
	h.t.Helper()
	h.release[job] <- struct{}{}
	select {
	case got := <-h.finished:
		if got != job {
			h.t.Fatalf("finished %s, want %s", got, job)
		}
	case <-time.After(bound):
		h.t.Fatalf("%s did not finish", job)
	}
}

func every(t *testing.T, spec string) Job {
	t.Helper()
	s, err := cron.ParseStandard(spec)
	if err != nil {
		t.Fatal(err)
	}
	return Job{Spec: spec, Timing: s}
}

func named(name string, j Job) Job { j.Name = name; return j }

func TestRunsOnScheduleAndSkipsWhileActive(t *testing.T) {
	h := newHarness(t, named("a", every(t, "@every 10s")))
	h.advance(9 * time.Second)
	h.expectNoStart()
	h.advance(time.Second)
	h.expectStart("a")
	// Due twice more while the first run goes on: skipped, not queued.
	h.advance(10 * time.Second)
	h.advance(10 * time.Second)
	h.expectNoStart()
	if n := strings.Count(h.logs.String(), "skipping: previous run still active"); n != 2 {
		t.Errorf("logged %d skips, want 2:\n%s", n, h.logs)
	}
	h.finish("a")
	h.advance(10 * time.Second)
	h.expectStart("a")
	h.finish("a")
}

func TestCron(t *testing.T) {
	// 12:00:00 now; "5 12 * * *" is due at 12:05.
	h := newHarness(t, named("a", every(t, "5 12 * * *")))
	if next := h.s.Next()["a"]; !next.Equal(time.Date(2026, 12, 1, 12, 5, 0, 0, time.UTC)) {
		t.Fatalf("next %v", next)
	}
	h.advance(4 * time.Minute)
	h.expectNoStart()
	h.advance(time.Minute)
	h.expectStart("a")
	h.finish("a")
	if next := h.s.Next()["a"]; !next.Equal(time.Date(2026, 12, 2, 12, 5, 0, 0, time.UTC)) {
		t.Fatalf("next after the run %v", next)
	}
}

func TestReload(t *testing.T) {
	h := newHarness(t, named("a", every(t, "@every 10s")), named("b", every(t, "@every 1m")))
	h.advance(5 * time.Second)
	// a unchanged keeps its time (5 s from now, then every 10 s); b
	// changed is due 12 s from now, at 17 s.
	h.s.Set([]Job{named("a", every(t, "@every 10s")), named("b", every(t, "@every 12s"))})
	h.settled()
	h.advance(5 * time.Second)
	h.expectStart("a")
	h.finish("a")
	h.advance(7 * time.Second)
	h.expectStart("b")
	h.expectNoStart()
	h.finish("b")
	// a removed: it never runs again.
	h.s.Set([]Job{named("b", every(t, "@every 12s"))})
	h.settled()
	h.advance(time.Minute)
	h.expectStart("b")
	h.expectNoStart()
	h.finish("b")
}

func TestStopCancelsRunsAndWaits(t *testing.T) {
	h := newHarness(t, named("a", every(t, "@every 10s")))
	h.clk.Advance(10 * time.Second)
	select {
	case ctx := <-h.runCtx:
		<-h.started
		h.cancel()
		select {
		case <-ctx.Done():
		case <-time.After(bound):
			t.Fatal("the run's context was not cancelled")
		}
	case <-time.After(bound):
		t.Fatal("a did not start")
	}
	select {
	case <-h.stopped:
	case <-time.After(bound):
		t.Fatal("Run did not return")
	}
	select {
	case <-h.finished:
	default:
		t.Error("Run returned before the active run was over")
	}
}
