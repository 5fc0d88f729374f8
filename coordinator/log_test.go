package coordinator_test

import (
	"context"
	"log/slog"
	"maps"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/coordinator/coordtest"
	"github.com/snapjet/snapjet/streams"
)

// logUnderTest is a Log with what the sender and the receivers do to it:
// store a message, and ack everything up to a sequence on a consumer.
type logUnderTest struct {
	coordinator.Log
	append func(t *testing.T, id string, m streams.Message)
	ack    func(t *testing.T, id, target string, seq uint64)
}

// TestLogConformance holds every Log implementation to the contract in its
// doc comment: the JetStream adapter and the in-memory log that unit tests
// use.
func TestLogConformance(t *testing.T) {
	impls := map[string]func(t *testing.T) logUnderTest{
		"memory": func(*testing.T) logUnderTest {
			l := coordtest.NewLog()
			return logUnderTest{Log: l,
				append: func(_ *testing.T, id string, m streams.Message) { l.Append(id, m) },
				ack:    func(_ *testing.T, id, target string, seq uint64) { l.Ack(id, target, seq) },
			}
		},
		"jetstream": func(t *testing.T) logUnderTest {
			js := testBroker(t).JS
			codec, err := streams.NewCodec()
			if err != nil {
				t.Fatal(err)
			}
			return logUnderTest{Log: coordinator.NewStreamLog(js, slog.New(slog.DiscardHandler)),
				append: func(t *testing.T, id string, m streams.Message) {
					msg := streams.EncodeEnd(id, m.Attempt, m.Chunks, m.TotalBytes, m.Digest)
					if m.Kind == streams.KindChunk {
						msg = codec.EncodeChunk(id, m.Attempt, m.Index, m.Offset, []byte("chunk"), xxhash.Sum64([]byte("chunk")), streams.LevelNone, nil)
					}
					if _, err := js.PublishMsg(t.Context(), msg); err != nil {
						t.Fatal(err)
					}
				},
				ack: func(t *testing.T, id, target string, seq uint64) { jsAck(t, js, id, target, seq) },
			}
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) { logContract(t, open(t)) })
	}
}

// jsAck fetches target's messages up to seq and acks seq, which acks all
// before it (AckAll), as a receiver does.
func jsAck(t *testing.T, js jetstream.JetStream, id, target string, seq uint64) {
	t.Helper()
	cons, err := js.Consumer(t.Context(), streams.StreamName(id), streams.ConsumerName(target))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(int(seq), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if meta, err := m.Metadata(); err == nil && meta.Sequence.Stream == seq {
			if err := m.DoubleAck(t.Context()); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("target %s was not delivered sequence %d", target, seq)
}

func logContract(t *testing.T, l logUnderTest) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dests := func(names ...string) []coordinator.Dest {
		var out []coordinator.Dest
		for _, n := range names {
			out = append(out, coordinator.Dest{Target: n})
		}
		return out
	}
	all := dests("a", "b", "c")
	floors := func(when string, want map[string]uint64) {
		t.Helper()
		got, err := l.AckFloors(ctx, "r1", all)
		if err != nil || !maps.Equal(got, want) {
			t.Fatalf("ack floors %s: %v (%v), want %v", when, got, err, want)
		}
	}
	head := func(when string, wantFirst, wantLast *streams.Message) {
		t.Helper()
		same := func(got, want *streams.Message) bool {
			return got == nil && want == nil || got != nil && want != nil && got.Kind == want.Kind &&
				got.Attempt == want.Attempt && got.Index == want.Index && got.Chunks == want.Chunks && got.Digest == want.Digest
		}
		first, ferr := l.First(ctx, "r1")
		last, lerr := l.Last(ctx, "r1")
		if ferr != nil || lerr != nil || !same(first, wantFirst) || !same(last, wantLast) {
			t.Fatalf("%s: first %+v (%v) last %+v (%v), want %+v and %+v", when, first, ferr, last, lerr, wantFirst, wantLast)
		}
	}

	// A missing stream is nothing there: reads and removals succeed.
	head("a missing stream", nil, nil)
	floors("of a missing stream", map[string]uint64{})
	for what, err := range map[string]error{
		"PurgeTo":      l.PurgeTo(ctx, "r1", 5, all),
		"Reset":        l.Reset(ctx, "r1", dests("a")),
		"DropConsumer": l.DropConsumer(ctx, "r1", dests("a")[0]),
		"Delete":       l.Delete(ctx, "r1", all),
	} {
		if err != nil {
			t.Errorf("%s of a missing stream: %v", what, err)
		}
	}
	if err := l.ResetConsumer(ctx, "r1", dests("a")[0], 0); err == nil {
		t.Error("ResetConsumer of a missing stream succeeded")
	}
	if ids, err := l.List(ctx, ""); err != nil || len(ids) != 0 {
		t.Fatalf("List without streams: %v (%v)", ids, err)
	}

	if err := l.Open(ctx, "r1", 1<<20, 64<<10, dests("a", "b")); err != nil {
		t.Fatal(err)
	}
	if ids, err := l.List(ctx, ""); err != nil || len(ids) != 1 || ids[0] != "r1" {
		t.Fatalf("List: %v (%v), want r1", ids, err)
	}
	head("an empty stream", nil, nil)
	floors("of new consumers", map[string]uint64{"a": 0, "b": 0})

	chunk := func(i int64) *streams.Message {
		return &streams.Message{Kind: streams.KindChunk, Repl: "r1", Attempt: 1, Index: i, Offset: 5 * i}
	}
	end := &streams.Message{Kind: streams.KindEnd, Repl: "r1", Attempt: 1, Chunks: 4, TotalBytes: 20, Digest: "sha256:00"}
	for i := range int64(4) {
		l.append(t, "r1", *chunk(i)) // sequences 1 to 4
	}
	l.append(t, "r1", *end) // 5
	head("a stored attempt", chunk(0), end)

	l.ack(t, "r1", "a", 4)
	l.ack(t, "r1", "b", 2)
	floors("after acks", map[string]uint64{"a": 4, "b": 2})
	// Open again leaves existing consumers as they are.
	if err := l.Open(ctx, "r1", 1<<20, 64<<10, all); err != nil {
		t.Fatal(err)
	}
	floors("after a second Open", map[string]uint64{"a": 4, "b": 2, "c": 0})

	if err := l.PurgeTo(ctx, "r1", 3, all); err != nil {
		t.Fatal(err)
	}
	head("after PurgeTo 3", chunk(2), end)
	floors("after PurgeTo 3", map[string]uint64{"a": 4, "b": 2, "c": 2})

	if err := l.ResetConsumer(ctx, "r1", dests("b")[0], 4); err != nil {
		t.Fatal(err)
	}
	if err := l.ResetConsumer(ctx, "r1", dests("a")[0], 0); err != nil {
		t.Fatal(err)
	}
	floors("after resets to 4 and to the start", map[string]uint64{"a": 2, "b": 3, "c": 2})

	for range 2 { // dropping twice is no error
		if err := l.DropConsumer(ctx, "r1", dests("c")[0]); err != nil {
			t.Fatal(err)
		}
	}
	floors("after DropConsumer", map[string]uint64{"a": 2, "b": 3})

	if err := l.Reset(ctx, "r1", dests("a")); err != nil {
		t.Fatal(err)
	}
	head("after Reset", nil, nil)
	floors("after Reset", map[string]uint64{"a": 5, "b": 5})
	next := chunk(0)
	next.Attempt = 2
	l.append(t, "r1", *next) // the next attempt's first chunk: sequence 6
	head("the next attempt", next, next)

	if err := l.Delete(ctx, "r1", all); err != nil {
		t.Fatal(err)
	}
	head("after Delete", nil, nil)
	if ids, err := l.List(ctx, ""); err != nil || len(ids) != 0 {
		t.Fatalf("List after Delete: %v (%v)", ids, err)
	}
}
