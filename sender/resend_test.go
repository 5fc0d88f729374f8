package sender

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/streams"
)

// A sent attempt whose stream is gone (replicate keeps it in memory, and a
// killed replicate loses it) is sent again, same attempt, from the source:
// the stream ends with the same end marker, and the target's consumer is
// there again for its receiver.
func TestSentAttemptWhoseStreamIsGoneIsSentAgain(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: t.Name(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	coord, err := coordinator.New(ctx, b.NC, b.JS, log, coordinator.StreamsInMemory(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = coord.Close() })
	codec, err := streams.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	s := &Sender{NC: b.NC, JS: b.JS, Coord: coord, Log: log, Streams: &memSource{data: bytes.Repeat([]byte("snapjet "), 1000)},
		codec: codec, compress: "fastest", outage: time.Minute, limit: newWireLimiter(0)}
	r := &coordinator.Replication{ID: "r1", Source: "/src", Snapshot: "/src/.snapjet/s.1", SnapshotName: "s.1",
		SnapshotUUID: "0b4fd3a2-52c8-7d4e-a2f0-3c1d44e7a9b1", ChunkSize: 1024, Window: 1 << 20,
		Targets: map[string]*coordinator.Target{"nas": {State: coordinator.TPending}}}
	if err := coord.Create(ctx, r); err != nil {
		t.Fatal(err)
	}
	sent := func(what string) *coordinator.Replication {
		t.Helper()
		if _, err := s.step(ctx, "r1"); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		r, _, err := coord.Store().Get(ctx, "r1")
		if err != nil {
			t.Fatal(err)
		}
		if r.State != coordinator.Sent || r.Attempt != 1 {
			t.Fatalf("%s: %s attempt %d, want sent attempt 1", what, r.State, r.Attempt)
		}
		st, err := b.JS.Stream(ctx, streams.StreamName("r1"))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if _, err := st.Consumer(ctx, streams.ConsumerName("nas")); err != nil {
			t.Fatalf("%s: consumer of nas: %v", what, err)
		}
		return r
	}
	first := sent("first send")
	if err := b.JS.DeleteStream(ctx, streams.StreamName("r1")); err != nil {
		t.Fatal(err)
	}
	again := sent("after the stream was lost")
	if again.TotalChunks != first.TotalChunks || again.Digest != first.Digest {
		t.Errorf("sent again: %d chunks, digest %s; first: %d, %s", again.TotalChunks, again.Digest, first.TotalChunks, first.Digest)
	}
}
