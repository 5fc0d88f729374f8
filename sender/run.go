package sender

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/streams"
)

// errAttemptOver means the coordinator moved on to another attempt (or
// ended the replication) while this one was sending.
var errAttemptOver = errors.New("attempt is over")

// Defaults for Options.
const (
	DefaultChunkSize = 1 << 20
	DefaultWindow    = 1 << 30
	// DefaultOutageTimeout bounds how long a dead server is waited for.
	DefaultOutageTimeout = 5 * time.Minute
	// DefaultStallTimeout bounds how long a silent target holds the others.
	DefaultStallTimeout = 10 * time.Minute
	// DefaultInflight is how many chunks may be published and not yet
	// confirmed by the server. Each costs its buffer and, until the
	// connection has written it, nats.go's copy: 16 held about 48 MB of
	// 1 MiB incompressible chunks when the server read slowly, and under
	// send's 48 MiB heap limit the collector then ran once per chunk
	// (1 GiB of random data through a standalone nats-server on the 2-core
	// VM: 1069 collections, 16 CPU-s, 78 MB RSS, 20.6 s). 8 ran it in
	// 9.6 s with 3.6 CPU-s, 37 collections and 61 MB, and 4 in 8.7 s. A
	// sender reaches its server over a LAN or on the same host, where 8
	// MiB unconfirmed cover the round trip many times over.
	DefaultInflight = 8
)

// Options describe one replication run.
type Options struct {
	Source      string
	Targets     []string // target names; their receivers must be running
	SnapshotDir string   // default SnapshotDir(Source)
	ChunkSize   int
	Window      int64
	// InventoryTimeout is how long to wait for receivers to answer.
	InventoryTimeout time.Duration
	// OutageTimeout is how long the sender keeps retrying without progress
	// (a NATS server that is down) before it gives up.
	OutageTimeout time.Duration
	// StallTimeout is how long a target may make no progress (while it is
	// behind the stream, or the stream is complete) before it is dropped
	// from the run.
	StallTimeout time.Duration
	// RecordRetention is how long finished records are kept.
	RecordRetention time.Duration
	// RateLimit bounds the wire bytes published per second; 0: no limit.
	RateLimit int64
	// LocalStream says the stream stays in memory beside its targets
	// (replicate with its embedded server): no link and no disk before
	// them, so auto compression starts at fastest and may step down to
	// none while compressing holds the transfer back.
	LocalStream bool
	// Inflight is how many chunks may be published and not yet confirmed
	// by the server (default DefaultInflight): memory against how far
	// the server may be.
	Inflight int
	// Compress is the level of the chunks (none, s2, fastest, default,
	// better) or streams.CompressAuto (also ""): the level follows whether
	// the link or the CPU holds the transfer back. S2 is used only when
	// every target announced it reads it.
	Compress string
	// Intermediates, when set, chooses among the source snapshots that a
	// target lacks (newer than its newest one, oldest first) those it
	// should receive before the new snapshot: the ones its retention would
	// keep. Nil: a target that was away gets only the new snapshot.
	Intermediates func(missing []btrfs.Info) []btrfs.Info
	// Now is the clock that names snapshots (default time.Now); retention
	// tests compress time with it.
	Now func() time.Time
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Progress is a sender's view of a running attempt.
type Progress struct {
	ID        string
	Bytes     int64 // send-stream bytes confirmed stored
	Wire      int64 // payload bytes stored, after compression
	Estimated int64 // rough total, 0 when unknown
}

// Sender publishes replications. Its fields are set by the caller; the
// coordinator must run in the same process (it owns the records).
type Sender struct {
	NC         *nats.Conn
	JS         jetstream.JetStream
	Coord      *coordinator.Coordinator
	Streams    Source // produces the send streams: BtrfsSource
	Log        *slog.Logger
	OnProgress func(Progress)
	// Metrics, when set, is told what the sender does; Job is its
	// job_name label (default: the base name of the source).
	Metrics *metrics.Metrics
	Job     string

	codec    *streams.Codec
	compress string // Options.Compress of the current run
	bufs     bufPool
	outage   time.Duration // Options.OutageTimeout of the current run
	limit    *wireLimiter  // Options.RateLimit of the current run
	stall    time.Duration // Options.StallTimeout of the current run
	inflight int           // Options.Inflight of the current run
	local    bool          // Options.LocalStream of the current run
}

func (s *Sender) workers() int { return max(2, runtime.GOMAXPROCS(0)) }

// maxInflight is Options.Inflight or its default.
func (s *Sender) maxInflight() int {
	if s.inflight > 0 {
		return s.inflight
	}
	return DefaultInflight
}

// Result is the outcome of a run: the records of one source snapshot that
// it drove, one per group of targets that shared a parent (and one per
// target that needed a stream of its own).
type Result struct {
	Records []*coordinator.Replication
}

// Outcome is where one target ended: the record it did not move out of.
func (res *Result) Outcome(target string) (*coordinator.Replication, *coordinator.Target) {
	for _, r := range res.Records {
		if t := r.Targets[target]; t != nil && t.State != coordinator.TMoved {
			return r, t
		}
	}
	return nil, nil
}

// Run replicates opt.Source to opt.Targets and returns the records of the
// run. An unfinished or failed earlier run of the same source (by UUID) to
// these targets is completed first, instead of taking a new snapshot.
func (s *Sender) Run(ctx context.Context, opt Options) (*Result, error) {
	s.outage, s.stall = orDefault(opt.OutageTimeout, DefaultOutageTimeout), orDefault(opt.StallTimeout, DefaultStallTimeout)
	s.limit = newWireLimiter(opt.RateLimit)
	if _, _, err := streams.ParseCompression(opt.Compress); err != nil {
		return nil, err
	}
	s.compress = opt.Compress
	s.inflight, s.local = opt.Inflight, opt.LocalStream
	if s.codec == nil {
		c, err := streams.NewCodec()
		if err != nil {
			return nil, err
		}
		s.codec = c
	}
	if s.Job == "" {
		s.Job = filepath.Base(filepath.Clean(opt.Source))
	}
	src, srcInfo, err := CheckSource(opt.Source)
	if err != nil {
		return nil, err
	}
	if opt.SnapshotDir == "" {
		opt.SnapshotDir = SnapshotDir(src)
	}
	// One sender drives a source at a time; the lease says who.
	lease, err := s.Coord.AcquireLease(ctx, srcInfo.UUID.String(), coordinator.ThisProcess(src), coordinator.DefaultLeaseTTL)
	if err != nil {
		return nil, err
	}
	ctx, lost := context.WithCancelCause(ctx)
	go lease.Keep(ctx, s.Log, lost)
	defer func() {
		lost(nil)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := lease.Release(rctx); err != nil {
			s.Log.Warn("release lease", "source", src, "error", err)
		}
	}()
	if _, _, err := s.Coord.Sweep(ctx, orDefault(opt.RecordRetention, coordinator.DefaultRecordRetention)); err != nil {
		s.Log.Warn("clean up finished replications", "error", err)
	}
	res, err := s.run(ctx, src, srcInfo, opt)
	if cause := context.Cause(ctx); errors.Is(cause, coordinator.ErrLeaseHeld) {
		return nil, cause
	}
	return res, err
}

// run completes the unfinished run of the source, if any, and drives it.
// An interrupted run (records still under way) is all this run does. After
// a finished run whose targets failed, the failed targets that answer now
// get that snapshot again (their history stays complete), and then a new
// snapshot goes to every target: a target that keeps failing, or stays
// away, never holds back the others' new snapshots.
func (s *Sender) run(ctx context.Context, src string, srcInfo btrfs.Info, opt Options) (*Result, error) {
	recs, err := s.unfinished(ctx, srcInfo.UUID.String(), opt.Targets)
	if err != nil {
		return nil, err
	}
	if recs != nil {
		interrupted := slices.ContainsFunc(recs, func(r *coordinator.Replication) bool { return !r.State.Terminal() })
		if err := s.resume(ctx, src, srcInfo, recs, opt); err != nil {
			return nil, err
		}
		res, err := s.driveRun(ctx, recs[0].SnapshotUUID, opt.Targets)
		if err != nil || interrupted {
			return res, err
		}
	}
	if recs, err = s.plan(ctx, src, srcInfo, opt); err != nil {
		return nil, err
	}
	return s.driveRun(ctx, recs[0].SnapshotUUID, opt.Targets)
}

// unfinished returns the records of the newest snapshot of the source that
// were addressed to any of targets, unless every one of those targets
// committed it (then a new snapshot is due).
func (s *Sender) unfinished(ctx context.Context, srcUUID string, targets []string) ([]*coordinator.Replication, error) {
	all, err := s.Coord.Store().List(ctx)
	if err != nil {
		return nil, err
	}
	var newest string
	for _, r := range all { // oldest first
		if r.SourceUUID == srcUUID && addressed(r, targets) {
			newest = r.SnapshotUUID
		}
	}
	if newest == "" {
		return nil, nil
	}
	var recs []*coordinator.Replication
	finished := true
	for _, r := range all {
		if r.SnapshotUUID != newest {
			continue
		}
		recs = append(recs, r)
		for _, name := range targets {
			if t := r.Targets[name]; t != nil && t.State != coordinator.TCommitted && t.State != coordinator.TMoved {
				finished = false
			}
		}
	}
	if finished {
		return nil, nil
	}
	if info, err := btrfs.Inspect(recs[0].Snapshot); err != nil || info.UUID.String() != newest {
		reason := fmt.Sprintf("source snapshot %s is gone", recs[0].Snapshot)
		if err != nil {
			reason += ": " + err.Error()
		}
		s.Log.Warn("unfinished replication lost its snapshot; starting anew", "replication", recs[0].ID, "reason", reason)
		for _, r := range recs {
			if !r.State.Terminal() {
				_, _ = s.Coord.Fail(ctx, r.ID, reason)
			}
		}
		return nil, nil
	}
	return recs, nil
}

// addressed reports whether r sends to any of targets.
func addressed(r *coordinator.Replication, targets []string) bool {
	for _, t := range targets {
		if r.Targets[t] != nil {
			return true
		}
	}
	return false
}

// resume prepares the records of an unfinished run: a failed one gets a
// new run for its failed targets among those asked for that answer now,
// each with the parent it holds now (asked again: a target that was away
// may hold an older base than the others), after the intermediate
// snapshots its retention keeps (opt.Intermediates).
func (s *Sender) resume(ctx context.Context, src string, srcInfo btrfs.Info, recs []*coordinator.Replication, opt Options) error {
	for _, r := range recs {
		s.Log.Info("continuing unfinished replication", "replication", r.ID, "state", r.State, "attempt", r.Attempt)
		if err := s.Coord.Serve(r.ID); err != nil {
			return err
		}
		if r.State != coordinator.Failed {
			continue
		}
		var failed []string
		for _, name := range opt.Targets {
			if t := r.Targets[name]; t != nil && t.State == coordinator.TFailed {
				failed = append(failed, name)
			}
		}
		if len(failed) == 0 {
			continue
		}
		inv, unreachable := s.inventories(ctx, failed, opt.InventoryTimeout)
		for name, err := range unreachable {
			s.Log.Warn("target still unreachable; it stays failed", "replication", r.ID, "target", name, "error", err)
		}
		if len(inv) == 0 {
			continue
		}
		snaps, err := btrfs.List(filepath.Dir(r.Snapshot))
		if err != nil {
			return err
		}
		older := olderThan(snaps, r.SnapshotUUID)
		// The retried snapshot is judged with the intermediates (the target
		// will hold it) but sent by the retry.
		retried := snaps[:min(len(older)+1, len(snaps))]
		snapUUID, _ := btrfs.ParseUUID(r.SnapshotUUID)
		if err := s.catchUp(ctx, src, srcInfo, opt, retried, snapUUID, inv, r.ChunkSize, r.Window); err != nil {
			return err
		}
		groups := groupByParent(older, inv)
		if _, err := s.Coord.Retry(ctx, r.ID, groups); err != nil {
			return err
		}
	}
	return nil
}

// olderThan keeps the snapshots listed before the one with uuid: the
// candidates for its incremental parent.
func olderThan(snaps []btrfs.Info, uuid string) []btrfs.Info {
	for i, sn := range snaps {
		if sn.UUID.String() == uuid {
			return snaps[:i]
		}
	}
	return snaps
}

// driveRun drives every record of snapshot that is addressed to targets,
// concurrently, including the records that targets move to while it runs,
// and returns when all of them are over.
func (s *Sender) driveRun(ctx context.Context, snapshot string, targets []string) (*Result, error) {
	type ended struct {
		id  string
		err error
	}
	driving := map[string]bool{}
	done := make(chan ended)
	running := 0
	var firstErr error
	watch, err := s.Coord.Store().Watch(ctx)
	if err != nil {
		return nil, err
	}
	for {
		// The server may be restarting: reading the records is retried
		// like any step, within the outage bound.
		var recs []*coordinator.Replication
		err := driver.Run(ctx, s.Log, "list the records of the run", driver.Policy{Bound: s.outage}, func(ctx context.Context) (bool, error) {
			var err error
			recs, err = s.collect(ctx, snapshot, targets)
			return err == nil, err
		})
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if !r.State.Terminal() && !driving[r.ID] && firstErr == nil {
				driving[r.ID] = true
				running++
				go func(id string) {
					err := s.drive(ctx, id)
					done <- ended{id, err}
				}(r.ID)
			}
		}
		if running == 0 {
			if firstErr != nil {
				return nil, firstErr
			}
			return &Result{Records: recs}, nil
		}
		// Wait for a drive to end or a record of this snapshot to appear.
		for relevant := false; !relevant; {
			select {
			case e := <-done:
				running--
				relevant = true
				if e.err != nil && firstErr == nil {
					firstErr = e.err
				}
			case u, ok := <-watch:
				if !ok {
					watch = nil // ctx ended; the drives return on it
				} else {
					relevant = u.SnapshotUUID == snapshot && !driving[u.ID]
				}
			}
		}
	}
}

// collect lists the records of snapshot addressed to targets, and recreates
// a record a target moved to when a crash came between the move and the
// record's creation.
func (s *Sender) collect(ctx context.Context, snapshot string, targets []string) ([]*coordinator.Replication, error) {
	all, err := s.Coord.Store().List(ctx)
	if err != nil {
		return nil, err
	}
	ids := map[string]bool{}
	var recs []*coordinator.Replication
	for _, r := range all {
		if r.SnapshotUUID == snapshot && addressed(r, targets) {
			recs = append(recs, r)
			ids[r.ID] = true
		}
	}
	for _, r := range recs {
		for _, name := range coordinator.SortedNames(r.Targets) {
			t := r.Targets[name]
			if t.State != coordinator.TMoved || ids[t.MovedTo] {
				continue
			}
			nr, err := s.Coord.Split(ctx, r, name, false)
			if err != nil {
				return nil, err
			}
			recs = append(recs, nr)
			ids[nr.ID] = true
		}
	}
	return recs, nil
}

// drive runs attempts until the replication is done or failed, then deletes
// its stream. Temporary trouble (a NATS outage, a killed process) is retried
// where the stream left off, until OutageTimeout passes without progress; a
// permanent error fails the record. The coordinator's watchdog meanwhile
// fails every target that makes no progress for StallTimeout.
func (s *Sender) drive(ctx context.Context, id string) error {
	wctx, stopWatchdog := context.WithCancel(ctx)
	defer stopWatchdog()
	go s.Coord.Watchdog(wctx, id, s.stall)
	log := s.Log.With("replication", id)
	began := time.Now()
	s.Metrics.ReplicationStarted(s.Job)
	defer func() { s.finished(context.WithoutCancel(ctx), id, began) }()
	err := driver.Run(ctx, log, "send", driver.Policy{Bound: s.outage}, func(ctx context.Context) (bool, error) {
		over, err := s.step(ctx, id)
		if driver.IsPermanent(err) {
			// It ends the record, not the run: the next step finds it over.
			log.Error("replication failed", "error", err)
			if _, ferr := s.Coord.Fail(ctx, id, err.Error()); ferr != nil {
				return false, fmt.Errorf("%w (and recording the failure: %v)", err, ferr)
			}
			return false, nil
		}
		return over, err
	})
	if err != nil && ctx.Err() == nil && !driver.IsPermanent(err) {
		return fmt.Errorf("replication %s: %w (is the NATS server running and reachable?)", id, err)
	}
	return err
}

// finished reports how the drive of a replication ended to the metrics:
// done or failed (or nothing ended: cancelled, it stays running for the
// next run), and each committed target's last success.
func (s *Sender) finished(ctx context.Context, id string, began time.Time) {
	if s.Metrics == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, _, err := s.Coord.Store().Get(ctx, id)
	result := metrics.ResultFailed
	if err == nil && r.State == coordinator.Done {
		result = metrics.ResultDone
	}
	s.Metrics.ReplicationFinished(s.Job, result, time.Since(began))
	if err != nil {
		return
	}
	for name, t := range r.Targets {
		if t.State == coordinator.TCommitted {
			s.Metrics.Committed(s.Job, name, r.Created)
		}
	}
}

// step advances the replication by one attempt or one state change, and
// reports whether it is over.
func (s *Sender) step(ctx context.Context, id string) (bool, error) {
	r, _, err := s.Coord.Store().Get(ctx, id)
	if err != nil {
		return false, err
	}
	if r.State.Terminal() {
		if err := s.Coord.Finish(ctx, id); err != nil {
			s.Log.Warn("delete stream", "replication", id, "error", err)
		}
		return true, nil
	}
	if r.State == coordinator.Sent {
		// Sent, but the stream may have died with the process that
		// held it in memory: then the targets wait for chunks of nobody.
		resent, err := s.Coord.Resend(ctx, id, r.Attempt)
		if err != nil {
			return false, err // temporary: the driver logs it and steps again
		}
		if !resent {
			return false, s.waitChange(ctx, r, recheck)
		}
	}
	r, err = s.Coord.BeginAttempt(ctx, id)
	if err != nil {
		return false, err
	}
	st, err := s.JS.Stream(ctx, streams.StreamName(id))
	if err != nil {
		return false, fmt.Errorf("stream of %s: %w", id, err)
	}
	err = s.attemptWatched(ctx, r, st)
	switch {
	case errors.Is(err, errAttemptOver):
		return false, nil
	case errors.Is(err, errStreamChanged):
		_, err = s.Coord.Restart(ctx, id, r.Attempt, err.Error(), false)
	}
	return false, err
}

// attemptWatched sends one attempt and abandons it as soon as the
// coordinator starts another one or ends the replication.
func (s *Sender) attemptWatched(ctx context.Context, r *coordinator.Replication, st jetstream.Stream) error {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	watch, err := s.Coord.Store().Watch(actx)
	if err != nil {
		return err
	}
	go func() {
		for u := range watch {
			if u.ID == r.ID && (u.Attempt != r.Attempt || u.State.Terminal()) {
				cancel(errAttemptOver)
				return
			}
		}
	}()
	err = s.sendAttempt(actx, r, st)
	if cause := context.Cause(actx); errors.Is(cause, errAttemptOver) {
		return errAttemptOver
	}
	return err
}

// recheck bounds one wait for a record to change: the record is read again
// after it even if no watch update came (a watch lost in an outage).
const recheck = 5 * time.Second

// waitChange waits until the record differs from r in state or attempt, or
// at most d; the watchdog meanwhile says which targets are waited for.
func (s *Sender) waitChange(ctx context.Context, r *coordinator.Replication, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	watch, err := s.Coord.Store().Watch(ctx)
	if err != nil {
		return err
	}
	for {
		select {
		case u, ok := <-watch:
			if !ok {
				if ctx.Err() == context.DeadlineExceeded {
					return nil // d passed: the caller reads the record again
				}
				return ctx.Err()
			}
			if u.ID == r.ID && (u.State != r.State || u.Attempt != r.Attempt) {
				return nil
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil
			}
			return ctx.Err()
		}
	}
}

// estimateTimeout bounds the estimate of a stream: it only feeds the
// progress bar, and must not hold up a send of a subvolume with millions
// of extents for long.
const estimateTimeout = 10 * time.Second

// streamSize estimates the send stream of snapshot, for the progress bar
// and the ETA alone: the data its extents hold, as the stream carries it
// (with compressed, compressed extents as they are), or for an incremental
// send from parent (a path, "" for a full send) the data written since
// parent was made. Where the extents cannot be read, a full send's
// estimate is the files' sizes; past estimateTimeout, and where neither
// can be had, it is unknown (0).
func (s *Sender) streamSize(ctx context.Context, snapshot, parent string) int64 {
	ctx, cancel := context.WithTimeout(ctx, estimateTimeout)
	defer cancel()
	var since uint64
	if parent != "" {
		p, err := btrfs.Inspect(parent)
		if err != nil {
			return 0
		}
		since = p.CTransID
	}
	size, err := btrfs.DataSizeOf(ctx, snapshot, since)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		s.Log.Info("no estimate of the stream's size for its progress: reading its extents takes too long", "snapshot", snapshot, "limit", estimateTimeout)
		return 0
	case err != nil && parent == "":
		return apparentSize(ctx, snapshot)
	case err != nil:
		return 0
	case sendsCompressed(s.Streams):
		return size.Encoded
	}
	return size.Plain
}

// apparentSize is the files' sizes under root, 0 if ctx ends first;
// errors just make it smaller.
func apparentSize(ctx context.Context, root string) int64 {
	var total int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	if err != nil {
		return 0
	}
	return total
}
