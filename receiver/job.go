package receiver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

var (
	// errAttemptEnded ends a job whose attempt is over for this target.
	errAttemptEnded = errors.New("attempt replaced by the coordinator")
	// errFallBack restarts a job with btrfs-progs.
	errFallBack = errors.New("falling back to btrfs-progs")
)

// job receives one attempt of one replication into staging.
type job struct {
	rc  *Receiver
	r   *coordinator.Replication
	log *slog.Logger

	staging string
	stream  jetstream.Stream
	app     applier
	native  bool
	digest  hash.Hash

	next, bytes, redelivered int64
	lastProgress             time.Time
	buf                      []byte

	// Native receives ack only what a checkpoint covers.
	durable  int64         // chunks below this are in the last checkpoint
	unacked  jetstream.Msg // newest applied delivery not yet acked
	lastCkpt time.Time
}

// Checkpoint cadence of a native receive: often enough that a crash costs
// little, rarely enough that syncfs does not dominate. Nothing past a
// checkpoint is acked, so it must come well before the consumer's
// MaxAckPending and the sender's window fill up.
const (
	ckptInterval   = time.Second
	idleCheckpoint = 200 * time.Millisecond
)

func (j *job) ckptChunks() int64 {
	n := int64(streams.MaxAckPending / 2)
	if j.r.ChunkSize > 0 {
		n = min(n, j.r.Window/int64(j.r.ChunkSize)/2)
	}
	return max(n, 1)
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
	j.native = rc.applier == Native && !rc.usesProgs(r.ID)
	if j.native && j.resume(ctx) {
		if ci.NumAckPending > 0 {
			// A dead predecessor holds deliveries that would only come
			// back after AckWait: ask for everything past the last ack now.
			rep := j.counters(streams.EvRewind)
			rep.FromSeq = ci.AckFloor.Stream + 1
			v, err := rc.report(ctx, r.ID, rep)
			if err != nil {
				return err
			}
			if v.Action == streams.ActStale {
				return nil
			}
			if cons, err = st.Consumer(ctx, streams.ConsumerName(rc.target)); err != nil {
				return fmt.Errorf("consumer of %s: %w", rc.target, err)
			}
		}
		return j.receive(ctx, cons)
	}
	_, statErr := os.Stat(j.staging)
	if statErr == nil || ci.Delivered.Consumer > 0 {
		// The partial cannot be continued: drop it and ask to replay the
		// stream from its first chunk.
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
	if err := os.MkdirAll(j.staging, 0o700); err != nil {
		return fmt.Errorf("staging %s: %w", j.staging, err)
	}
	j.digest = sha256.New()
	if j.native {
		a, err := startNative(ctx, j.staging, rc.dir)
		if err != nil {
			return j.fail(ctx, err)
		}
		j.app = a
		// A first checkpoint before the first byte, so that a crash right
		// after the subvolume was created can still resume.
		if err := j.checkpoint(); err != nil {
			return j.fail(ctx, err)
		}
	} else {
		a, err := startProgs(ctx, j.staging, rc.dir)
		if err != nil {
			return j.fail(ctx, err)
		}
		j.app = a
	}
	return j.receive(ctx, cons)
}

// resume continues a native receive from its checkpoint. It reports false
// when there is none for this attempt or it cannot be used.
func (j *job) resume(ctx context.Context) bool {
	cp, digest, err := loadCheckpoint(j.staging)
	if errors.Is(err, os.ErrNotExist) {
		return false
	}
	if err == nil && cp.Attempt != j.r.Attempt {
		err = fmt.Errorf("checkpoint of attempt %d", cp.Attempt)
	}
	var a *nativeApplier
	if err == nil {
		a, err = resumeNative(ctx, j.staging, j.rc.dir, cp.Applier)
	}
	if err != nil {
		j.log.Warn("cannot resume the partial receive; starting over", "error", err)
		return false
	}
	j.app, j.digest = a, digest
	j.next, j.bytes, j.redelivered, j.durable = cp.Next, cp.Bytes, cp.Redelivered, cp.Next
	j.lastCkpt = time.Now()
	j.log.Info("resuming receive at its checkpoint", "chunk", cp.Next, "bytes", cp.Bytes)
	return true
}

// checkpoint makes the applied chunks durable, records where to continue
// and only then acks them.
func (j *job) checkpoint() error {
	state, err := j.app.Checkpoint()
	if err != nil {
		return err
	}
	cp := checkpoint{Attempt: j.r.Attempt, Next: j.next, Bytes: j.bytes, Redelivered: j.redelivered, Applier: state}
	if err := saveCheckpoint(j.staging, cp, j.digest); err != nil {
		return err
	}
	j.durable, j.lastCkpt = j.next, time.Now()
	if j.unacked != nil {
		_ = j.unacked.Ack()
		j.unacked = nil
	}
	return nil
}

func (j *job) receive(ctx context.Context, cons jetstream.Consumer) (err error) {
	defer func() {
		if j.app == nil {
			return
		}
		j.app.Abort()
		// A native partial stays for the next run to resume unless this
		// attempt is over; a btrfs-progs partial is worthless.
		over := errors.Is(err, errAttemptEnded) || (ctx.Err() != nil && !j.rc.stopping())
		if !j.native || over {
			_ = discard(context.WithoutCancel(ctx), j.staging)
		}
	}()
	// Bounded in bytes only: a count-bounded pull ended after 15 incompressible
	// 1 MiB chunks and was renewed only below half its count, idling a WAN
	// link one round trip every 15.75 MB. 32 MiB stays below the server's
	// 64 MiB per-client pending limit. (Measurement copy of the lead's change.)
	it, err := cons.Messages(jetstream.PullMaxBytes(32 << 20))
	if err != nil {
		return fmt.Errorf("consume %s: %w", j.r.ID, err)
	}
	defer it.Stop()
	go func() { <-ctx.Done(); it.Stop() }()
	for {
		msg, err := it.Next(jetstream.NextMaxWait(idleCheckpoint))
		if errors.Is(err, nats.ErrTimeout) {
			// Idle: make what was applied durable and ack it, or a sender
			// waiting for room in its window would wait for us forever.
			if j.unacked != nil {
				if err := j.checkpoint(); err != nil {
					return j.fail(ctx, err)
				}
			}
			continue
		}
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
		switch {
		case !j.native || m.Index < j.durable:
			_ = msg.Ack()
		case m.Index == j.next-1:
			j.unacked = msg // the newest delivery of the last applied chunk
		}
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
	if !j.native {
		_ = msg.Ack() // AckAll: confirms every chunk up to this one
		return false, nil
	}
	j.unacked = msg
	if j.next-j.durable >= j.ckptChunks() || time.Since(j.lastCkpt) >= ckptInterval {
		if err := j.checkpoint(); err != nil {
			return true, j.fail(ctx, err)
		}
	}
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

// apply hands one verified chunk to the applier.
func (j *job) apply(ctx context.Context, m streams.Message) error {
	if err := j.app.Write(m.Raw); err != nil {
		return j.applyFailed(ctx, fmt.Errorf("apply chunk %d of %s: %w", m.Index, j.r.ID, err))
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

// applyFailed ends the attempt on an applier error. A stream the native
// receive does not support goes to btrfs-progs instead: the partial is
// dropped and the stream replayed.
func (j *job) applyFailed(ctx context.Context, err error) error {
	if !j.native || !unsupported(err) {
		return j.fail(ctx, err)
	}
	j.log.Warn("the native receive cannot apply this stream; falling back to btrfs-progs", "error", err)
	j.rc.fallBack(j.r.ID)
	j.app.Abort()
	j.app = nil
	if err := discard(context.WithoutCancel(ctx), j.staging); err != nil {
		return err
	}
	return errFallBack
}

// fail cleans staging and tells the coordinator. It returns nil: the
// attempt is over for this job either way.
func (j *job) fail(ctx context.Context, cause error) error {
	if j.app != nil {
		j.app.Abort()
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
	path, err := j.app.Finish()
	if err != nil {
		return j.applyFailed(ctx, err)
	}
	got, err := btrfs.Inspect(path)
	if err != nil {
		return j.fail(ctx, err)
	}
	rep := j.counters(streams.EvReceived)
	rep.Digest = "sha256:" + hex.EncodeToString(j.digest.Sum(nil))
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
