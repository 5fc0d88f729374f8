package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/streams"
)

// effect is what must happen on JetStream after a report changed a record.
type effect int

const (
	noEffect      effect = iota
	resetConsumer        // replay the stream to this target from its start
	dropConsumer         // the target is out of this run
	restart              // discard the attempt (and maybe the parent)
	restartFull
)

// judge applies a receiver's report to the record and decides the answer.
// It is pure: startStored says whether the stream still holds the first
// chunk of the current attempt (only read for EvRewind).
func judge(r *Replication, rep streams.Report, startStored bool) (streams.Verdict, effect, string, error) {
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
		t.ChunksApplied, t.BytesApplied, t.RedeliveredChunks = rep.ChunksApplied, rep.BytesApplied, rep.Redelivered
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
		if startStored {
			return v, resetConsumer, "", r.setTarget(rep.Target, TPending, "")
		}
		v.Action = streams.ActStale
		return v, restart, fmt.Sprintf("target %s lost its partial receive and the stream no longer holds the start", rep.Target), nil

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
			return v, restart, fmt.Sprintf("target %s: %s", rep.Target, why), nil
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
		if rep.Permanent {
			if err := r.setTarget(rep.Target, TFailed, rep.Reason); err != nil {
				return v, noEffect, "", err
			}
			v.Action = streams.ActDiscard
			return v, dropConsumer, "", r.settle()
		}
		if err := r.setTarget(rep.Target, TDiscarded, rep.Reason); err != nil {
			return v, noEffect, "", err
		}
		v.Action = streams.ActDiscard
		if rep.ParentMissing {
			return v, restartFull, fmt.Sprintf("target %s: %s", rep.Target, rep.Reason), nil
		}
		return v, restart, fmt.Sprintf("target %s: %s", rep.Target, rep.Reason), nil
	}
	return v, noEffect, "", fmt.Errorf("unknown event %q", rep.Event)
}

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

func (c *Coordinator) handle(ctx context.Context, id string, data []byte) (streams.Verdict, error) {
	var rep streams.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		return streams.Verdict{}, fmt.Errorf("decode report: %w", err)
	}
	startStored := rep.Event == streams.EvRewind && c.startStored(ctx, id, rep.Attempt)
	var end *streams.Message
	if rep.Event == streams.EvReceived {
		end = c.storedEnd(ctx, id, rep.Attempt)
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
		v, eff, reason, err = judge(r, rep, startStored)
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
		s, err := c.js.Stream(ctx, streams.StreamName(id))
		if err != nil {
			return v, fmt.Errorf("replay to %s: %w", rep.Target, err)
		}
		return v, streams.ResetConsumer(ctx, s, rep.Target, rep.FromSeq)
	case dropConsumer:
		s, err := c.js.Stream(ctx, streams.StreamName(id))
		if err == nil {
			err = s.DeleteConsumer(ctx, streams.ConsumerName(rep.Target))
		}
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
			log.Warn("drop consumer", "error", err)
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

// storedEnd returns the end marker of attempt if the stream holds it.
func (c *Coordinator) storedEnd(ctx context.Context, id string, attempt int) *streams.Message {
	s, err := c.js.Stream(ctx, streams.StreamName(id))
	if err != nil {
		return nil
	}
	m, err := s.GetLastMsgForSubject(ctx, streams.Subject(id))
	if err != nil {
		return nil
	}
	h, err := streams.DecodeHeader(m.Header)
	if err != nil || h.Kind != streams.KindEnd || h.Attempt != attempt {
		return nil
	}
	return &h
}

// startStored reports whether the stream still holds chunk 0 of attempt.
func (c *Coordinator) startStored(ctx context.Context, id string, attempt int) bool {
	s, err := c.js.Stream(ctx, streams.StreamName(id))
	if err != nil {
		return false
	}
	info, err := s.Info(ctx)
	if err != nil || info.State.Msgs == 0 {
		return false
	}
	m, err := s.GetMsg(ctx, info.State.FirstSeq)
	if err != nil {
		return false
	}
	h, err := streams.DecodeHeader(m.Header)
	return err == nil && h.Attempt == attempt && h.Kind == streams.KindChunk && h.Index == 0
}
