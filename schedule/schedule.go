// Package schedule runs named jobs at the times their schedules give
// (`@every` or cron, any Next(time.Time) time.Time), never two runs of one
// job at a time: a job that is due while its previous run is still active
// is skipped (and logged) until its next time. The clock is injectable so
// that the policy is tested without waiting; the daemon wires it to the
// config file's jobs and the job runner.
package schedule

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Timing is when a job runs next after a time (robfig/cron's Schedule).
type Timing interface {
	Next(time.Time) time.Time
}

// Job is one scheduled job. Spec is the schedule as written: a job whose
// Spec is unchanged by Set keeps its next time.
type Job struct {
	Name   string
	Spec   string
	Timing Timing
}

// Clock is the scheduler's view of time.
type Clock interface {
	Now() time.Time
	// After delivers the time once d has passed.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// After is time.After.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RunFunc runs one job once; ctx ends when the scheduler stops.
type RunFunc func(ctx context.Context, job string)

// Scheduler starts the runs of its jobs. Create it with New, give it jobs
// with Set (again on every reload) and Run it.
type Scheduler struct {
	clock Clock
	run   RunFunc
	log   *slog.Logger

	mu      sync.Mutex
	jobs    map[string]*entry
	active  map[string]bool
	changed chan struct{} // Set wakes Run
	wg      sync.WaitGroup

	finished chan<- string // tests: told when a run is over and no longer active
}

type entry struct {
	job  Job
	next time.Time
}

// New makes a scheduler that calls run for every due job.
func New(clock Clock, run RunFunc, log *slog.Logger) *Scheduler {
	return &Scheduler{clock: clock, run: run, log: log, jobs: map[string]*entry{}, active: map[string]bool{}, changed: make(chan struct{}, 1)}
}

// Set replaces the jobs (a config reload). A job whose name and spec are
// unchanged keeps its next time; a new or changed one is due at its next
// time from now. Runs in progress go on, also those of removed jobs.
func (s *Scheduler) Set(jobs []Job) {
	now := s.clock.Now()
	s.mu.Lock()
	old := s.jobs
	s.jobs = map[string]*entry{}
	for _, j := range jobs {
		if e, ok := old[j.Name]; ok && e.job.Spec == j.Spec {
			s.jobs[j.Name] = &entry{job: j, next: e.next}
			continue
		}
		s.jobs[j.Name] = &entry{job: j, next: j.Timing.Next(now)}
	}
	s.mu.Unlock()
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// Next returns each job's next run time, by name.
func (s *Scheduler) Next() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]time.Time, len(s.jobs))
	for name, e := range s.jobs {
		out[name] = e.next
	}
	return out
}

// Active reports whether a run of job is in progress.
func (s *Scheduler) Active(job string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[job]
}

// Run schedules until ctx ends, then waits for the runs in progress, whose
// context ends with ctx (so that they checkpoint and return).
func (s *Scheduler) Run(ctx context.Context) {
	defer s.wg.Wait()
	for {
		wait, ok := s.startDue(ctx)
		var tick <-chan time.Time
		if ok {
			tick = s.clock.After(wait)
		}
		select {
		case <-ctx.Done():
			s.log.Info("scheduler stopping; waiting for the runs in progress to checkpoint", "active", s.activeNames())
			return
		case <-tick:
		case <-s.changed:
		}
	}
}

// startDue starts every job whose time has come and returns how long
// until the next one is due (ok false: no jobs).
func (s *Scheduler) startDue(ctx context.Context) (wait time.Duration, ok bool) {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.jobs))
	for name := range s.jobs {
		names = append(names, name)
	}
	sort.Strings(names)
	var earliest time.Time
	for _, name := range names {
		e := s.jobs[name]
		if !e.next.After(now) {
			if s.active[name] {
				s.log.Warn("skipping: previous run still active", "job", name, "due", e.next)
			} else {
				s.start(ctx, name)
			}
			e.next = e.job.Timing.Next(now)
		}
		if earliest.IsZero() || e.next.Before(earliest) {
			earliest = e.next
		}
	}
	if earliest.IsZero() {
		return 0, false
	}
	return earliest.Sub(now), true
}

// start runs job in its own goroutine; s.mu is held.
func (s *Scheduler) start(ctx context.Context, name string) {
	s.active[name] = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.active, name)
			s.mu.Unlock()
			if s.finished != nil {
				s.finished <- name
			}
		}()
		s.run(ctx, name)
	}()
}

func (s *Scheduler) activeNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name := range s.active {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}
