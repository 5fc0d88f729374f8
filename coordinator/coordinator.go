package coordinator

import (
	"context"
	"encoding/json"
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

// DefaultMaxAttempts bounds the attempts of one run before the remaining
// targets fail.
const DefaultMaxAttempts = 3

// Coordinator is the sole writer of the replications it serves. It runs in
// the sending process; receivers reach it on streams.ReportSubject.
type Coordinator struct {
	js          jetstream.JetStream
	store       *Store
	svc         micro.Service
	log         *slog.Logger
	MaxAttempts int

	mu      sync.Mutex // serialises read-modify-write of records
	serving map[string]bool
	// resetting is held while a new attempt's stream is purged and its
	// consumers reset; BeginAttempt waits for it, so no receiver sees the
	// new attempt in state sending with a consumer of the old one.
	resetting sync.Mutex
}

// New binds the state bucket and registers the coordinator micro service.
// Close stops the service.
func New(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, log *slog.Logger) (*Coordinator, error) {
	store, err := OpenStore(ctx, js)
	if err != nil {
		return nil, err
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:        streams.CoordinatorService,
		Version:     "1.0.0",
		Description: "snapjet replication coordinator: receivers report progress and ask for commit verdicts",
	})
	if err != nil {
		return nil, fmt.Errorf("start coordinator service: %w", err)
	}
	return &Coordinator{js: js, store: store, svc: svc, log: log, MaxAttempts: DefaultMaxAttempts, serving: map[string]bool{}}, nil
}

// Store gives read access to the records.
func (c *Coordinator) Store() *Store { return c.store }

// Close stops answering receivers.
func (c *Coordinator) Close() error { return c.svc.Stop() }

// Create stores a new replication record in state Planned and starts serving it.
func (c *Coordinator) Create(ctx context.Context, r *Replication) error {
	r.State, r.Attempt, r.RunStart = Planned, 1, 1
	r.Created, r.Updated = time.Now().UTC(), time.Now().UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := c.store.kv.Create(ctx, key(r.ID), b); err != nil {
		return fmt.Errorf("create replication %s: %w", r.ID, err)
	}
	return c.Serve(r.ID)
}

// Serve starts answering the receivers of replication id. Idempotent.
func (c *Coordinator) Serve(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.serving[id] {
		return nil
	}
	err := c.svc.AddEndpoint("report-"+id, micro.HandlerFunc(func(req micro.Request) {
		v, err := c.handle(context.Background(), id, req.Data())
		if err != nil {
			c.log.Warn("receiver report refused", "replication", id, "error", err)
			_ = req.Error("500", err.Error(), nil)
			return
		}
		_ = req.RespondJSON(v)
	}), micro.WithEndpointSubject(streams.ReportSubject(id)))
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
		r, rev, err := c.store.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(r); err != nil {
			return r, err
		}
		r.Updated = time.Now().UTC()
		b, err := json.Marshal(r)
		if err != nil {
			return nil, err
		}
		_, err = c.store.kv.Update(ctx, key(id), b, rev)
		if err == nil {
			return r, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			continue // changed under us (another process); read again
		}
		return nil, fmt.Errorf("store replication %s: %w", id, err)
	}
}

// BeginAttempt makes sure the stream and the consumers of the current
// attempt exist, and moves a planned replication to sending.
func (c *Coordinator) BeginAttempt(ctx context.Context, id string) (*Replication, jetstream.Stream, error) {
	c.resetting.Lock()
	defer c.resetting.Unlock()
	r, _, err := c.store.Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	s, err := streams.EnsureStream(ctx, c.js, id, r.Window)
	if err != nil {
		return nil, nil, err
	}
	for _, name := range r.Active() {
		// An existing consumer is left as it is: it may have been reset to
		// start where a resumed receiver continues.
		_, err := s.Consumer(ctx, streams.ConsumerName(name))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			_, err = s.CreateConsumer(ctx, streams.ConsumerConfig(name))
		}
		if err != nil {
			return nil, nil, fmt.Errorf("consumer for target %s: %w", name, err)
		}
	}
	r, err = c.update(ctx, id, func(r *Replication) error {
		if r.State == Planned {
			return r.setState(Sending)
		}
		return nil
	})
	return r, s, err
}

// Progress records the sender's counters for the current attempt.
func (c *Coordinator) Progress(ctx context.Context, id string, attempt int, chunks, bytes, wire int64) error {
	_, err := c.update(ctx, id, func(r *Replication) error {
		if r.Attempt != attempt {
			return nil
		}
		r.ChunksSent, r.BytesSent, r.WireBytes = chunks, bytes, wire
		return nil
	})
	return err
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

// Restart discards the current attempt and starts the next one from the
// first chunk; full drops the incremental parent. Past MaxAttempts the
// remaining targets fail instead.
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
		if n := r.Attempt - r.RunStart + 1; n >= c.MaxAttempts {
			return failActive(r, fmt.Sprintf("gave up after %d attempts: %s", n, reason))
		}
		if full {
			r.Parent, r.ParentUUID = "", ""
		}
		return r.newAttempt(reason)
	})
	if err != nil || stale {
		return r, err
	}
	c.log.Warn("replication restarts", "replication", id, "attempt", r.Attempt, "reason", reason, "full", full)
	return r, c.resetStream(ctx, r)
}

// Retry starts a new run of a failed replication: every target that did not
// commit tries again, from a fresh attempt.
func (c *Coordinator) Retry(ctx context.Context, id string) (*Replication, error) {
	c.resetting.Lock()
	defer c.resetting.Unlock()
	r, err := c.update(ctx, id, func(r *Replication) error {
		if r.State != Failed {
			return nil
		}
		for name, t := range r.Targets {
			if t.State == TFailed {
				if err := r.setTarget(name, TPending, ""); err != nil {
					return err
				}
			}
		}
		if err := r.newAttempt("retry after: " + r.Error); err != nil {
			return err
		}
		r.RunStart = r.Attempt
		return nil
	})
	if err != nil {
		return nil, err
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
	if s, err := c.js.Stream(ctx, streams.StreamName(r.ID)); err == nil {
		if err := s.DeleteConsumer(ctx, streams.ConsumerName(target)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("drop consumer of %s: %w", target, err)
		}
	}
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

// Finish deletes the stream of a replication that is done or failed.
func (c *Coordinator) Finish(ctx context.Context, id string) error {
	err := c.js.DeleteStream(ctx, streams.StreamName(id))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream of %s: %w", id, err)
	}
	return nil
}

// resetStream empties the stream for a new attempt and gives every active
// target a fresh consumer; failed targets lose theirs so they hold nothing back.
func (c *Coordinator) resetStream(ctx context.Context, r *Replication) error {
	s, err := c.js.Stream(ctx, streams.StreamName(r.ID))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reset stream of %s: %w", r.ID, err)
	}
	if err := s.Purge(ctx); err != nil {
		return fmt.Errorf("purge stream of %s: %w", r.ID, err)
	}
	for name, t := range r.Targets {
		switch {
		case !t.State.Terminal():
			if err := streams.ResetConsumer(ctx, s, name, 0); err != nil {
				return err
			}
		case t.State == TFailed:
			if err := s.DeleteConsumer(ctx, streams.ConsumerName(name)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("drop consumer of %s: %w", name, err)
			}
		}
	}
	return nil
}
