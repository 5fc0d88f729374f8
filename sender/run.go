package sender

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
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
	// StallTimeout is how long a full window may wait on a target that
	// acks nothing before that target is dropped from the run.
	StallTimeout time.Duration
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
	Log        *slog.Logger
	OnProgress func(Progress)

	codec    *streams.Codec
	compress compressGate
	bufs     bufPool
	outage   time.Duration // Options.OutageTimeout of the current run
	stall    time.Duration // Options.StallTimeout of the current run
}

func (s *Sender) workers() int { return max(2, runtime.GOMAXPROCS(0)) }

// Run replicates opt.Source to opt.Targets and returns the final record. An
// unfinished or failed earlier run of the same source and targets is
// completed first, instead of taking a new snapshot.
func (s *Sender) Run(ctx context.Context, opt Options) (*coordinator.Replication, error) {
	s.outage, s.stall = orDefault(opt.OutageTimeout, DefaultOutageTimeout), orDefault(opt.StallTimeout, DefaultStallTimeout)
	if s.codec == nil {
		c, err := streams.NewCodec(zstd.SpeedDefault)
		if err != nil {
			return nil, err
		}
		s.codec = c
	}
	src, srcInfo, err := CheckSource(opt.Source)
	if err != nil {
		return nil, err
	}
	r, err := s.unfinished(ctx, src, opt.Targets)
	if err != nil {
		return nil, err
	}
	if r == nil {
		if r, err = s.plan(ctx, src, srcInfo, opt); err != nil {
			return nil, err
		}
	} else {
		s.Log.Info("continuing unfinished replication", "replication", r.ID, "state", r.State, "attempt", r.Attempt)
		if err := s.Coord.Serve(r.ID); err != nil {
			return nil, err
		}
		if r.State == coordinator.Failed {
			if r, err = s.Coord.Retry(ctx, r.ID); err != nil {
				return nil, err
			}
		}
	}
	return s.drive(ctx, r.ID)
}

// unfinished finds the latest run of src to the same targets that did not
// end in done.
func (s *Sender) unfinished(ctx context.Context, src string, targets []string) (*coordinator.Replication, error) {
	all, err := s.Coord.Store().List(ctx)
	if err != nil {
		return nil, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		if r.Source != src || !sameTargets(r, targets) {
			continue
		}
		if r.State == coordinator.Done {
			return nil, nil
		}
		if _, err := btrfs.Inspect(r.Snapshot); err != nil {
			s.Log.Warn("unfinished replication lost its snapshot; starting anew", "replication", r.ID, "error", err)
			_, _ = s.Coord.Fail(ctx, r.ID, "source snapshot is gone: "+err.Error())
			return nil, nil
		}
		return r, nil
	}
	return nil, nil
}

func sameTargets(r *coordinator.Replication, targets []string) bool {
	if len(r.Targets) != len(targets) {
		return false
	}
	for _, t := range targets {
		if r.Targets[t] == nil {
			return false
		}
	}
	return true
}

func (s *Sender) plan(ctx context.Context, src string, srcInfo btrfs.Info, opt Options) (*coordinator.Replication, error) {
	if opt.SnapshotDir == "" {
		opt.SnapshotDir = SnapshotDir(src)
	}
	chunk := opt.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	if limit := int(s.NC.MaxPayload()) - 8<<10; chunk > limit {
		s.Log.Info("chunk size lowered to the server's max payload", "chunk_size", limit)
		chunk = limit
	}
	chunk = min(chunk, streams.MaxChunk)
	window := opt.Window
	if window <= 0 {
		window = DefaultWindow
	}
	window = max(window, 8*int64(chunk))
	inv, err := Inventories(ctx, s.NC, opt.Targets, opt.InventoryTimeout)
	if err != nil {
		return nil, err
	}
	snaps, err := btrfs.List(opt.SnapshotDir)
	if err != nil {
		return nil, err
	}
	parent := chooseParent(snaps, inv)
	snap, err := takeSnapshot(ctx, src, opt.SnapshotDir)
	if err != nil {
		return nil, err
	}
	r := &coordinator.Replication{
		ID:           replicationID(filepath.Base(snap.Path)),
		Source:       src,
		SourceUUID:   srcInfo.UUID.String(),
		Snapshot:     snap.Path,
		SnapshotName: filepath.Base(snap.Path),
		SnapshotUUID: snap.UUID.String(),
		ChunkSize:    chunk,
		Window:       window,
		Targets:      map[string]*coordinator.Target{},
	}
	if !parent.UUID.IsZero() {
		r.Parent, r.ParentUUID = parent.Path, parent.UUID.String()
	} else {
		r.EstimatedBytes = apparentSize(snap.Path)
	}
	for _, t := range opt.Targets {
		r.Targets[t] = &coordinator.Target{State: coordinator.TPending}
	}
	if err := s.Coord.Create(ctx, r); err != nil {
		return nil, err
	}
	s.Log.Info("replication planned", "replication", r.ID, "snapshot", r.Snapshot, "snapshot_uuid", r.SnapshotUUID,
		"parent", r.Parent, "targets", opt.Targets)
	return r, nil
}

// drive runs attempts until the replication is done or failed, then deletes
// its stream. Temporary trouble (a NATS outage, a killed process) is retried
// where the stream left off, until OutageTimeout passes without progress.
func (s *Sender) drive(ctx context.Context, id string) (*coordinator.Replication, error) {
	var troubleSince time.Time
	for {
		r, err := s.step(ctx, id)
		switch {
		case err == nil && r != nil:
			return r, nil
		case err == nil:
			troubleSince = time.Time{}
			continue
		case coordinator.IsPermanent(err):
			s.Log.Error("replication failed", "replication", id, "error", err)
			if _, ferr := s.Coord.Fail(ctx, id, err.Error()); ferr != nil {
				return nil, fmt.Errorf("%w (and recording the failure: %v)", err, ferr)
			}
			continue
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		if troubleSince.IsZero() {
			troubleSince = time.Now()
		} else if time.Since(troubleSince) > s.outage {
			return nil, fmt.Errorf("replication %s made no progress for %v: %w (is the NATS server running and reachable?)", id, s.outage, err)
		}
		s.Log.Warn("send interrupted; continuing where the stream left off", "replication", id, "error", err)
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// step advances the replication by one attempt or one state change. It
// returns the final record once the replication is over.
func (s *Sender) step(ctx context.Context, id string) (*coordinator.Replication, error) {
	r, _, err := s.Coord.Store().Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Terminal() {
		if err := s.Coord.Finish(ctx, id); err != nil {
			s.Log.Warn("delete stream", "replication", id, "error", err)
		}
		return r, nil
	}
	if r.State == coordinator.Sent {
		return nil, s.waitChange(ctx, r)
	}
	r, st, err := s.Coord.BeginAttempt(ctx, id)
	if err != nil {
		return nil, err
	}
	err = s.attemptWatched(ctx, r, st)
	switch {
	case errors.Is(err, errAttemptOver):
		return nil, nil
	case errors.Is(err, errStreamChanged):
		_, err = s.Coord.Restart(ctx, id, r.Attempt, err.Error(), false)
	}
	return nil, err
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

// waitChange blocks until the record differs from r in state or attempt.
func (s *Sender) waitChange(ctx context.Context, r *coordinator.Replication) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch, err := s.Coord.Store().Watch(ctx)
	if err != nil {
		return err
	}
	for {
		select {
		case u, ok := <-watch:
			if !ok {
				return fmt.Errorf("watching replication %s: %w", r.ID, ctx.Err())
			}
			if u.ID == r.ID && (u.State != r.State || u.Attempt != r.Attempt) {
				return nil
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// apparentSize estimates a full send stream from the files' sizes; it only
// feeds the ETA, so errors just make it smaller.
func apparentSize(root string) int64 {
	var total int64
	_ = filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// SortedNames returns target names in a stable order, for logs and output.
func SortedNames(m map[string]*coordinator.Target) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
