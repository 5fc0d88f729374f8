package coordinator

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/snapjet/snapjet/streams"
)

// effect is what must happen on JetStream after a report changed a record.
type effect int

const (
	noEffect      effect = iota
	resetConsumer        // replay the stream to this target (from Report.FromSeq, or its start)
	dropConsumer         // the target is out of this record
	restart              // discard the attempt (the target was the only one left)
	restartFull          // the same without the incremental parent
	split                // the target goes on in a record and stream of its own
	splitFull            // the same, as a full send
)

// judge applies a receiver's report to the record and decides the answer.
// It is pure: startStored says whether the stream still holds the first
// chunk of the current attempt, budget is the attempts a target may spend
// in one run. A target's trouble costs only that target: it is replayed,
// moved to a stream of its own, or failed alone; the others carry on.
func judge(r *Replication, rep streams.Report, startStored bool, budget int) (streams.Verdict, effect, string, error) {
	v := streams.Verdict{Action: streams.ActOK, Attempt: r.Attempt}
	t, ok := r.Targets[rep.Target]
	if !ok {
		return v, noEffect, "", fmt.Errorf("replication %s has no target %q", r.ID, rep.Target)
	}
	if rep.Attempt != r.Attempt || r.State.Terminal() || t.State.Terminal() && rep.Event != streams.EvCommitted {
		v.Action = streams.ActStale
		return v, noEffect, "", nil
	}
	counters := func() {
		// Counters only grow within an attempt: a late progress report
		// must not lower them.
		t.ChunksApplied = max(t.ChunksApplied, rep.ChunksApplied)
		t.BytesApplied = max(t.BytesApplied, rep.BytesApplied)
		t.RedeliveredChunks = max(t.RedeliveredChunks, rep.Redelivered)
		// A new receiver process counts its time from zero again.
		t.BusyMs, t.ElapsedMs = rep.BusyMs, rep.ElapsedMs
	}
	switch rep.Event {
	case streams.EvProgress:
		counters()
		if t.State == TPending {
			return v, noEffect, "", r.setTarget(rep.Target, TReceiving, "")
		}
		return v, noEffect, "", nil

	case streams.EvRewind:
		counters()
		if rep.FromSeq > 0 {
			return v, resetConsumer, "", nil // a resumed partial: carry on from there
		}
		eff, reason, err := trouble(r, rep.Target, "lost its partial receive", startStored, false, budget)
		if eff != resetConsumer {
			v.Action = streams.ActStale
		}
		return v, eff, reason, err

	case streams.EvReceived:
		counters()
		if err := r.setTarget(rep.Target, TReceived, ""); err != nil {
			return v, noEffect, "", err
		}
		if why := verify(r, rep); why != "" {
			v.Action, v.Reason = streams.ActDiscard, why
			if err := r.setTarget(rep.Target, TDiscarded, why); err != nil {
				return v, noEffect, "", err
			}
			// The stream as stored did not give the source snapshot: a
			// replay would give the same.
			eff, reason, err := trouble(r, rep.Target, why, false, false, budget)
			return v, eff, reason, err
		}
		v.Action = streams.ActCommit
		return v, noEffect, "", nil

	case streams.EvCommitted:
		if t.State == TCommitted {
			return v, noEffect, "", nil
		}
		t.Path = rep.Path
		if err := r.setTarget(rep.Target, TCommitted, ""); err != nil {
			return v, noEffect, "", err
		}
		return v, dropConsumer, "", r.settle()

	case streams.EvFailed:
		counters()
		v.Action = streams.ActDiscard
		if rep.Permanent {
			if err := r.setTarget(rep.Target, TFailed, rep.Reason); err != nil {
				return v, noEffect, "", err
			}
			return v, dropConsumer, "", r.settle()
		}
		if err := r.setTarget(rep.Target, TDiscarded, rep.Reason); err != nil {
			return v, noEffect, "", err
		}
		eff, reason, err := trouble(r, rep.Target, rep.Reason, startStored && !rep.StreamBad, rep.ParentMissing, budget)
		if eff == resetConsumer {
			v.Action = streams.ActReplay
		}
		return v, eff, reason, err
	}
	return v, noEffect, "", fmt.Errorf("unknown event %q", rep.Event)
}

// trouble decides what a temporary failure of one target costs, and costs
// it only that target: past its attempt budget it fails; it is replayed
// from the stream's start when replay can help (the stream still holds its
// start and is not itself bad: the source is not read again); otherwise,
// alone it restarts the attempt, and with others active it moves to a
// stream of its own. full means the incremental parent is missing on the
// target.
func trouble(r *Replication, name, why string, replay, full bool, budget int) (effect, string, error) {
	t := r.Targets[name]
	reason := fmt.Sprintf("target %s: %s", name, why)
	if t.Attempts >= budget {
		if err := r.setTarget(name, TFailed, fmt.Sprintf("gave up after %d attempts: %s", t.Attempts, why)); err != nil {
			return noEffect, "", err
		}
		return dropConsumer, reason, r.settle()
	}
	alone := len(r.Active()) == 1
	switch {
	case replay && !full:
		t.Attempts++
		t.resetCounters()
		return resetConsumer, reason, r.setTarget(name, TPending, "")
	case alone && full:
		return restartFull, reason, nil
	case alone:
		return restart, reason, nil
	}
	t.MovedTo = SplitID(r.ID, name)
	if err := r.setTarget(name, TMoved, why); err != nil {
		return noEffect, "", err
	}
	if full {
		return splitFull, reason, nil
	}
	return split, reason, nil
}

// SplitID names the record a target moves to when it leaves record id.
func SplitID(id, target string) string { return id + "_" + target }

// verify is the commit rule: the whole stream arrived unchanged and the
// kernel says the subvolume is the read-only copy of the source snapshot.
func verify(r *Replication, rep streams.Report) string {
	switch {
	case r.State != Sent:
		return "stream reported complete before the sender stored its end marker"
	case rep.Digest != r.Digest:
		return fmt.Sprintf("stream digest %s differs from the sender's %s", rep.Digest, r.Digest)
	case rep.ChunksApplied != r.TotalChunks || rep.BytesApplied != r.TotalBytes:
		return fmt.Sprintf("applied %d chunks / %d bytes, the sender sent %d / %d", rep.ChunksApplied, rep.BytesApplied, r.TotalChunks, r.TotalBytes)
	case !rep.ReadOnly:
		return "received subvolume is not read-only (btrfs receive did not finish)"
	case rep.ReceivedUUID != r.SnapshotUUID:
		return fmt.Sprintf("received UUID %q is not the source snapshot's %s", rep.ReceivedUUID, r.SnapshotUUID)
	}
	return ""
}

// handle judges one report that arrived on the subject of target.
func (c *Coordinator) handle(ctx context.Context, id, target string, data []byte) (streams.Verdict, error) {
	var rep streams.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return streams.Verdict{}, fmt.Errorf("decode report: %w", err)
	}
	if rep.Target != target {
		// Permissions restrict who may publish on a target's subject; a
		// body that names another target is a forgery.
		return streams.Verdict{}, fmt.Errorf("report for target %q arrived on the subject of target %q: refused", rep.Target, target)
	}
	// What the stream holds is read before the record is judged; a read
	// error is temporary (the receiver asks again), never a verdict.
	var (
		startStored bool
		end         *streams.Message
		err         error
	)
	if mayTrouble(rep) {
		if startStored, err = c.startStored(ctx, id, rep.Attempt); err != nil {
			return streams.Verdict{}, err
		}
	}
	if rep.Event == streams.EvReceived {
		if end, err = c.storedEnd(ctx, id, rep.Attempt); err != nil {
			return streams.Verdict{}, err
		}
	}
	var (
		v      streams.Verdict
		eff    effect
		reason string
	)
	r, err := c.update(ctx, id, func(r *Replication) error {
		if end != nil && r.State == Sending {
			// The receiver saw the end marker before the sender reported it.
			if err := markSent(r, end.Attempt, end.Chunks, end.TotalBytes, r.WireBytes, end.Digest); err != nil {
				return err
			}
		}
		var err error
		v, eff, reason, err = judge(r, rep, startStored, c.MaxAttempts)
		return err
	})
	if err != nil {
		return v, err
	}
	log := c.log.With("replication", id, "target", rep.Target, "attempt", rep.Attempt)
	if rep.Event != streams.EvProgress {
		log.Info("receiver report", "event", rep.Event, "verdict", v.Action, "reason", v.Reason+rep.Reason)
	}
	switch eff {
	case resetConsumer:
		if err := c.stream.ResetConsumer(ctx, id, r.dest(rep.Target), rep.FromSeq); err != nil {
			return v, fmt.Errorf("replay to %s: %w", rep.Target, err)
		}
	case dropConsumer:
		c.dropConsumer(ctx, id, r.dest(rep.Target))
	case split, splitFull:
		c.dropConsumer(ctx, id, r.dest(rep.Target))
		log.Warn("target moves to a stream of its own; the others carry on", "to", r.Targets[rep.Target].MovedTo, "reason", reason, "full", eff == splitFull)
		if _, err := c.Split(ctx, r, rep.Target, eff == splitFull); err != nil {
			return v, err
		}
	case restart, restartFull:
		r, err = c.Restart(ctx, id, rep.Attempt, reason, eff == restartFull)
		if err != nil {
			return v, err
		}
		v.Attempt = r.Attempt
	}
	return v, nil
}

// mayTrouble says whether judging rep may need to know if the stream still
// holds its start.
func mayTrouble(rep streams.Report) bool {
	switch rep.Event {
	case streams.EvRewind:
		return rep.FromSeq == 0
	case streams.EvFailed:
		return !rep.Permanent && !rep.StreamBad
	}
	return false
}

// dropConsumer deletes d's consumer so that it holds nothing back.
func (c *Coordinator) dropConsumer(ctx context.Context, id string, d Dest) {
	if err := c.stream.DropConsumer(ctx, id, d); err != nil {
		c.log.Warn("drop consumer", "replication", id, "target", d.Target, "site", d.Site, "error", err)
	}
}

// storedEnd returns the end marker of attempt if the stream holds it; nil
// when it does not, an error when the stream cannot be read now.
func (c *Coordinator) storedEnd(ctx context.Context, id string, attempt int) (*streams.Message, error) {
	h, err := c.stream.Last(ctx, id)
	if err != nil || h == nil || h.Kind != streams.KindEnd || h.Attempt != attempt {
		return nil, err
	}
	return h, nil
}

// startStored reports whether the stream still holds chunk 0 of attempt;
// an error when the stream cannot be read now.
func (c *Coordinator) startStored(ctx context.Context, id string, attempt int) (bool, error) {
	h, err := c.stream.First(ctx, id)
	if err != nil || h == nil {
		return false, err
	}
	return h.Attempt == attempt && h.Kind == streams.KindChunk && h.Index == 0, nil
}
