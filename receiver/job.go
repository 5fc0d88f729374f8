package receiver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// errAttemptEnded ends a job whose attempt is over for this target.
var errAttemptEnded = errors.New("attempt replaced by the coordinator")

// job receives one attempt of one replication into staging.
type job struct {
	rc  *Receiver
	r   *coordinator.Replication
	log *slog.Logger

	staging string
	stream  jetstream.Stream
	in      io.WriteCloser
	proc    *btrfs.Process
	digest  hash.Hash

	next, bytes, redelivered int64
	lastProgress             time.Time
	buf                      []byte
}

func (j *job) counters(ev streams.Event) streams.Report {
	return streams.Report{Event: ev, Attempt: j.r.Attempt, ChunksApplied: j.next, BytesApplied: j.bytes, Redelivered: j.redelivered}
}

// run returns nil when the attempt ended here (committed, failed,
// discarded or replaced) and an error for trouble worth retrying.
func (j *job) run(ctx context.Context) error {
	if err := j.attempt(ctx); err != nil && !errors.Is(err, errAttemptEnded) {
		return err
	}
	return nil
}

func (j *job) attempt(ctx context.Context) error {
	rc, r := j.rc, j.r
	j.staging = rc.incoming(r.ID)
	if done, err := j.alreadyCommitted(ctx); done || err != nil {
		return err
	}
	st, err := rc.js.Stream(ctx, streams.StreamName(r.ID))
	if err != nil {
		return fmt.Errorf("stream of %s: %w", r.ID, err)
	}
	j.stream = st
	cons, err := st.Consumer(ctx, streams.ConsumerName(rc.target))
	if err != nil {
		return fmt.Errorf("consumer of %s: %w", rc.target, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer of %s: %w", rc.target, err)
	}
	_, statErr := os.Stat(j.staging)
	if statErr == nil || ci.Delivered.Consumer > 0 {
		// A partial btrfs receive cannot be continued: drop it and ask to
		// replay the stream from its first chunk.
		j.log.Warn("discarding partial receive left by an earlier run; asking for a replay", "delivered", ci.Delivered.Stream)
		if err := discard(ctx, j.staging); err != nil {
			return err
		}
		v, err := rc.report(ctx, r.ID, j.counters(streams.EvRewind))
		if err != nil {
			return err
		}
		if v.Action == streams.ActStale {
			return nil
		}
	}
	return j.receive(ctx, cons)
}

func (j *job) receive(ctx context.Context, cons jetstream.Consumer) (err error) {
	if err := os.MkdirAll(j.staging, 0o700); err != nil {
		return fmt.Errorf("staging %s: %w", j.staging, err)
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	j.in, j.proc, err = btrfs.StartReceive(rctx, j.staging)
	if err != nil {
		return j.fail(ctx, coordinator.Permanent(err))
	}
	defer func() {
		if err != nil || ctx.Err() != nil {
			j.in.Close()
			cancel()
			_ = j.proc.Wait()
			_ = discard(context.WithoutCancel(ctx), j.staging)
		}
	}()
	j.digest = sha256.New()
	// Bounded in bytes as well, so the client buffers at most 16 MiB of chunks.
	it, err := cons.Messages(jetstream.PullMaxMessagesWithBytesLimit(streams.MaxAckPending, 16<<20))
	if err != nil {
		return fmt.Errorf("consume %s: %w", j.r.ID, err)
	}
	defer it.Stop()
	go func() { <-ctx.Done(); it.Stop() }()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return ctx.Err()
			}
			if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) {
				return nil // the coordinator replaced or ended this attempt
			}
			j.log.Debug("waiting for chunks", "error", err)
			continue
		}
		done, err := j.handle(ctx, msg)
		if err != nil || done {
			return err
		}
	}
}

// handle verifies and applies one message; done means the attempt is over.
func (j *job) handle(ctx context.Context, msg jetstream.Msg) (bool, error) {
	m, err := j.rc.codec.Decode(msg.Headers(), msg.Data(), j.buf)
	if err != nil {
		return true, j.rejected(ctx, msg, err)
	}
	if m.Attempt != j.r.Attempt || m.Repl != j.r.ID {
		_ = msg.Ack() // left from another attempt; worthless to everyone
		return false, nil
	}
	if m.Kind == streams.KindChunk && m.Index < j.next {
		j.redelivered++
		_ = msg.Ack()
		return false, nil
	}
	target := m.Index
	if m.Kind == streams.KindEnd {
		target = m.Chunks
	}
	if target > j.next {
		if err := j.fillGap(ctx, msg, target); err != nil {
			return true, err
		}
	}
	if m.Kind == streams.KindEnd {
		return true, j.finish(ctx, msg, m)
	}
	if err := j.apply(ctx, m); err != nil {
		return true, err
	}
	_ = msg.Ack() // AckAll: confirms every chunk up to this one
	return false, nil
}

// fillGap fetches chunks next..upto-1 straight from the stream: after a
// connection cut, messages delivered into the void only come back after
// AckWait, and chunks of one attempt sit on consecutive sequences.
func (j *job) fillGap(ctx context.Context, msg jetstream.Msg, upto int64) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	for k := j.next; k < upto; k++ {
		back := uint64(upto - k)
		if back >= meta.Sequence.Stream {
			return j.fail(ctx, fmt.Errorf("stream of %s has a hole: chunk %d would precede the stream's start", j.r.ID, k))
		}
		seq := meta.Sequence.Stream - back
		raw, err := j.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return j.fail(ctx, fmt.Errorf("stream of %s has a hole: chunk %d is not at seq %d", j.r.ID, k, seq))
		}
		if err != nil {
			return fmt.Errorf("fetch missing chunk %d (seq %d) of %s: %w", k, seq, j.r.ID, err)
		}
		m, err := j.rc.codec.Decode(raw.Header, raw.Data, j.buf)
		if err != nil {
			return j.rejected(ctx, nil, err)
		}
		if m.Kind != streams.KindChunk || m.Index != k || m.Attempt != j.r.Attempt {
			// Replaying this stream would meet the same hole: only a new
			// attempt can mend it.
			return j.fail(ctx, fmt.Errorf("stream of %s has a hole: chunk %d is not at seq %d", j.r.ID, k, seq))
		}
		if err := j.apply(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// apply hands one verified chunk to btrfs receive.
func (j *job) apply(ctx context.Context, m streams.Message) error {
	if _, err := j.in.Write(m.Raw); err != nil {
		return j.receiveFailed(ctx, fmt.Errorf("apply chunk %d of %s: %w", m.Index, j.r.ID, err))
	}
	j.digest.Write(m.Raw)
	j.next++
	j.bytes += int64(len(m.Raw))
	if cap(m.Raw) > cap(j.buf) {
		j.buf = m.Raw[:0]
	}
	if time.Since(j.lastProgress) >= time.Second {
		j.lastProgress = time.Now()
		rep := j.counters(streams.EvProgress)
		go func() {
			v, err := j.rc.report(ctx, j.r.ID, rep)
			if err == nil && v.Action == streams.ActStale {
				j.log.Info("attempt replaced; stopping")
			}
		}()
	}
	return nil
}

// rejected handles a message that failed verification: it is never applied.
// An unknown format is permanent; a corrupt chunk asks for a new attempt.
func (j *job) rejected(ctx context.Context, msg jetstream.Msg, err error) error {
	if msg != nil {
		_ = msg.Term()
	}
	err = fmt.Errorf("replication %s, target %s: %w", j.r.ID, j.rc.target, err)
	j.log.Error("refusing message", "error", err)
	if errors.Is(err, streams.ErrUnknownVersion) {
		return j.fail(ctx, coordinator.Permanent(err))
	}
	return j.fail(ctx, err)
}

// receiveFailed collects btrfs receive's own reason after a write failed.
func (j *job) receiveFailed(ctx context.Context, werr error) error {
	j.in.Close()
	perr := j.proc.Wait()
	if perr == nil {
		perr = werr
	}
	return j.fail(ctx, classifyReceive(j.rc.dir, perr))
}

func classifyReceive(dir string, err error) error {
	switch {
	case errors.Is(err, btrfs.ErrNoSpace):
		return coordinator.Permanent(fmt.Errorf("target %s is out of space: free space there or choose a larger target (%w)", dir, err))
	case errors.Is(err, btrfs.ErrParentMissing):
		return fmt.Errorf("target %s lost the incremental parent (%w)", dir, err)
	}
	return err
}

// fail cleans staging and tells the coordinator. It returns nil: the
// attempt is over for this job either way.
func (j *job) fail(ctx context.Context, cause error) error {
	if j.in != nil {
		j.in.Close()
		_ = j.proc.Wait()
	}
	if err := discard(context.WithoutCancel(ctx), j.staging); err != nil {
		j.log.Error("clean staging", "error", err)
	}
	rep := j.counters(streams.EvFailed)
	rep.Reason = cause.Error()
	rep.Permanent = coordinator.IsPermanent(cause)
	rep.ParentMissing = errors.Is(cause, btrfs.ErrParentMissing)
	j.log.Error("receive failed", "error", cause, "permanent", rep.Permanent)
	if _, err := j.rc.report(ctx, j.r.ID, rep); err != nil {
		return err
	}
	return errAttemptEnded
}

// finish closes the receive, reports what arrived and carries out the verdict.
func (j *job) finish(ctx context.Context, msg jetstream.Msg, end streams.Message) error {
	if err := j.in.Close(); err != nil {
		return j.receiveFailed(ctx, err)
	}
	if err := j.proc.Wait(); err != nil {
		return j.fail(ctx, classifyReceive(j.rc.dir, err))
	}
	rep := j.counters(streams.EvReceived)
	rep.Digest = "sha256:" + hex.EncodeToString(j.digest.Sum(nil))
	subs, err := btrfs.List(j.staging)
	if err != nil {
		return err
	}
	if len(subs) != 1 {
		return j.fail(ctx, fmt.Errorf("btrfs receive left %d subvolumes in %s, expected 1", len(subs), j.staging))
	}
	got := subs[0]
	rep.ReadOnly, rep.ReceivedUUID = got.ReadOnly, got.ReceivedUUID.String()
	v, err := j.rc.report(ctx, j.r.ID, rep)
	if err != nil {
		return err
	}
	switch v.Action {
	case streams.ActCommit:
		final, err := j.commit(ctx, got)
		if err != nil {
			return j.fail(ctx, err)
		}
		done := j.counters(streams.EvCommitted)
		done.Path = final
		if _, err := j.rc.report(ctx, j.r.ID, done); err != nil {
			return err
		}
		_ = msg.Ack()
		j.log.Info("snapshot committed", "path", final, "bytes", j.bytes, "chunks", j.next)
		return os.RemoveAll(j.staging)
	default:
		j.log.Warn("received stream discarded", "reason", v.Reason)
		return discard(ctx, j.staging)
	}
}
