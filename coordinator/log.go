package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/streams"
)

// Log is the per-replication stream as the coordinator uses it: an ordered
// log of the messages of one replication (its chunks and end marker, at
// stream sequences from 1 on) with one consumer per target. The contract,
// which log_test.go checks against every implementation (the JetStream
// adapter and the in-memory one of coordtest):
//   - Open creates the stream of id if it is missing, bounded by twice
//     window, and a consumer delivering from the first stored message for
//     each of targets that has none; an existing consumer is left as it is
//     (it may have been reset to where a resumed receiver continues).
//   - First and Last return the header of the first and the last stored
//     message; nil when there is none (a missing or empty stream, or a
//     message that is not a snapjet message).
//   - AckFloors returns each target's ack floor: the highest sequence up to
//     which its consumer acked everything. A target without a consumer is
//     absent. A purge may raise a floor to just below the first message.
//   - PurgeTo drops every message below sequence keep.
//   - Reset empties the stream for a new attempt and gives each of targets
//     a fresh consumer from the start; other consumers stay.
//   - ResetConsumer replaces target's consumer by one that delivers from
//     sequence fromSeq, or from the first stored message when fromSeq is 0.
//   - DropConsumer deletes target's consumer, which then holds nothing back.
//   - Delete deletes the stream of id; List returns the id of every stream.
//
// A missing stream is "nothing there", not an error: reads return nothing
// and removals (PurgeTo, Reset, DropConsumer, Delete) do nothing; only
// ResetConsumer, which must create something in it, fails. A stream that
// cannot be read now is an error: temporary, and never evidence that
// something is not stored.
type Log interface {
	Open(ctx context.Context, id string, window int64, targets []string) error
	First(ctx context.Context, id string) (*streams.Message, error)
	Last(ctx context.Context, id string) (*streams.Message, error)
	AckFloors(ctx context.Context, id string) (map[string]uint64, error)
	PurgeTo(ctx context.Context, id string, keep uint64) error
	Reset(ctx context.Context, id string, targets []string) error
	ResetConsumer(ctx context.Context, id, target string, fromSeq uint64) error
	DropConsumer(ctx context.Context, id, target string) error
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]string, error)
}

// StreamLog keeps each replication in a JetStream stream of its own, laid
// out by package streams: the Log adapter for JetStream.
type StreamLog struct {
	js jetstream.JetStream
}

var _ Log = (*StreamLog)(nil)

// NewStreamLog returns the Log on js.
func NewStreamLog(js jetstream.JetStream) *StreamLog { return &StreamLog{js: js} }

// stream binds the stream of id; nil without error when it is missing.
func (l *StreamLog) stream(ctx context.Context, id string) (jetstream.Stream, error) {
	s, err := l.js.Stream(ctx, streams.StreamName(id))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the stream of %s: %w", id, err)
	}
	return s, nil
}

// Open implements Log.
func (l *StreamLog) Open(ctx context.Context, id string, window int64, targets []string) error {
	s, err := streams.EnsureStream(ctx, l.js, id, window)
	if err != nil {
		return err
	}
	for _, name := range targets {
		_, err := s.Consumer(ctx, streams.ConsumerName(name))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			_, err = s.CreateConsumer(ctx, streams.ConsumerConfig(name))
		}
		if err != nil {
			return fmt.Errorf("consumer for target %s: %w", name, err)
		}
	}
	return nil
}

// First implements Log.
func (l *StreamLog) First(ctx context.Context, id string) (*streams.Message, error) {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the stream of %s: %w", id, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	m, err := s.GetMsg(ctx, info.State.FirstSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil // purged meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("read the start of the stream of %s: %w", id, err)
	}
	return header(m), nil
}

// Last implements Log.
func (l *StreamLog) Last(ctx context.Context, id string) (*streams.Message, error) {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return nil, err
	}
	m, err := s.GetLastMsgForSubject(ctx, streams.Subject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the end of the stream of %s: %w", id, err)
	}
	return header(m), nil
}

// header decodes a stored message's header; nil for a foreign message.
func header(m *jetstream.RawStreamMsg) *streams.Message {
	h, err := streams.DecodeHeader(m.Header)
	if err != nil {
		return nil
	}
	return &h
}

// AckFloors implements Log.
func (l *StreamLog) AckFloors(ctx context.Context, id string) (map[string]uint64, error) {
	floors := map[string]uint64{}
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return floors, err
	}
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		if t := streams.TargetOf(ci.Name); t != "" {
			floors[t] = ci.AckFloor.Stream
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s: %w", id, err)
	}
	return floors, nil
}

// PurgeTo implements Log.
func (l *StreamLog) PurgeTo(ctx context.Context, id string, keep uint64) error {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return err
	}
	if err := s.Purge(ctx, jetstream.WithPurgeSequence(keep)); err != nil {
		return fmt.Errorf("drop acked chunks of %s: %w", id, err)
	}
	return nil
}

// Reset implements Log.
func (l *StreamLog) Reset(ctx context.Context, id string, targets []string) error {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return err
	}
	if err := s.Purge(ctx); err != nil {
		return fmt.Errorf("purge stream of %s: %w", id, err)
	}
	for _, name := range targets {
		if err := streams.ResetConsumer(ctx, s, name, 0); err != nil {
			return err
		}
	}
	return nil
}

// ResetConsumer implements Log.
func (l *StreamLog) ResetConsumer(ctx context.Context, id, target string, fromSeq uint64) error {
	s, err := l.stream(ctx, id)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("reset consumer of %s: %w", target, jetstream.ErrStreamNotFound)
	}
	return streams.ResetConsumer(ctx, s, target, fromSeq)
}

// DropConsumer implements Log.
func (l *StreamLog) DropConsumer(ctx context.Context, id, target string) error {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return err
	}
	if err := s.DeleteConsumer(ctx, streams.ConsumerName(target)); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("drop consumer of %s: %w", target, err)
	}
	return nil
}

// Delete implements Log.
func (l *StreamLog) Delete(ctx context.Context, id string) error {
	err := l.js.DeleteStream(ctx, streams.StreamName(id))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream of %s: %w", id, err)
	}
	return nil
}

// List implements Log.
func (l *StreamLog) List(ctx context.Context) ([]string, error) {
	names := l.js.StreamNames(ctx)
	var ids []string
	for name := range names.Name() {
		if id, ok := strings.CutPrefix(name, streams.StreamName("")); ok {
			ids = append(ids, id)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list streams: %w", err)
	}
	return ids, nil
}
