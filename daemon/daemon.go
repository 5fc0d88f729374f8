// Package daemon is `snapjet daemon`: the receivers of the config file's
// receivers section and the jobs on their schedules (package schedule),
// in one process, with the config replaceable while it runs (SIGHUP). Each
// run of a job is a jobrun.Run; runs of jobs that share a local target
// directory take turns (one receiver per directory at a time).
package daemon

import (
	"context"
	"log/slog"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/jobrun"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/receiver"
	"github.com/snapjet/snapjet/schedule"
)

// RunFunc runs one job once (jobrun.Run in production).
type RunFunc func(ctx context.Context, job config.Job) (*jobrun.Outcome, error)

// Daemon runs one node's config. Create it with New, give it a config
// with Apply (again on every reload) and Run it.
type Daemon struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	log *slog.Logger
	run RunFunc

	sched *schedule.Scheduler

	mu        sync.Mutex
	cfg       *config.Config
	ctx       context.Context // of Run, for receivers started by Apply
	receivers map[config.Receiver]*served
	pending   []config.Receiver // applied before Run started
	rwg       sync.WaitGroup
	dirs      map[string]*sync.Mutex // local target directory → its turn
	applier   string
	metrics   *metrics.Metrics
}

// Options of New; the zero value is production.
type Options struct {
	Clock   schedule.Clock // default schedule.RealClock
	Run     RunFunc        // default jobrun.Run with JobOptions
	JobOpts jobrun.Options
	Applier string // of the receivers section's receivers
	Metrics *metrics.Metrics
}

// New prepares a daemon on a NATS connection.
func New(nc *nats.Conn, js jetstream.JetStream, log *slog.Logger, opt Options) *Daemon {
	d := &Daemon{nc: nc, js: js, log: log, run: opt.Run, receivers: map[config.Receiver]*served{}, dirs: map[string]*sync.Mutex{}}
	if d.run == nil {
		jo := opt.JobOpts
		if jo.Log == nil {
			jo.Log = log
		}
		d.run = func(ctx context.Context, job config.Job) (*jobrun.Outcome, error) {
			return jobrun.Run(ctx, nc, js, job, jo)
		}
	}
	clock := opt.Clock
	if clock == nil {
		clock = schedule.RealClock{}
	}
	d.sched = schedule.New(clock, d.runJob, log)
	d.applier, d.metrics = opt.Applier, opt.Metrics
	if d.applier == "" {
		d.applier = receiver.Native
	}
	return d
}

// Apply makes cfg the daemon's config: jobs are rescheduled (an unchanged
// schedule keeps its next time; runs in progress go on) and receivers
// that were added are started, those removed stopped. The server section
// is the caller's: it cannot change without a restart.
func (d *Daemon) Apply(cfg *config.Config) {
	var jobs []schedule.Job
	for _, j := range cfg.Jobs {
		jobs = append(jobs, schedule.Job{Name: j.Name, Spec: j.Schedule.Spec, Timing: j.Schedule})
	}
	d.mu.Lock()
	d.cfg = cfg
	want := map[config.Receiver]bool{}
	for _, r := range cfg.Receivers {
		want[r] = true
	}
	var stopped []*served
	for r, sv := range d.receivers {
		if !want[r] {
			d.log.Info("receiver removed from the config; stopping it", "target", r.Target, "dir", r.Dir)
			sv.stop()
			stopped = append(stopped, sv)
			delete(d.receivers, r)
		}
	}
	// A new receiver may take over the directory or target name of a
	// removed one: it must have let go first (its jobs checkpoint).
	for _, sv := range stopped {
		select {
		case <-sv.done:
		case <-time.After(receiverStopWait):
			d.log.Warn("a removed receiver is still stopping; a receiver for its directory may fail to start until the next reload", "waited", receiverStopWait)
		}
	}
	for _, r := range cfg.Receivers {
		if _, ok := d.receivers[r]; !ok {
			d.startReceiver(r)
		}
	}
	d.mu.Unlock()
	d.sched.Set(jobs)
}

// Next is each job's next run time.
func (d *Daemon) Next() map[string]time.Time { return d.sched.Next() }

// Run schedules until ctx ends; then the runs in progress are cancelled
// (their replications checkpoint: the stream keeps what was sent, the
// native receiver keeps its partial) and waited for, and the receivers
// stop.
func (d *Daemon) Run(ctx context.Context) {
	d.mu.Lock()
	d.ctx = ctx
	pending := d.pending
	d.pending = nil
	for _, r := range pending {
		d.startReceiver(r)
	}
	d.mu.Unlock()
	d.sched.Run(ctx)
	d.mu.Lock()
	for _, sv := range d.receivers {
		sv.stop()
	}
	d.mu.Unlock()
	d.rwg.Wait()
	d.log.Info("daemon stopped")
}

// served is a running receiver of the receivers section.
type served struct {
	stop context.CancelFunc
	done chan struct{} // closed when it returned
}

// receiverStopWait bounds how long a reload waits for a removed receiver.
const receiverStopWait = time.Minute

// startReceiver runs one receiver of the receivers section; d.mu is held.
// One that cannot start or stops with an error is logged and stays
// stopped until the config is reloaded.
func (d *Daemon) startReceiver(r config.Receiver) {
	if d.ctx == nil {
		d.pending = append(d.pending, r)
		done := make(chan struct{})
		close(done)
		d.receivers[r] = &served{stop: func() {}, done: done}
		return
	}
	ctx, cancel := context.WithCancel(d.ctx)
	sv := &served{stop: cancel, done: make(chan struct{})}
	d.receivers[r] = sv
	d.rwg.Add(1)
	go func() {
		defer d.rwg.Done()
		defer close(sv.done)
		log := d.log.With("target", r.Target, "dir", r.Dir)
		rc, err := receiver.New(ctx, d.nc, d.js, r.Target, r.Dir, d.log, receiver.WithApplier(d.applier), receiver.WithMetrics(d.metrics))
		if err == nil {
			err = rc.Run(ctx)
		}
		if err != nil && ctx.Err() == nil {
			log.Error("receiver stopped; fix the cause and reload the config (SIGHUP) to start it again", "error", err)
		}
	}()
}

// runJob is the scheduler's RunFunc: one run of the job as the current
// config describes it.
func (d *Daemon) runJob(ctx context.Context, name string) {
	d.mu.Lock()
	job := d.cfg.Job(name)
	d.mu.Unlock()
	if job == nil {
		return // removed by a reload since it was due
	}
	log := d.log.With("job", name)
	unlock := d.lockDirs(ctx, *job, log)
	defer unlock()
	if ctx.Err() != nil {
		return
	}
	start := time.Now()
	log.Info("run starting")
	out, err := d.run(ctx, *job)
	took := time.Since(start).Round(time.Millisecond)
	// A daemon idles between runs on a small box: what a run's chunks and
	// the server's caches took goes back to the system now, not minutes
	// later through the background scavenger.
	defer debug.FreeOSMemory()
	switch {
	case err != nil && ctx.Err() != nil:
		log.Info("run cancelled; the next run resumes it", "took", took, "error", err)
	case err != nil:
		log.Error("run failed", "took", took, "error", err)
	default:
		var failed []string
		for _, t := range out.Failed() {
			failed = append(failed, t.Display+": "+t.Error)
		}
		attrs := []any{"took", took, "snapshot", out.Snapshot, "targets", len(out.Targets), "deleted", len(out.Deleted)}
		if out.PruneErr != nil {
			attrs = append(attrs, "retention_error", out.PruneErr)
		}
		if len(failed) > 0 {
			log.Error("run done with failed targets; the next run retries them", append(attrs, "failed", failed)...)
		} else {
			log.Info("run done", attrs...)
		}
	}
}

// lockDirs waits for the turn of every local target directory of job (in
// order, so two jobs never wait for each other), bounded by ctx.
func (d *Daemon) lockDirs(ctx context.Context, job config.Job, log *slog.Logger) (unlock func()) {
	var dirs []string
	for _, t := range job.Targets {
		if t.Dir != "" {
			dirs = append(dirs, t.Dir)
		}
	}
	sort.Strings(dirs)
	var held []*sync.Mutex
	unlock = func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i].Unlock()
		}
	}
	for _, dir := range dirs {
		d.mu.Lock()
		m := d.dirs[dir]
		if m == nil {
			m = &sync.Mutex{}
			d.dirs[dir] = m
		}
		d.mu.Unlock()
		if !m.TryLock() {
			log.Info("waiting for another job's run on the same target directory", "dir", dir)
			got := make(chan struct{})
			go func() { m.Lock(); close(got) }()
			select {
			case <-got:
			case <-ctx.Done():
				go func() { <-got; m.Unlock() }()
				return unlock
			}
		}
		held = append(held, m)
	}
	return unlock
}
