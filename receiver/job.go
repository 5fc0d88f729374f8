package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/streams"
)

var (
	// errAttemptEnded ends a job whose attempt is over for this target.
	errAttemptEnded = errors.New("attempt replaced by the coordinator")
	// errFallBack restarts a job with btrfs-progs.
	errFallBack = errors.New("falling back to btrfs-progs")
	// errRepull re-opens the consumer after the coordinator reset it.
	errRepull = errors.New("consumer reset; pulling again")
	// errReplay starts the job again: the coordinator discarded this
	// target's partial and replays the stream to it from the start.
	errReplay = errors.New("replaying the stream from its start")
)

// job receives one attempt of one replication into staging.
type job struct {
	rc  *Receiver
	r   *coordinator.Work
	log *slog.Logger

	staging string
	stream  jetstream.Stream
	app     applier
	native  bool
	digest  *streams.Digest

	next, bytes, redelivered int64
	began                    time.Time     // when this process took up the attempt
	busy                     time.Duration // handling deliveries, not waiting for them
	lastProgress             time.Time
	reported                 int64 // chunks applied as of the last progress report
	buf                      []byte

	// Native receives ack only what a checkpoint covers.
	durable  int64         // chunks below this are in the last checkpoint
	marked   int64         // chunks below this are in the last checkpoint begun
	unacked  jetstream.Msg // newest applied delivery not yet acked
	lastCkpt time.Time     // when the last checkpoint began
	syncing  chan synced   // the checkpoint whose sync runs, nil when none
	lastSeq  uint64        // stream sequence of the newest delivery received
	acked    jetstream.Msg
	ackedSeq uint64 // stream sequence of the newest ack sent
}

// Checkpoint cadence of a native receive: often enough that a crash costs
// little, rarely enough that syncfs does not dominate. Nothing past a
// checkpoint is acked, so it must begin well before the consumer's
// MaxAckPending and the sender's window fill up: the chunks applied while
// a checkpoint syncs are unacked too.
const (
	ckptInterval   = time.Second
	idleCheckpoint = 200 * time.Millisecond
)

func (j *job) ckptChunks() int64 {
	n := int64(streams.MaxAckPending / 8)
	if j.r.ChunkSize > 0 {
		n = min(n, j.r.Window/int64(j.r.ChunkSize)/4)
	}
	return max(n, 1)
}

// ckptDue says whether applied chunks wait for a checkpoint that should
// begin now.
func (j *job) ckptDue() bool {
	return j.unacked != nil && (j.next-j.marked >= j.ckptChunks() || time.Since(j.lastCkpt) >= ckptInterval)
}

func (j *job) counters(ev streams.Event) streams.Report {
	return streams.Report{Event: ev, Attempt: j.r.Attempt, ChunksApplied: j.next, BytesApplied: j.bytes, Redelivered: j.redelivered,
		BusyMs: j.busy.Milliseconds(), ElapsedMs: time.Since(j.began).Milliseconds()}
}

// run returns nil when the attempt ended here (committed, failed,
// discarded or replaced) and an error for trouble worth retrying.
func (j *job) run(ctx context.Context) error {
	j.began = time.Now()
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
	st, cons, err := j.bind(ctx)
	if err != nil {
		return err
	}
	j.stream = st
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
	j.digest = streams.NewDigest()
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

// bind finds the stream (or the site's copy of it) and this target's
// consumer. A site's copy is made when the site can be reached: when the
// coordinator could not make it (or this target's consumer on it) at the
// start, the target asks for them now, delivering from the first stored
// chunk: the stream keeps everything this target has not acked.
func (j *job) bind(ctx context.Context) (jetstream.Stream, jetstream.Consumer, error) {
	rc, r := j.rc, j.r
	js, err := rc.jsAt(r)
	if err != nil {
		return nil, nil, err
	}
	for asked := false; ; asked = true {
		st, err := js.Stream(ctx, streams.StreamName(r.ID))
		if err == nil && r.Site != "" {
			err = rc.current(ctx, st)
		}
		var cons jetstream.Consumer
		if err == nil {
			cons, err = st.Consumer(ctx, streams.ConsumerName(rc.target))
		}
		missing := errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound)
		if err == nil || !missing || r.Site == "" || asked {
			if err != nil {
				return nil, nil, fmt.Errorf("consumer of %s on the stream of %s%s: %w", rc.target, r.ID, coordinator.AtSite(r.Site), err)
			}
			return st, cons, nil
		}
		j.log.Info("no copy of the stream at this site yet; asking the coordinator for one", "site", r.Site)
		rep := j.counters(streams.EvRewind)
		rep.FromSeq = 1
		v, err := rc.report(ctx, r.ID, rep)
		if err != nil {
			return nil, nil, err
		}
		if v.Action == streams.ActStale {
			return nil, nil, errAttemptEnded
		}
	}
}

// current checks that a site's copy is of the stream as it is now at the
// hub: a copy left behind when an earlier stream of the same replication
// ended holds other messages at the same sequences, and counts as missing.
func (rc *Receiver) current(ctx context.Context, local jetstream.Stream) error {
	origin, err := rc.js.Stream(ctx, local.CachedInfo().Config.Name)
	if err != nil {
		return err
	}
	if local.CachedInfo().Config.Metadata[streams.OriginKey] != streams.OriginStamp(origin.CachedInfo()) {
		return fmt.Errorf("the site's copy is of an earlier stream: %w", jetstream.ErrStreamNotFound)
	}
	return nil
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
	j.next, j.bytes, j.redelivered, j.durable, j.marked = cp.Next, cp.Bytes, cp.Redelivered, cp.Next, cp.Next
	j.lastCkpt = time.Now()
	j.log.Info("resuming receive at its checkpoint", "chunk", cp.Next, "bytes", cp.Bytes)
	j.rc.metrics.Resumed(jobLabel(j.r), "receiver")
	return true
}

// synced is the end of a checkpoint's sync: the chunks below next are
// durable unless err, and msg acks them.
type synced struct {
	next int64
	msg  jetstream.Msg
	err  error
}

// beginCheckpoint takes the applier's state and makes it durable in the
// background, so the job applies on while the target syncs (a sync took
// 0.3-0.5 s under load; applying nothing meanwhile left the link idle once
// the consumer's MaxAckPending was out). The chunks it covers are acked
// when it ends (checkpointed). One runs at a time: a checkpoint that falls
// due meanwhile begins when it ends.
func (j *job) beginCheckpoint() error {
	if j.syncing != nil {
		return nil
	}
	state, durable, err := j.app.Checkpoint()
	if err != nil {
		return err
	}
	digest, err := j.digest.MarshalBinary()
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	cp := checkpoint{Attempt: j.r.Attempt, Next: j.next, Bytes: j.bytes, Redelivered: j.redelivered, Applier: state}
	done := make(chan synced, 1)
	j.syncing, j.marked, j.lastCkpt = done, j.next, time.Now()
	msg := j.unacked
	j.unacked = nil
	go func() {
		err := durable()
		if err == nil {
			err = saveCheckpoint(j.staging, cp, digest)
		}
		done <- synced{next: cp.Next, msg: msg, err: err}
	}()
	return nil
}

// checkpointed records a checkpoint whose sync ended and acks what it
// covers.
func (j *job) checkpointed(s synced) error {
	j.syncing = nil
	if s.err != nil {
		return s.err
	}
	j.durable = s.next
	if s.msg != nil {
		j.ack(s.msg)
	}
	return nil
}

// settle waits for the checkpoint whose sync runs, if any. Whatever ends
// the consumption, or asks the coordinator to reset the consumer, settles
// first: an ack must never reach the consumer's successor, and the sync
// must be over before the applier is aborted or finished.
//
// A sync cannot be cancelled (syncfs), and the checkpoint is written into
// staging when it ends, so settle waits for it whatever the context; it
// says so every waitLog.
func (j *job) settle() error {
	if j.syncing == nil {
		return nil
	}
	since := time.Now()
	tick := time.NewTicker(waitLog)
	defer tick.Stop()
	for {
		select {
		case s := <-j.syncing:
			return j.checkpointed(s)
		case <-tick.C:
			j.log.Warn("waiting for the target's sync of a checkpoint", "dir", j.rc.dir, "since", since.Format(time.RFC3339), "waited", time.Since(since).Round(time.Second))
		}
	}
}

// checkpoint makes everything applied durable and acks it before it
// returns.
func (j *job) checkpoint() error {
	if err := j.settle(); err != nil {
		return err
	}
	if err := j.beginCheckpoint(); err != nil {
		return err
	}
	return j.settle()
}

// ack confirms msg and everything before it (AckAll), and remembers it: an
// ack is fire-and-forget, and one sent into a cut link is lost, so idle
// sends it again when the server's ack floor stays behind.
func (j *job) ack(msg jetstream.Msg) {
	_ = msg.Ack()
	if meta, err := msg.Metadata(); err == nil && meta.Sequence.Stream > j.ackedSeq {
		j.acked, j.ackedSeq = msg, meta.Sequence.Stream
	}
}

// Pull settings. Heartbeats on the pull are what notice a pull that died
// without a disconnect (a leaf node whose link to the hub was cut keeps the
// receiver's own connection up): after two missed heartbeats the client
// re-issues the pull. The byte budget (default) keeps several chunks in
// flight so the link never idles for a round trip between pulls, and stays
// below the server's per-client pending limit (64 MiB), past which it drops
// the client.
const (
	pullBytes     = 32 << 20
	pullExpiry    = 10 * time.Second
	pullHeartbeat = 2 * time.Second
	// stallCheck is how long a receiver waits without a chunk before it asks
	// the server whether chunks were delivered that never arrived.
	stallCheck = 5 * time.Second
	// waitLog is how often a waiting receiver says what it waits for.
	waitLog = 30 * time.Second
)

// delivery is one result of the consumer's iterator.
type delivery struct {
	msg jetstream.Msg
	err error
}

// pull runs the iterator in its own goroutine: Next must block without a
// deadline of its own, or the client's missed-heartbeat check is re-armed on
// every call and never fires.
func pull(it jetstream.MessagesContext, done <-chan struct{}) <-chan delivery {
	out := make(chan delivery)
	go func() {
		defer close(out)
		for {
			m, err := it.Next()
			select {
			case out <- delivery{m, err}:
			case <-done:
				return
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
		}
	}()
	return out
}

func (j *job) receive(ctx context.Context, cons jetstream.Consumer) (err error) {
	defer func() {
		if j.app == nil {
			return
		}
		j.app.Abort()
		// A native partial stays for the next run to resume unless this
		// attempt is over; a btrfs-progs partial is worthless.
		over := errors.Is(err, errAttemptEnded) || errors.Is(context.Cause(ctx), errAttemptEnded)
		if !j.native || over {
			_ = discard(context.WithoutCancel(ctx), j.staging)
		}
	}()
	for {
		err := j.consume(ctx, cons)
		if !errors.Is(err, errRepull) {
			return err
		}
		// Acks of the consumer that was replaced must never be repeated to
		// its successor.
		j.acked, j.ackedSeq = nil, 0
		if cons, err = j.stream.Consumer(ctx, streams.ConsumerName(j.rc.target)); err != nil {
			return fmt.Errorf("consumer of %s: %w", j.rc.target, err)
		}
	}
}

// consume applies deliveries until the attempt ends here, or until the
// consumer was reset and must be pulled afresh (errRepull).
func (j *job) consume(ctx context.Context, cons jetstream.Consumer) error {
	it, err := cons.Messages(jetstream.PullMaxBytes(j.rc.pullBytes), jetstream.PullExpiry(pullExpiry),
		jetstream.PullHeartbeat(pullHeartbeat), jetstream.WithMessagesErrOnMissingHeartbeat(true))
	if err != nil {
		return fmt.Errorf("consume %s: %w", j.r.ID, err)
	}
	done := make(chan struct{})
	defer func() { close(done); it.Stop() }()
	defer func() { _ = j.settle() }()
	deliveries := pull(it, done)
	idle := time.NewTimer(idleCheckpoint)
	defer idle.Stop()
	w := waiter{since: time.Now()}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-j.syncing:
			if err := j.checkpointed(s); err != nil {
				return j.fail(ctx, err)
			}
			if j.ckptDue() {
				if err := j.beginCheckpoint(); err != nil {
					return j.fail(ctx, err)
				}
			}
		case <-idle.C:
			// Idle: make what was applied durable and ack it, or a sender
			// waiting for room in its window would wait for us forever.
			// This also settles the checkpoint in flight before idle may
			// ask for the consumer to be reset.
			if err := j.settle(); err != nil {
				return j.fail(ctx, err)
			}
			if j.unacked != nil {
				if err := j.checkpoint(); err != nil {
					return j.fail(ctx, err)
				}
			}
			if j.next > j.reported {
				j.progress(ctx)
			}
			if err := j.idle(ctx, cons, &w); err != nil {
				return err
			}
			idle.Reset(idleCheckpoint)
		case d, ok := <-deliveries:
			if !ok || errors.Is(d.err, jetstream.ErrMsgIteratorClosed) {
				return ctx.Err()
			}
			if d.err != nil {
				if errors.Is(d.err, jetstream.ErrConsumerDeleted) || errors.Is(d.err, jetstream.ErrConsumerNotFound) {
					return nil // the coordinator replaced or ended this attempt
				}
				if errors.Is(d.err, jetstream.ErrNoHeartbeat) {
					j.log.Warn("no heartbeat on the pull: the link to the stream's server is down; pulling again",
						"waiting_since", w.since.Format(time.RFC3339), "next_chunk", j.next)
				} else {
					j.log.Debug("waiting for chunks", "error", d.err)
				}
				continue
			}
			w = waiter{since: time.Now()}
			if meta, err := d.msg.Metadata(); err == nil {
				j.lastSeq = meta.Sequence.Stream
			}
			start := time.Now()
			done, err := j.handle(ctx, d.msg)
			j.busy += time.Since(start)
			if err != nil || done {
				return err
			}
			idle.Reset(idleCheckpoint)
		}
	}
}

// waiter tracks how long a job has gone without a chunk.
type waiter struct {
	since, logged, checked time.Time
}

// idle runs while no chunk arrives: it says what the job waits for, and
// asks the server whether it delivered chunks that never arrived (lost on a
// cut link). Those would only come back after AckWait, and with
// MaxAckPending of them outstanding nothing else is delivered: the job
// asks the coordinator to replay from its last ack instead.
func (j *job) idle(ctx context.Context, cons jetstream.Consumer, w *waiter) error {
	now := time.Now()
	if now.Sub(w.since) >= waitLog && now.Sub(w.logged) >= waitLog {
		w.logged = now
		j.log.Info("waiting for chunks", "since", w.since.Format(time.RFC3339), "waited", now.Sub(w.since).Round(time.Second), "next_chunk", j.next)
	}
	if now.Sub(w.since) < stallCheck || now.Sub(w.checked) < stallCheck {
		return nil
	}
	w.checked = now
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	ci, err := cons.Info(ictx)
	cancel()
	if err != nil {
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) {
			return errAttemptEnded
		}
		j.log.Warn("link to the server lost? the consumer does not answer", "waiting_since", w.since.Format(time.RFC3339), "error", err)
		return nil
	}
	if ci.AckFloor.Stream < j.ackedSeq && j.acked != nil {
		// The ack went into a cut link: the server still counts those
		// chunks pending and the sender waits for room they would free.
		j.log.Warn("acks were lost with the link; acking again", "ack_floor", ci.AckFloor.Stream, "acked_seq", j.ackedSeq)
		// The client refuses to ack a message twice, so the ack (AckAll,
		// "+ACK") goes to its reply subject directly, waiting for the
		// server's confirmation.
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := j.rc.nc.RequestWithContext(actx, j.acked.Reply(), []byte("+ACK"))
		cancel()
		if err != nil {
			j.log.Warn("ack again", "error", err)
		}
	}
	if ci.Delivered.Stream <= j.lastSeq || ci.NumAckPending == 0 {
		return nil
	}
	j.log.Warn("chunks were delivered that never arrived (a cut link); asking to replay from the last ack",
		"delivered_seq", ci.Delivered.Stream, "received_seq", j.lastSeq, "ack_floor", ci.AckFloor.Stream)
	rep := j.counters(streams.EvRewind)
	rep.FromSeq = ci.AckFloor.Stream + 1
	v, err := j.rc.report(ctx, j.r.ID, rep)
	if err != nil {
		return err
	}
	if v.Action == streams.ActStale {
		return errAttemptEnded
	}
	return errRepull
}

// handle verifies and applies one message; done means the attempt is over.
func (j *job) handle(ctx context.Context, msg jetstream.Msg) (bool, error) {
	m, err := j.rc.codec.Decode(msg.Headers(), msg.Data(), j.buf)
	if err != nil {
		return true, j.rejected(ctx, msg, err)
	}
	switch {
	case m.Repl != j.r.ID:
		_ = msg.Term() // not of this replication at all; never ack past it
		return false, nil
	case m.Attempt > j.r.Attempt:
		// Either this job lags behind the coordinator (it is cancelled as
		// soon as the record shows it) or the message is stray: never ack
		// it, since AckAll would confirm chunks of the next attempt that
		// its job has not applied.
		return false, nil
	case m.Attempt < j.r.Attempt:
		_ = msg.Ack() // left from an earlier attempt, before this one's chunks
		return false, nil
	}
	if m.Kind == streams.KindChunk && m.Index < j.next {
		j.redelivered++
		j.rc.metrics.Applied(j.rc.target, 0, 0, 1)
		switch {
		case !j.native || m.Index < j.durable:
			j.ack(msg)
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
		if err := j.settle(); err != nil {
			return true, j.fail(ctx, err)
		}
		return true, j.finish(ctx, msg, m)
	}
	if err := j.apply(ctx, m); err != nil {
		return true, err
	}
	if !j.native {
		j.ack(msg) // AckAll: confirms every chunk up to this one
		return false, nil
	}
	j.unacked = msg
	if j.ckptDue() {
		if err := j.beginCheckpoint(); err != nil {
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
			return j.fail(ctx, errStreamBad{fmt.Errorf("stream of %s has a hole: chunk %d would precede the stream's start", j.r.ID, k)})
		}
		seq := meta.Sequence.Stream - back
		raw, err := j.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return j.fail(ctx, errStreamBad{fmt.Errorf("stream of %s has a hole: chunk %d is not at seq %d", j.r.ID, k, seq)})
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
			return j.fail(ctx, errStreamBad{fmt.Errorf("stream of %s has a hole: chunk %d is not at seq %d", j.r.ID, k, seq)})
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
	j.digest.Add(m.Index, len(m.Raw), m.Sum)
	j.next++
	j.bytes += int64(len(m.Raw))
	j.rc.metrics.Applied(j.rc.target, 1, int64(len(m.Raw)), 0)
	if cap(m.Raw) > cap(j.buf) {
		j.buf = m.Raw[:0]
	}
	if time.Since(j.lastProgress) >= time.Second {
		j.progress(ctx)
	}
	return nil
}

// jobLabel is the job_name a receiver reports under: the base name of the
// replication's source (a receiver does not know the sender's job names).
func jobLabel(r *coordinator.Work) string {
	return filepath.Base(filepath.Clean(r.Source))
}

// progress tells the coordinator how far the job got, without waiting for
// the answer. It is what the sender's watchdog sees of this target: a
// job that applied everything stored and waits must say so, or it would be
// taken for a stalled one.
func (j *job) progress(ctx context.Context) {
	j.lastProgress, j.reported = time.Now(), j.next
	rep := j.counters(streams.EvProgress)
	go func() {
		v, err := j.rc.report(ctx, j.r.ID, rep)
		if err == nil && v.Action == streams.ActStale {
			j.log.Info("attempt replaced; stopping")
		}
	}()
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
		return j.fail(ctx, driver.Permanent(err))
	}
	return j.fail(ctx, errStreamBad{err})
}

// errStreamBad marks a failure that lies in the stored stream itself (a
// chunk that fails verification, a hole): replaying it cannot help.
type errStreamBad struct{ error }

func (e errStreamBad) Unwrap() error { return e.error }

// applyFailed ends the attempt on an applier error. A stream the native
// receive does not support goes to btrfs-progs instead: the partial is
// dropped and the stream replayed.
func (j *job) applyFailed(ctx context.Context, err error) error {
	if !j.native || !unsupported(err) {
		return j.fail(ctx, err)
	}
	j.log.Warn("the native receive cannot apply this stream; falling back to btrfs-progs", "error", err)
	j.rc.fallBack(j.r.ID)
	_ = j.settle() // the partial is dropped, durable or not
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
	if ctx.Err() != nil && !errors.Is(context.Cause(ctx), errAttemptEnded) {
		// Stopping (SIGTERM, Ctrl-C) is not a failure: what an applier
		// reports after its context ended is the stop itself, and a native
		// partial stays in staging for the next run to resume.
		return ctx.Err()
	}
	_ = j.settle() // the partial is dropped, durable or not
	if j.app != nil {
		j.app.Abort()
	}
	if err := discard(context.WithoutCancel(ctx), j.staging); err != nil {
		j.log.Error("clean staging", "error", err)
	}
	rep := j.counters(streams.EvFailed)
	rep.Reason = cause.Error()
	rep.Permanent = driver.IsPermanent(cause)
	rep.ParentMissing = errors.Is(cause, btrfs.ErrParentMissing)
	rep.StreamBad = errors.As(cause, new(errStreamBad))
	j.log.Error("receive failed", "error", cause, "permanent", rep.Permanent)
	v, err := j.rc.report(ctx, j.r.ID, rep)
	if err != nil {
		return err
	}
	if v.Action == streams.ActReplay {
		return errReplay
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
	rep.Digest = j.digest.String()
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
		// Staging goes before the report: once the coordinator hears of the
		// commit the run may end and this job with it.
		if err := os.RemoveAll(j.staging); err != nil {
			return fmt.Errorf("clean staging %s: %w", j.staging, err)
		}
		_ = msg.Ack()
		j.log.Info("snapshot committed", "path", final, "bytes", j.bytes, "chunks", j.next)
		done := j.counters(streams.EvCommitted)
		done.Path = final
		_, err = j.rc.report(ctx, j.r.ID, done)
		return err
	default:
		j.log.Warn("received stream discarded", "reason", v.Reason)
		return discard(ctx, j.staging)
	}
}
