package sender

import (
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/streams"
)

func TestWindowDecisions(t *testing.T) {
	fitsTests := []struct {
		name                 string
		stored, need, window int64
		msgs                 uint64
		want                 bool
	}{
		{"room left", 100, 10, 200, 3, true},
		{"exactly full", 190, 10, 200, 3, true},
		{"one byte over", 191, 10, 200, 3, false},
		{"an empty stream takes a chunk larger than the window", 0, 500, 200, 0, true},
	}
	for _, tc := range fitsTests {
		if got := fits(tc.stored, tc.need, tc.window, tc.msgs); got != tc.want {
			t.Errorf("fits %s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStoredSizeCoversWhatTheStreamStores publishes chunks with the
// sender's options into a real stream and checks that storedSize never
// counts short: the window, and the stream's byte limit, rely on it. With
// the same options a chunk after a missing one must be refused.
func TestStoredSizeCoversWhatTheStreamStores(t *testing.T) {
	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: t.Name(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	id := strings.Repeat("r", 180)
	st, err := streams.EnsureStream(t.Context(), b.JS, id, 1<<20, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	codec, err := streams.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	r := &coordinator.Replication{ID: id, Attempt: 1}
	var counted int64
	after := seqAt{0, 0} // chunk 0 of an empty stream
	for i := range int64(50) {
		msg := codec.EncodeChunk(id, 1, i, i*10, make([]byte, 10), xxhash.Sum64(make([]byte, 10)), streams.LevelDefault, nil) // compresses to almost nothing
		counted += storedSize(msg)
		if _, err := b.JS.PublishMsg(t.Context(), msg, publishOpts(r, after.last(i))...); err != nil {
			t.Fatal(err)
		}
	}
	// A chunk whose predecessor is not the stream's last message (one lost
	// in a server restart) is refused, not stored after a hole.
	hole := codec.EncodeChunk(id, 1, 51, 510, make([]byte, 10), xxhash.Sum64(make([]byte, 10)), streams.LevelDefault, nil)
	if _, err := b.JS.PublishMsg(t.Context(), hole, publishOpts(r, after.last(51))...); !wrongLastSeq(err) {
		t.Errorf("chunk 51 published after chunk 49: %v, want wrong last sequence", err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if stored := int64(info.State.Bytes); stored > counted {
		t.Errorf("the stream stores %d bytes for 50 tiny chunks, the sender counted %d", stored, counted)
	} else {
		t.Logf("stored %d bytes, counted %d", stored, counted)
	}
}

func wrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

func TestTrimDue(t *testing.T) {
	for _, tc := range []struct {
		name                  string
		stored, sinceTrim     int64
		trimming              bool
		wantDue, wantTrimming bool
	}{
		{"a small stream keeps its start", trimAbove, 2 * trimEvery, false, false, false},
		{"outgrowing trimAbove starts trimming", trimAbove + 1, trimEvery, false, true, true},
		{"not before trimEvery more was published", trimAbove + 1, trimEvery - 1, false, false, true},
		{"once trimmed, the next trims do not wait for trimAbove again", trimEvery, trimEvery, true, true, true},
		{"once trimmed, still every trimEvery", 2 * trimEvery, trimEvery - 1, true, false, true},
	} {
		due, trimming := trimDue(tc.stored, tc.sinceTrim, tc.trimming)
		if due != tc.wantDue || trimming != tc.wantTrimming {
			t.Errorf("%s: trimDue(%d, %d, %v) = %v, %v; want %v, %v", tc.name, tc.stored, tc.sinceTrim, tc.trimming, due, trimming, tc.wantDue, tc.wantTrimming)
		}
	}
}

// TestSampleOf checks what the pace reads of the record: the counters of
// the targets taking part, and a count of those whose receivers report
// progress but no pace.
func TestSampleOf(t *testing.T) {
	r := &coordinator.Replication{ID: "r1", Attempt: 1, Targets: map[string]*coordinator.Target{
		"paced":     {State: coordinator.TReceiving, ChunksApplied: 40, BusyMs: 300, ElapsedMs: 1000},
		"old":       {State: coordinator.TReceiving, ChunksApplied: 40},
		"unstarted": {State: coordinator.TPending},
		"done":      {State: coordinator.TCommitted, ChunksApplied: 90, BusyMs: 900, ElapsedMs: 2000},
	}}
	s := sampleOf(r, time.Now(), 50)
	want := targetCounters{applied: 40, busy: 300 * time.Millisecond, elapsed: time.Second}
	if len(s.targets) != 1 || s.targets["paced"] != want {
		t.Errorf("targets %v, want only paced: %v", s.targets, want)
	}
	if s.mute != 1 {
		t.Errorf("mute %d, want 1 (old)", s.mute)
	}
}
