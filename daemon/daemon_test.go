package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/internal/fakeclock"
	"github.com/snapjet/snapjet/jobrun"
)

const bound = 10 * time.Second

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

type started struct {
	job     config.Job
	release chan struct{}
}

type harness struct {
	t       *testing.T
	clk     *fakeclock.Clock
	d       *Daemon
	starts  chan started
	logs    *logBuffer
	stop    context.CancelFunc
	stopped chan struct{}
}

func newHarness(t *testing.T, cfg *config.Config) *harness {
	h := &harness{t: t, clk: fakeclock.New(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)),
		starts: make(chan started, 10), logs: &logBuffer{}, stopped: make(chan struct{})}
	run := func(ctx context.Context, job config.Job) (*jobrun.Outcome, error) {
		s := started{job, make(chan struct{})}
		h.starts <- s
		select {
		case <-s.release:
			return &jobrun.Outcome{}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	h.d = New(nil, nil, slog.New(slog.NewTextHandler(h.logs, nil)), Options{Clock: h.clk, Run: run})
	h.d.Apply(cfg)
	ctx, stop := context.WithCancel(context.Background())
	h.stop = stop
	go func() { h.d.Run(ctx); close(h.stopped) }()
	h.settled()
	t.Cleanup(func() {
		stop()
		select {
		case <-h.stopped:
		case <-time.After(bound):
			t.Error("daemon did not stop")
		}
	})
	return h
}

func (h *harness) settled() {
	h.t.Helper()
	select {
	case <-h.clk.Blocked:
	case <-time.After(bound):
		h.t.Fatal("the scheduler did not wait on the clock")
	}
}

func (h *harness) start() started {
	h.t.Helper()
	select {
	case s := <-h.starts:
		return s
	case <-time.After(bound):
		h.t.Fatal("no run started")
		return started{}
	}
}

func (h *harness) noStart() {
	h.t.Helper()
	select {
	case s := <-h.starts:
		h.t.Fatalf("%s started", s.job.Name)
	default:
	}
}

// Two jobs into one local directory: both due at once, the second waits
// for the first (one receiver per directory), then runs.
func TestJobsSharingATargetTakeTurns(t *testing.T) {
	h := newHarness(t, parse(t, `
jobs:
  - {name: a, source: /data/a, targets: [/backup], schedule: "@every 10s"}
  - {name: b, source: /data/b, targets: [/backup, remote:x], schedule: "@every 10s"}
`))
	h.clk.Advance(10 * time.Second)
	first := h.start()
	deadline := time.Now().Add(bound)
	for !strings.Contains(h.logs.String(), "waiting for another job's run on the same target directory") {
		if time.Now().After(deadline) {
			t.Fatalf("the second job did not wait:\n%s", h.logs)
		}
		time.Sleep(10 * time.Millisecond) // observing a log line, not synchronising
	}
	h.noStart()
	close(first.release)
	second := h.start()
	if first.job.Name == second.job.Name {
		t.Fatalf("%s ran twice", first.job.Name)
	}
	close(second.release)
}

// A run uses the job as the config says when it starts: a reload that
// changes the source is seen by the next run; a removed job is not run.
func TestRunUsesTheCurrentConfig(t *testing.T) {
	h := newHarness(t, parse(t, `
jobs:
  - {name: a, source: /data/a, targets: [remote:x], schedule: "@every 10s"}
  - {name: b, source: /data/b, targets: [remote:x], schedule: "@every 10s"}
`))
	h.d.Apply(parse(t, `
jobs:
  - {name: a, source: /data/a2, targets: [remote:x], schedule: "@every 10s"}
`))
	h.settled()
	h.clk.Advance(10 * time.Second)
	s := h.start()
	if s.job.Name != "a" || s.job.Source != "/data/a2" {
		t.Fatalf("ran %s from %s, want a from /data/a2", s.job.Name, s.job.Source)
	}
	close(s.release)
	h.settled()
	h.noStart()
}

// Stopping cancels the run in progress and waits for it.
func TestStopCancelsRuns(t *testing.T) {
	h := newHarness(t, parse(t, `
jobs:
  - {name: a, source: /data/a, targets: [remote:x], schedule: "@every 10s"}
`))
	h.clk.Advance(10 * time.Second)
	h.start()
	h.stop()
	select {
	case <-h.stopped:
	case <-time.After(bound):
		t.Fatal("daemon did not stop")
	}
	if !strings.Contains(h.logs.String(), "run cancelled; the next run resumes it") {
		t.Errorf("log:\n%s", h.logs)
	}
}
