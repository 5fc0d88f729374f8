package sender

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// publisher stores chunks in order with asynchronous, de-duplicated
// publishes, and keeps the stream within the replication's window.
type publisher struct {
	s   *Sender
	r   *coordinator.Replication
	st  jetstream.Stream
	log *slog.Logger

	chunks, bytes, wire int64 // confirmed by the server
	stored              int64 // estimate of the stream's size
	inflight            []pending
	lastReport          time.Time
}

type pending struct {
	fut jetstream.PubAckFuture
	j   *job
}

// publishOpts makes the server refuse a chunk unless its predecessor is the
// last message stored: a publish lost in a server restart while later ones
// were replayed from the client's reconnect buffer can never leave a hole.
func publishOpts(r *coordinator.Replication, idx int64) []jetstream.PublishOpt {
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(streams.StreamName(r.ID))}
	if idx > 0 {
		opts = append(opts, jetstream.WithExpectLastMsgID(streams.MsgID(r.ID, r.Attempt, idx-1)))
	}
	return opts
}

// msgOverhead approximates the stored size of a chunk's headers.
const msgOverhead = 400

func (p *publisher) run(ctx context.Context, order <-chan *job) error {
	info, err := p.st.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream of %s: %w", p.r.ID, err)
	}
	p.stored = int64(info.State.Bytes)
	for j := range order {
		select {
		case <-j.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := p.makeRoom(ctx, int64(len(j.msg.Data))+msgOverhead); err != nil {
			return err
		}
		fut, err := p.s.JS.PublishMsgAsync(j.msg, publishOpts(p.r, j.idx)...)
		if err != nil {
			return fmt.Errorf("publish chunk %d of %s: %w", j.idx, p.r.ID, err)
		}
		p.inflight = append(p.inflight, pending{fut, j})
		p.stored += int64(len(j.msg.Data)) + msgOverhead
		for len(p.inflight) > maxInflight {
			if err := p.confirmOldest(ctx); err != nil {
				return err
			}
		}
		p.report(ctx, false)
	}
	for len(p.inflight) > 0 {
		if err := p.confirmOldest(ctx); err != nil {
			return err
		}
	}
	p.report(ctx, true)
	return nil
}

func (p *publisher) confirmOldest(ctx context.Context) error {
	o := p.inflight[0]
	select {
	case <-o.fut.Ok():
	case err := <-o.fut.Err():
		return fmt.Errorf("store chunk %d of %s: %w", o.j.idx, p.r.ID, err)
	case <-ctx.Done():
		return ctx.Err()
	}
	p.inflight = p.inflight[1:]
	p.chunks = o.j.idx + 1
	p.bytes = o.j.off + int64(len(o.j.raw))
	p.wire += int64(len(o.j.msg.Data))
	// The client wrote both buffers to the socket before the server could
	// confirm, so they are free again.
	if len(o.j.msg.Data) > 0 && len(o.j.raw) > 0 && &o.j.msg.Data[0] != &o.j.raw[0] {
		p.s.bufs.put(o.j.msg.Data)
	}
	p.s.bufs.put(o.j.raw)
	return nil
}

// makeRoom is the back-pressure: while the stream would outgrow the window
// it drops what every target has acked, and otherwise waits for the slowest
// target. The last stored message always stays, so a restarted sender can
// see where the stream ends.
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
	var (
		stuckAt    uint64
		stuckSince time.Time
	)
	for {
		info, err := p.st.Info(ctx)
		if err != nil {
			return fmt.Errorf("stream of %s: %w", p.r.ID, err)
		}
		p.stored = int64(info.State.Bytes)
		if p.stored+need <= p.r.Window || info.State.Msgs == 0 {
			return nil
		}
		floor, slowest, err := p.ackFloor(ctx, info.State.LastSeq)
		if err != nil {
			return err
		}
		if keep := min(floor+1, info.State.LastSeq); keep > info.State.FirstSeq {
			if err := p.st.Purge(ctx, jetstream.WithPurgeSequence(keep)); err != nil {
				return fmt.Errorf("drop acked chunks of %s: %w", p.r.ID, err)
			}
			wait = 10 * time.Millisecond
			continue
		}
		if floor != stuckAt || stuckSince.IsZero() {
			stuckAt, stuckSince = floor, time.Now()
		} else if time.Since(stuckSince) > p.s.StallTimeout && slowest != "" {
			// One silent target must not hold back the others for ever.
			reason := fmt.Sprintf("acked nothing for %v while the window was full: is its receiver running? (the next run retries it)", p.s.StallTimeout)
			p.log.Warn("dropping a stalled target from this run", "target", slowest, "reason", reason)
			if err := p.s.Coord.FailTarget(ctx, p.r.ID, p.r.Attempt, slowest, reason); err != nil {
				return err
			}
			stuckSince = time.Time{}
			continue
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

// ackFloor is the highest stream sequence that every consumer has acked,
// and the target whose consumer holds it there.
func (p *publisher) ackFloor(ctx context.Context, last uint64) (uint64, string, error) {
	floor, slowest := last, ""
	lister := p.st.ListConsumers(ctx)
	for ci := range lister.Info() {
		if ci.AckFloor.Stream < floor {
			floor, slowest = ci.AckFloor.Stream, streams.TargetOf(ci.Name)
		}
	}
	if err := lister.Err(); err != nil {
		return 0, "", fmt.Errorf("consumers of %s: %w", p.r.ID, err)
	}
	return floor, slowest, nil
}

// report publishes progress to the coordinator about once a second.
func (p *publisher) report(ctx context.Context, force bool) {
	if !force && time.Since(p.lastReport) < time.Second {
		return
	}
	p.lastReport = time.Now()
	if err := p.s.Coord.Progress(ctx, p.r.ID, p.r.Attempt, p.chunks, p.bytes, p.wire); err != nil {
		p.log.Warn("record progress", "error", err)
	}
	if p.s.OnProgress != nil {
		p.s.OnProgress(Progress{ID: p.r.ID, Bytes: p.bytes, Wire: p.wire, Estimated: p.r.EstimatedBytes})
	}
}
