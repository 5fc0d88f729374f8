package sender

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// publisher stores chunks in order with asynchronous, de-duplicated
// publishes, and keeps the stream within the replication's window.
type publisher struct {
	s    *Sender
	r    *coordinator.Replication
	st   jetstream.Stream
	log  *slog.Logger
	comp *compression // told where each chunk waited

	chunks, bytes, wire int64     // confirmed by the server
	stored              int64     // estimate of the stream's size
	sinceTrim           int64     // bytes published since the last trim
	trimming            bool      // the stream outgrew trimAbove: its start is not kept
	trimAfter           time.Time // no trim before (after a failed one)
	inflight            []pending
	lastReport          time.Time
	recoveredAt         int64 // chunk the last in-place recovery resumed at
	retries             int   // recoveries in a row from recoveredAt
	after               seqAt // where in the stream the chunks go
}

// seqAt says that chunk idx follows the message stored at stream sequence
// seq; each chunk after it follows one more.
type seqAt struct {
	idx int64
	seq uint64
}

// last is the stream sequence chunk idx must follow.
func (a seqAt) last(idx int64) uint64 { return a.seq + uint64(idx-a.idx) }

type pending struct {
	fut        jetstream.PubAckFuture
	j          *job
	reconnects uint64 // the connection's reconnect count when published
}

// publishOpts makes the server refuse a message unless the stream's last
// sequence is last, the one its predecessor was stored at: a publish lost in
// a server restart while later ones were replayed from the client's
// reconnect buffer can never leave a hole.
//
// It is the expected last sequence, not the expected last message id: a
// clustered stream checks the sequence when its leader proposes the message
// and refuses it with an error the sender recovers from, but checks the
// message id only when the message is applied, where a mismatch (a chunk
// republished across a change of leader) is a write error that stops the
// stream (nats-server 2.15: "critical write error: last msgid mismatch").
func publishOpts(r *coordinator.Replication, last uint64) []jetstream.PublishOpt {
	return []jetstream.PublishOpt{jetstream.WithExpectStream(streams.StreamName(r.ID)), jetstream.WithExpectLastSequence(last)}
}

// windowLog is how often a sender waiting for room in the window says so.
const windowLog = 30 * time.Second

// storedSize is what the stream stores for msg once published with
// publishOpts: its subject, its headers and those the options add (the
// expected stream, and the expected last sequence of up to 20 digits), its
// data, and the store's own record. The window is counted in
// these bytes; counted short, tiny chunks (zeros compress to a few bytes)
// would let the stream outgrow its byte limit between two reads of its
// size.
func storedSize(msg *nats.Msg) int64 {
	n := len(msg.Subject) + len(msg.Data) + 64
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	n += len(jetstream.ExpectedStreamHeader) + len(streams.StreamName(msg.Header.Get(streams.HdrRepl))) + 4
	n += len(jetstream.ExpectedLastSeqHeader) + 20 + 4
	return int64(n)
}

func (p *publisher) run(ctx context.Context, order <-chan *job) error {
	info, err := p.st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream of %s: %w", p.r.ID, err)
	}
	p.stored = int64(info.State.Bytes)
	for {
		t0 := time.Now()
		j, ok := <-order
		if !ok {
			break
		}
		t1 := time.Now()
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		t2 := time.Now()
		err := p.makeRoom(ctx, storedSize(j.msg))
		if err == nil {
			err = p.publish(ctx, j)
		} else {
			p.hold(j)
		}
		for err == nil && len(p.inflight) > p.s.maxInflight() {
			err = p.confirmOldest(ctx)
		}
		if err != nil {
			if err := p.recover(ctx, err); err != nil {
				return err
			}
		}
		p.trim(ctx)
		p.comp.observe(waits{read: t1.Sub(t0), compress: t2.Sub(t1), link: time.Since(t2), chunks: 1})
		p.report(ctx, false)
	}
	for len(p.inflight) > 0 {
		if err := p.confirmOldest(ctx); err != nil {
			if err := p.recover(ctx, err); err != nil {
				return err
			}
		}
	}
	p.report(ctx, true)
	return nil
}

// hold keeps a chunk that could not be published yet with the unconfirmed
// ones, so that recover publishes it in order: dropping it would leave a
// hole the server refuses to fill ("wrong last msg ID").
func (p *publisher) hold(j *job) {
	p.inflight = append(p.inflight, pending{j: j})
}

// publish sends one chunk without waiting for the server's confirmation,
// once the rate limit lets its wire bytes go.
func (p *publisher) publish(ctx context.Context, j *job) error {
	if err := p.s.limit.wait(ctx, len(j.msg.Data)); err != nil {
		p.hold(j)
		return err
	}
	fut, err := p.s.JS.PublishMsgAsync(j.msg, publishOpts(p.r, p.after.last(j.idx))...)
	if err != nil {
		p.hold(j)
		return fmt.Errorf("publish chunk %d of %s: %w", j.idx, p.r.ID, err)
	}
	p.inflight = append(p.inflight, pending{fut, j, p.s.NC.Stats().Reconnects})
	n := storedSize(j.msg)
	p.stored += n
	p.sinceTrim += n
	return nil
}

// recover continues after a failed publish (a dropped connection, a
// restarted server) without restarting btrfs send: once the server is back
// it asks where the stream ends and publishes again the unconfirmed chunks
// from there, which are still in memory. When the stream lost chunks that
// are no longer held, it gives up with cause and the attempt is resumed
// from a fresh btrfs send.
func (p *publisher) recover(ctx context.Context, cause error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	p.log.Warn("publish interrupted; republishing from where the stream ends", "error", cause)
	deadline := time.Now().Add(p.s.outage)
	for {
		pctx, cancel := context.WithTimeout(ctx, resumeProbe)
		rp, err := findResume(pctx, p.st, p.r)
		cancel()
		if err == nil {
			return p.republish(ctx, rp, cause)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (then: %v)", cause, err)
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// resumeProbe bounds each question of recover to the server. A request
// sent as the connection dropped is lost with it, and waiting out the
// client's 5 s API timeout for it cost 5 s per cut sender link (bench
// resume row); a retry after a second costs one.
const resumeProbe = time.Second

func (p *publisher) republish(ctx context.Context, rp resumePoint, cause error) error {
	if rp.idx == p.recoveredAt {
		// The last republish from here did not get further: publishes from
		// before the trouble may still be landing. Give them a moment, and
		// after a few tries leave it to a fresh btrfs send rather than loop.
		if p.retries++; p.retries > 3 {
			return fmt.Errorf("%w (republishing from chunk %d did not help)", cause, rp.idx)
		}
		time.Sleep(time.Second)
	} else {
		p.recoveredAt, p.retries = rp.idx, 0
	}
	for len(p.inflight) > 0 && p.inflight[0].j.idx < rp.idx {
		p.confirmed(p.inflight[0].j) // stored before the trouble
		p.inflight = p.inflight[1:]
	}
	if rp.ended || p.chunks != rp.idx {
		return fmt.Errorf("%w (the stream ends at chunk %d, %d are confirmed)", cause, rp.idx, p.chunks)
	}
	again := p.inflight
	p.inflight = nil
	p.after = seqAt{rp.idx, rp.seq}
	for _, o := range again {
		// A fresh message: the client keeps per-publish state (the ack
		// inbox) in the one it sent before.
		m := nats.NewMsg(o.j.msg.Subject)
		for k, v := range o.j.msg.Header {
			if !strings.HasPrefix(k, "Nats-Expected") {
				m.Header[k] = v
			}
		}
		m.Data = o.j.msg.Data
		o.j.msg = m
		if err := p.publish(ctx, o.j); err != nil {
			return err
		}
	}
	p.log.Info("republished unconfirmed chunks", "from", rp.idx, "chunks", len(again))
	return nil
}

func (p *publisher) confirmOldest(ctx context.Context) error {
	o := p.inflight[0]
	if o.fut == nil {
		return fmt.Errorf("chunk %d of %s is not published yet", o.j.idx, p.r.ID)
	}
	select { // usually confirmed already: no timer on the chunk path
	case <-o.fut.Ok():
	default:
		if err := p.awaitAck(ctx, o); err != nil {
			return err
		}
	}
	p.inflight = p.inflight[1:]
	p.confirmed(o.j)
	return nil
}

// awaitAck waits for the server to confirm o.
func (p *publisher) awaitAck(ctx context.Context, o pending) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-o.fut.Ok():
			return nil
		case err := <-o.fut.Err():
			return fmt.Errorf("store chunk %d of %s: %w", o.j.idx, p.r.ID, err)
		case <-tick.C:
			// An ack lost with a dropped connection never comes: do not
			// wait for the publish timeout once the client reconnected.
			if p.s.NC.Stats().Reconnects != o.reconnects {
				return fmt.Errorf("store chunk %d of %s: the connection was re-established before the server confirmed it", o.j.idx, p.r.ID)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// confirmed counts a chunk the server stored and frees its buffers: the
// client wrote them to the socket before the server could confirm.
func (p *publisher) confirmed(j *job) {
	p.chunks = j.idx + 1
	p.bytes = j.off + int64(j.rawLen)
	p.wire += int64(len(j.msg.Data))
	p.s.Metrics.Sent(p.s.Job, 1, int64(j.rawLen), int64(len(j.msg.Data)))
	if j.raw != nil {
		p.s.bufs.put(j.raw) // stored raw: msg.Data is this buffer
	} else {
		p.s.bufs.put(j.msg.Data)
	}
}

// makeRoom is the back-pressure: while the stream would outgrow the window
// it asks the coordinator to drop what every target has acked, and
// otherwise waits for the slowest target. The last stored message always stays, so a restarted sender can
// see where the stream ends. The wait is bounded by the watchdog, which
// fails a target that makes no progress for the stall timeout and so
// releases the window.
func (p *publisher) makeRoom(ctx context.Context, need int64) error {
	if p.stored+need <= p.r.Window {
		return nil
	}
	for len(p.inflight) > 0 {
		if err := p.confirmOldest(ctx); err != nil {
			return err
		}
	}
	wait := 10 * time.Millisecond
	since, logged := time.Now(), time.Now()
	for {
		info, err := p.st.Info(ctx)
		if err != nil {
			return fmt.Errorf("stream of %s: %w", p.r.ID, err)
		}
		p.stored = int64(info.State.Bytes)
		if fits(p.stored, need, p.r.Window, info.State.Msgs) {
			return nil
		}
		purged, floor, slowest, err := p.s.Coord.Purge(ctx, p.r.ID, info.State.FirstSeq, info.State.LastSeq)
		if err != nil {
			return err
		}
		if purged {
			wait, since = 10*time.Millisecond, time.Now()
			continue
		}
		if time.Since(logged) >= windowLog {
			logged = time.Now()
			p.log.Info("window full: waiting for the slowest target", "target", slowest, "ack_floor", floor,
				"since", since.Format(time.RFC3339))
		}
		p.report(ctx, false)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// trimEvery is how much the stream may grow between two trims of what
// every target has acked, while the window still has room. Purging only
// when the window was full kept a whole window (1 GiB by default) in the
// server's store, and the caches of its blocks in the server's memory:
// 1 GiB of random data through a standalone server peaked at 1.25 GB RSS
// and cost the server 16 CPU-s.
const trimEvery = 32 << 20

// trimAbove is the stream size below which nothing is trimmed: a small
// replication (the usual incremental) keeps its start, so a target that
// must start over (a receiver that fell back to btrfs receive, or lost its
// partial) replays it from the stream instead of a new btrfs send.
const trimAbove = 128 << 20

// trim drops from the stream what every target has acked, once the stream
// has held more than trimAbove, every trimEvery it grows. The window stays
// what a slow or absent target may hold back; targets that keep up no
// longer fill it. A failed trim is only logged: makeRoom purges when the
// window is full.
//
// Once the first trim dropped the stream's start there is nothing left to
// keep, so the later ones no longer wait for the stream to outgrow
// trimAbove again: they did, and a server held up to 160 MiB of recent
// blocks cached in memory for each stream (1 GiB of random data through
// snapjet server, whose heap limit then made the collector run 126 times
// and doubled its CPU).
//
// A trim is an optimisation, so it never holds the publisher long: it is
// skipped while the connection is down (the next publish starts the
// recovery), bounded by trimTimeout (a site that cannot be read), and
// after a failure the next one waits trimBackoff.
func (p *publisher) trim(ctx context.Context) {
	var due bool
	due, p.trimming = trimDue(p.stored, p.sinceTrim, p.trimming)
	if !due || !p.s.NC.IsConnected() || time.Now().Before(p.trimAfter) {
		return
	}
	p.sinceTrim = 0
	tctx, cancel := context.WithTimeout(ctx, trimTimeout)
	defer cancel()
	info, err := p.st.Info(tctx)
	if err == nil {
		var purged bool
		purged, _, _, err = p.s.Coord.Purge(tctx, p.r.ID, info.State.FirstSeq, info.State.LastSeq)
		if err == nil && purged {
			info, err = p.st.Info(tctx)
		}
	}
	if err != nil {
		p.trimAfter = time.Now().Add(trimBackoff)
		p.log.Warn("trim what every target acked (the window still bounds the stream)", "error", err, "next_trim", p.trimAfter.Format(time.RFC3339))
		return
	}
	p.stored = int64(info.State.Bytes)
}

// trimDue says whether a stream of stored bytes, sinceTrim of them
// published since the last trim, is due for one, and whether it is being
// trimmed from now on: trimming says it already outgrew trimAbove.
func trimDue(stored, sinceTrim int64, trimming bool) (due, nowTrimming bool) {
	nowTrimming = trimming || stored > trimAbove
	return nowTrimming && sinceTrim >= trimEvery, nowTrimming
}

// Bounds of a trim (see trim).
const (
	trimTimeout = time.Second
	trimBackoff = 30 * time.Second
)

// sampleOf is what pace needs of record r, read at the given moment, when
// the sender had stored sent chunks: the counters of the targets still
// taking part, from their latest reports.
func sampleOf(r *coordinator.Replication, at time.Time, sent int64) paceSample {
	s := paceSample{at: at, sent: sent, targets: map[string]targetCounters{}}
	for name, t := range r.Targets {
		switch {
		case t.State.Terminal():
		case t.ElapsedMs > 0:
			s.targets[name] = targetCounters{applied: t.ChunksApplied,
				busy: time.Duration(t.BusyMs) * time.Millisecond, elapsed: time.Duration(t.ElapsedMs) * time.Millisecond}
		case t.ChunksApplied > 0:
			s.mute++ // a receiver older than the pace
		}
	}
	return s
}

// fits says whether a message of need bytes may be stored now. An empty
// stream always takes the next chunk, whatever the window: a chunk larger
// than the window must still make progress.
func fits(stored, need, window int64, msgs uint64) bool {
	return stored+need <= window || msgs == 0
}

// report publishes progress to the coordinator about once a second, and
// gives auto compression the targets' counters from the record it gets
// back.
func (p *publisher) report(ctx context.Context, force bool) {
	if !force && time.Since(p.lastReport) < time.Second {
		return
	}
	p.lastReport = time.Now()
	p.s.Metrics.StreamUse(p.s.Job, p.stored, p.r.Window)
	r, err := p.s.Coord.Progress(ctx, p.r.ID, p.r.Attempt, p.chunks, p.bytes, p.wire)
	if err != nil {
		p.log.Warn("record progress", "error", err)
	} else {
		p.comp.targets(sampleOf(r, p.lastReport, p.chunks))
	}
	if p.s.OnProgress != nil {
		p.s.OnProgress(Progress{ID: p.r.ID, Bytes: p.bytes, Wire: p.wire, Estimated: p.r.EstimatedBytes})
	}
}
