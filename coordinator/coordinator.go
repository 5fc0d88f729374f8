package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/snapjet/snapjet/streams"
)

// handleTimeout bounds the work on one report; the receiver asks again. A
// JetStream request lost in a server restart would otherwise be waited for
// as long as this (seen: 30 s of recovery in the chaos runs).
const handleTimeout = 10 * time.Second

// DefaultMaxAttempts bounds the attempts of one run before the remaining
// targets fail.
const DefaultMaxAttempts = 3

// Coordinator is the sole writer of the replications it serves. It runs in
// the sending process; receivers reach it on streams.ReportSubject.
type Coordinator struct {
	records     Records            // every record operation goes through the contract
	stream      Log                // and every operation on a replication's stream
	kv          jetstream.KeyValue // the state bucket, for leases; nil from NewWith
	svc         micro.Service      // nil from NewWith: no receivers are served
	log         *slog.Logger
	MaxAttempts int
	now         func() time.Time // the clock of leases; tests move it

	mu      sync.Mutex // serialises read-modify-write of records
	serving map[string]bool
	// resetting is held while a new attempt's stream is purged and its
	// consumers reset; BeginAttempt waits for it, so no receiver sees the
	// new attempt in state sending with a consumer of the old one.
	resetting sync.Mutex
}

// New binds the state bucket and registers the coordinator micro service.
// Close stops the service.
func New(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, log *slog.Logger, opts ...Option) (*Coordinator, error) {
	store, err := OpenStore(ctx, js)
	if err != nil {
		return nil, err
	}
	store.log = log
	svc, err := micro.AddService(nc, micro.Config{
		Name:        streams.CoordinatorService,
		Version:     "1.0.0",
		Description: "snapjet replication coordinator: receivers report progress and ask for commit verdicts",
	})
	if err != nil {
		return nil, fmt.Errorf("start coordinator service: %w", err)
	}
	sl := NewStreamLog(js, log)
	for _, o := range opts {
		o(sl)
	}
	c := NewWith(store, sl, log)
	c.kv, c.svc = store.kv, svc
	return c, nil
}

// NewWith builds a Coordinator on records and stream that answers no
// receivers and holds no leases: unit tests build it on the fakes of
// coordtest and hand it reports directly. New is NewWith on JetStream,
// with the micro service.
func NewWith(records Records, stream Log, log *slog.Logger) *Coordinator {
	return &Coordinator{records: records, stream: stream, log: log, MaxAttempts: DefaultMaxAttempts, now: time.Now, serving: map[string]bool{}}
}

// Store gives read access to the records.
func (c *Coordinator) Store() Records { return c.records }

// Close stops answering receivers.
func (c *Coordinator) Close() error {
	if c.svc == nil {
		return nil
	}
	return c.svc.Stop()
}

// Create stores a new replication record in state Planned and starts
// serving it. Every target starts its first attempt.
func (c *Coordinator) Create(ctx context.Context, r *Replication) error {
	r.State, r.Attempt = Planned, 1
	r.Created, r.Updated = time.Now().UTC(), time.Now().UTC()
	for _, t := range r.Targets {
		if !t.State.Terminal() {
			t.Attempts = max(t.Attempts, 1)
		}
	}
	if len(r.Active()) == 0 {
		// Every target failed before anything was sent (no receiver
		// answered): the record says so, and a later run retries it.
		if err := r.settle(); err != nil {
			return err
		}
	}
	if _, err := c.records.Create(ctx, r); err != nil {
		return err
	}
	return c.Serve(r.ID)
}

// Group is a set of targets that share one incremental parent, and so one
// stream and one btrfs send.
type Group struct {
	Parent, ParentUUID string // empty: a full send
	Targets            []string
}

// Split creates the record that target continues in after it left from
// (see trouble): the same snapshot in a stream of its own, so its replay
// costs the others nothing. full drops the incremental parent. Split is
// idempotent: an existing record of that id is returned as it is.
func (c *Coordinator) Split(ctx context.Context, from *Replication, target string, full bool) (*Replication, error) {
	t := from.Targets[target]
	g := Group{Parent: from.Parent, ParentUUID: from.ParentUUID, Targets: []string{target}}
	if full {
		g.Parent, g.ParentUUID = "", ""
	}
	return c.createFrom(ctx, from, t.MovedTo, g, t.Attempts+1)
}

// createFrom stores a record for group, made from the same snapshot as
// from, whose targets start at attempt number attempts of this run.
func (c *Coordinator) createFrom(ctx context.Context, from *Replication, id string, g Group, attempts int) (*Replication, error) {
	if r, _, err := c.records.Get(ctx, id); err == nil {
		return r, c.Serve(id)
	}
	r := &Replication{
		ID: id, Origin: from.ID, Source: from.Source, SourceUUID: from.SourceUUID,
		Snapshot: from.Snapshot, SnapshotName: from.SnapshotName, SnapshotUUID: from.SnapshotUUID,
		Parent: g.Parent, ParentUUID: g.ParentUUID, ChunkSize: from.ChunkSize, Window: from.Window,
		Decodes: from.Decodes, EstimatedBytes: from.EstimatedBytes, Targets: map[string]*Target{},
	}
	for _, name := range g.Targets {
		r.Targets[name] = &Target{State: TPending, Attempts: attempts, Site: from.Targets[name].Site}
	}
	if err := c.Create(ctx, r); err != nil {
		return nil, err
	}
	return r, nil
}

// Serve starts answering the receivers of replication id. Idempotent.
func (c *Coordinator) Serve(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.serving[id] || c.svc == nil {
		return nil
	}
	err := c.svc.AddEndpoint("report-"+id, micro.HandlerFunc(func(req micro.Request) {
		ctx, cancel := context.WithTimeout(context.Background(), handleTimeout)
		defer cancel()
		v, err := c.handle(ctx, id, streams.ReportTarget(req.Subject()), req.Data())
		if err != nil {
			c.log.Warn("receiver report refused", "replication", id, "error", err)
			_ = req.Error("500", err.Error(), nil)
			return
		}
		_ = req.RespondJSON(v)
	}), micro.WithEndpointSubject(streams.ReportSubjects(id)))
	if err != nil {
		return fmt.Errorf("serve replication %s: %w", id, err)
	}
	c.serving[id] = true
	return nil
}

// update is the one place records change: read, apply fn, check, write with
// compare-and-set on the revision.
func (c *Coordinator) update(ctx context.Context, id string, fn func(*Replication) error) (*Replication, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		r, rev, err := c.records.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(r); err != nil {
			return r, err
		}
		r.Updated = time.Now().UTC()
		_, err = c.records.Update(ctx, r, rev)
		if err == nil {
			return r, nil
		}
		if errors.Is(err, ErrConflict) {
			continue // changed under us (another process); read again
		}
		return nil, err
	}
}

// BeginAttempt makes sure the stream and the consumers of the current
// attempt exist, and moves a planned replication to sending.
func (c *Coordinator) BeginAttempt(ctx context.Context, id string) (*Replication, error) {
	c.resetting.Lock()
	defer c.resetting.Unlock()
	r, _, err := c.records.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	// An existing consumer is left as it is: it may have been reset to
	// start where a resumed receiver continues.
	if err := c.stream.Open(ctx, id, r.Window, r.ChunkSize, r.Dests(r.Active())); err != nil {
		return nil, err
	}
	return c.update(ctx, id, func(r *Replication) error {
		if r.State == Planned {
			return r.setState(Sending)
		}
		return nil
	})
}

// Progress records the sender's counters for the current attempt and
// returns the record: its targets' counters say how far behind they are.
func (c *Coordinator) Progress(ctx context.Context, id string, attempt int, chunks, bytes, wire int64) (*Replication, error) {
	return c.update(ctx, id, func(r *Replication) error {
		if r.Attempt != attempt {
			return nil
		}
		r.ChunksSent, r.BytesSent, r.WireBytes = chunks, bytes, wire
		return nil
	})
}

// MarkSent records that the end marker of attempt is stored.
func (c *Coordinator) MarkSent(ctx context.Context, id string, attempt int, chunks, total, wire int64, digest string) error {
	_, err := c.update(ctx, id, func(r *Replication) error { return markSent(r, attempt, chunks, total, wire, digest) })
	return err
}

// markSent is idempotent: the coordinator may have read the end marker
// from the stream before the sender reported it.
func markSent(r *Replication, attempt int, chunks, total, wire int64, digest string) error {
	if r.Attempt != attempt {
		return fmt.Errorf("attempt %d is over (now %d)", attempt, r.Attempt)
	}
	if r.State != Sending {
		return nil
	}
	r.ChunksSent, r.BytesSent, r.WireBytes = chunks, total, max(wire, r.WireBytes)
	r.TotalChunks, r.TotalBytes, r.Digest = chunks, total, digest
	return r.setState(Sent)
}

// Resend moves a sent attempt back to sending when its stream no longer
// holds anything: a stream in memory (replicate's, see StreamsInMemory)
// dies with a killed process, and a wiped store loses a file one. The
// targets still need what they have not applied, which only a new btrfs
// send can give again; their partials stay, and each skips what it holds.
// It reports whether it did: false while the stream holds the attempt, or
// for an attempt that is over.
func (c *Coordinator) Resend(ctx context.Context, id string, attempt int) (bool, error) {
	last, err := c.stream.Last(ctx, id)
	if err != nil || last != nil {
		return false, err
	}
	resent := false
	_, err = c.update(ctx, id, func(r *Replication) error {
		if resent = r.State == Sent && r.Attempt == attempt; !resent {
			return nil
		}
		return r.setState(Sending)
	})
	if err != nil || !resent {
		return false, err
	}
	c.log.Warn("the stream of a sent attempt is gone (a stream in memory dies with its process); sending it again", "replication", id, "attempt", attempt)
	return true, nil
}

// Restart discards the current attempt and starts the next one from the
// first chunk; full drops the incremental parent. Targets that spent their
// attempt budget fail instead.
//
// attempt is the attempt the caller saw fail: when two parties report the
// same failure, only the first restart counts.
func (c *Coordinator) Restart(ctx context.Context, id string, attempt int, reason string, full bool) (*Replication, error) {
	c.resetting.Lock()
	defer c.resetting.Unlock()
	stale := false
	r, err := c.update(ctx, id, func(r *Replication) error {
		if stale = r.State.Terminal() || r.Attempt != attempt; stale {
			return nil
		}
		if active, err := r.exhausted(c.MaxAttempts, reason); err != nil || !active {
			return err
		}
		if full {
			r.Parent, r.ParentUUID = "", ""
		}
		return r.newAttempt(reason)
	})
	if err != nil || stale {
		return r, err
	}
	c.log.Warn("replication restarts", "replication", id, "attempt", r.Attempt, "reason", reason, "full", full, "state", r.State)
	return r, c.resetStream(ctx, r)
}

// Retry starts a new run of a failed replication: its failed targets try
// again with a fresh attempt budget. groups, when given, are the failed
// targets by the parent each holds now (the sender asked them): the first
// group stays in this record with its parent, every other one continues in
// a record of its own. Without groups every failed target keeps the
// record's parent.
func (c *Coordinator) Retry(ctx context.Context, id string, groups []Group) (*Replication, error) {
	c.resetting.Lock()
	defer c.resetting.Unlock()
	var moved []Group
	retried := false
	r, err := c.update(ctx, id, func(r *Replication) error {
		moved = nil
		if retried = r.State == Failed; !retried {
			return nil // not failed: nothing to retry, and its stream is in use
		}
		if len(groups) == 0 {
			groups = []Group{{Parent: r.Parent, ParentUUID: r.ParentUUID}}
			for _, name := range SortedNames(r.Targets) {
				if r.Targets[name].State == TFailed {
					groups[0].Targets = append(groups[0].Targets, name)
				}
			}
		}
		for i, g := range groups {
			for _, name := range g.Targets {
				t := r.Targets[name]
				if t == nil || t.State != TFailed {
					return fmt.Errorf("retry of %s: target %s did not fail", r.ID, name)
				}
				if i == 0 {
					t.Attempts = 0 // newAttempt makes it the first of the run
					if err := r.setTarget(name, TPending, ""); err != nil {
						return err
					}
					continue
				}
				t.MovedTo = SplitID(r.ID, g.Targets[0])
				if err := r.setTarget(name, TMoved, "its parent differs: continues in "+t.MovedTo); err != nil {
					return err
				}
			}
			if i > 0 {
				moved = append(moved, g)
			}
		}
		r.Parent, r.ParentUUID = groups[0].Parent, groups[0].ParentUUID
		return r.newAttempt("retry after: " + r.Error)
	})
	if err != nil || !retried {
		return r, err
	}
	for _, g := range moved {
		if _, err := c.createFrom(ctx, r, SplitID(r.ID, g.Targets[0]), g, 1); err != nil {
			return nil, err
		}
	}
	return r, c.resetStream(ctx, r)
}

// FailTarget takes one target out of the current run with reason (a
// stalled receiver); the others carry on. A later run retries it.
func (c *Coordinator) FailTarget(ctx context.Context, id string, attempt int, target, reason string) error {
	r, err := c.update(ctx, id, func(r *Replication) error {
		t := r.Targets[target]
		if r.Attempt != attempt || t == nil || t.State.Terminal() {
			return nil
		}
		if err := r.setTarget(target, TFailed, reason); err != nil {
			return err
		}
		return r.settle()
	})
	if err != nil {
		return err
	}
	c.dropConsumer(ctx, r.ID, r.dest(target))
	return nil
}

// Fail ends the replication: every target still active fails with reason.
func (c *Coordinator) Fail(ctx context.Context, id, reason string) (*Replication, error) {
	return c.update(ctx, id, func(r *Replication) error { return failActive(r, reason) })
}

func failActive(r *Replication, reason string) error {
	for _, name := range r.Active() {
		if err := r.setTarget(name, TFailed, reason); err != nil {
			return err
		}
	}
	if err := r.settle(); err != nil {
		return err
	}
	r.Error = reason
	return nil
}

// Finish deletes the stream of a replication that is done or failed, and
// its copies at the sites of its targets (when its record is still there).
func (c *Coordinator) Finish(ctx context.Context, id string) error {
	var dests []Dest
	if r, _, err := c.records.Get(ctx, id); err == nil {
		dests = r.Dests(SortedNames(r.Targets))
	}
	return c.stream.Delete(ctx, id, dests)
}

// resetStream empties the stream for a new attempt and gives every active
// target a fresh consumer; failed targets lose theirs so they hold nothing back.
func (c *Coordinator) resetStream(ctx context.Context, r *Replication) error {
	if err := c.stream.Reset(ctx, r.ID, r.Dests(r.Active())); err != nil {
		return fmt.Errorf("reset stream of %s: %w", r.ID, err)
	}
	for name, t := range r.Targets {
		if t.State == TFailed {
			if err := c.stream.DropConsumer(ctx, r.ID, r.dest(name)); err != nil {
				return err
			}
		}
	}
	return nil
}
