package streams

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// racyStream is a stream whose consumer creates answer from a script, as
// nats-server does when its delete and create of one consumer name race.
// Only the two methods ResetConsumer uses are implemented.
type racyStream struct {
	jetstream.Stream
	answers []createAnswer
	creates int
	deletes int
}

type createAnswer struct {
	err       error
	delivered uint64 // the new consumer's delivered count
}

func (s *racyStream) DeleteConsumer(context.Context, string) error {
	s.deletes++
	return nil
}

func (s *racyStream) CreateOrUpdateConsumer(_ context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	a := s.answers[min(s.creates, len(s.answers)-1)]
	s.creates++
	if a.err != nil {
		return nil, a.err
	}
	return &createdConsumer{info: &jetstream.ConsumerInfo{Config: cfg,
		Delivered: jetstream.SequenceInfo{Consumer: a.delivered}}}, nil
}

type createdConsumer struct {
	jetstream.Consumer
	info *jetstream.ConsumerInfo
}

func (c *createdConsumer) CachedInfo() *jetstream.ConsumerInfo { return c.info }

func TestResetConsumerTriesAgainOnlyWhereTheServerRaced(t *testing.T) {
	raced := &jetstream.APIError{Code: 500, ErrorCode: jetstream.JSErrCodeConsumerCreate,
		Description: "rename o.dat.tmp o.dat: no such file or directory"}
	limit := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeMaximumConsumersLimit,
		Description: "maximum consumers limit reached"}
	fresh := createAnswer{}
	for _, tc := range []struct {
		name    string
		answers []createAnswer
		creates int
		wantErr error
	}{
		{"created at once", []createAnswer{fresh}, 1, nil},
		{"the create failed twice on the race", []createAnswer{{err: raced}, {err: raced}, fresh}, 3, nil},
		{"the new consumer took the old one's state", []createAnswer{{delivered: 7}, fresh}, 2, nil},
		{"the race every time: bounded", []createAnswer{{err: raced}}, recreateTries, raced},
		{"another refusal: at once", []createAnswer{{err: limit}}, 1, limit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &racyStream{answers: tc.answers}
			err := ResetConsumer(context.Background(), s, "nas", 4)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Errorf("ResetConsumer = %v, want %v", err, tc.wantErr)
			}
			if s.creates != tc.creates || s.deletes != tc.creates {
				t.Errorf("%d deletes and %d creates, want %d of each", s.deletes, s.creates, tc.creates)
			}
		})
	}
}
