package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/streams"
)

// fixture is a Coordinator on its own in-process JetStream server.
type fixture struct {
	t   *testing.T
	ctx context.Context
	b   *broker.Broker
	c   *Coordinator
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: t.Name(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	c, err := New(ctx, b.NC, b.JS, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &fixture{t: t, ctx: ctx, b: b, c: c}
}

// create stores a planned replication to the named targets and begins its
// first attempt.
func (f *fixture) create(id string, names ...string) *Replication {
	f.t.Helper()
	r := &Replication{ID: id, Source: "/src", SnapshotName: "src.1", SnapshotUUID: snapUUID, ChunkSize: 1 << 10, Window: 1 << 20,
		Targets: map[string]*Target{}}
	for _, n := range names {
		r.Targets[n] = &Target{State: TPending}
	}
	if err := f.c.Create(f.ctx, r); err != nil {
		f.t.Fatal(err)
	}
	r, err := f.c.BeginAttempt(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	if r.State != Sending || r.Attempt != 1 {
		f.t.Fatalf("after BeginAttempt: %s attempt %d", r.State, r.Attempt)
	}
	for _, n := range names {
		if got := r.Targets[n].Attempts; got != 1 {
			f.t.Fatalf("target %s starts at attempt %d of the run, want 1", n, got)
		}
	}
	return r
}

func (f *fixture) get(id string) *Replication {
	f.t.Helper()
	r, _, err := f.c.Store().Get(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// report sends rep the way a receiver does, through the micro endpoint.
func (f *fixture) report(id string, rep streams.Report) (streams.Verdict, error) {
	f.t.Helper()
	body, _ := json.Marshal(rep)
	msg, err := f.b.NC.Request(streams.ReportSubject(id, rep.Target), body, 10*time.Second)
	if err != nil {
		f.t.Fatalf("report %s: %v", rep.Event, err)
	}
	if e := msg.Header.Get("Nats-Service-Error"); e != "" {
		return streams.Verdict{}, errors.New(e)
	}
	var v streams.Verdict
	if err := json.Unmarshal(msg.Data, &v); err != nil {
		f.t.Fatal(err)
	}
	return v, nil
}

// publish stores chunk index of attempt, as the sender would.
func (f *fixture) publish(id string, attempt int, index int64) {
	f.t.Helper()
	m := nats.NewMsg(streams.Subject(id))
	m.Header.Set(streams.HdrVersion, strconv.Itoa(streams.Version))
	m.Header.Set(streams.HdrRepl, id)
	m.Header.Set(streams.HdrAttempt, strconv.Itoa(attempt))
	m.Header.Set(streams.HdrKind, string(streams.KindChunk))
	m.Header.Set(streams.HdrChunk, strconv.FormatInt(index, 10))
	m.Header.Set(streams.HdrOffset, "0")
	m.Header.Set(streams.HdrSum, "0")
	m.Header.Set(nats.MsgIdHdr, streams.MsgID(id, attempt, index))
	if _, err := f.b.JS.PublishMsg(f.ctx, m); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) streamMsgs(id string) uint64 {
	f.t.Helper()
	s, err := f.b.JS.Stream(f.ctx, streams.StreamName(id))
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := s.Info(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return info.State.Msgs
}

// consumer returns the info of target's consumer, or nil if it has none.
func (f *fixture) consumer(id, target string) *jetstream.ConsumerInfo {
	f.t.Helper()
	s, err := f.b.JS.Stream(f.ctx, streams.StreamName(id))
	if err != nil {
		f.t.Fatal(err)
	}
	c, err := s.Consumer(f.ctx, streams.ConsumerName(target))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		f.t.Fatal(err)
	}
	info, err := c.Info(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	return info
}

func TestRestartGivesUpAfterMaxAttempts(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "nas")
	for attempt := 1; attempt < DefaultMaxAttempts; attempt++ {
		f.publish("r1", attempt, 0)
		r, err := f.c.Restart(f.ctx, "r1", attempt, "corrupt chunk 0", false)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != Planned || r.Attempt != attempt+1 || r.Targets["nas"].State != TPending {
			t.Fatalf("restart %d: %s attempt %d, target %s", attempt, r.State, r.Attempt, r.Targets["nas"].State)
		}
		if n := f.streamMsgs("r1"); n != 0 {
			t.Errorf("restart %d left %d messages of the discarded attempt", attempt, n)
		}
		if f.consumer("r1", "nas") == nil {
			t.Errorf("restart %d dropped the consumer of an active target", attempt)
		}
		if r, err = f.c.BeginAttempt(f.ctx, "r1"); err != nil || r.State != Sending {
			t.Fatalf("begin attempt %d: %v", attempt+1, err)
		}
	}
	r, err := f.c.Restart(f.ctx, "r1", DefaultMaxAttempts, "corrupt chunk 0", false)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Failed || r.Attempt != DefaultMaxAttempts || r.Targets["nas"].State != TFailed {
		t.Fatalf("after %d attempts: %s attempt %d, target %s", DefaultMaxAttempts, r.State, r.Attempt, r.Targets["nas"].State)
	}
	if !strings.Contains(r.Error, "gave up after 3 attempts: corrupt chunk 0") || !strings.Contains(r.Targets["nas"].Error, "gave up") {
		t.Errorf("errors %q / %q do not say why it gave up", r.Error, r.Targets["nas"].Error)
	}
	if got := f.get("r1"); got.State != Failed {
		t.Errorf("stored state %s", got.State)
	}
	if f.consumer("r1", "nas") != nil {
		t.Error("a failed target keeps its consumer")
	}
	// A finished replication is not restarted by a late report.
	if r, err = f.c.Restart(f.ctx, "r1", DefaultMaxAttempts, "late", false); err != nil || r.State != Failed || r.Attempt != DefaultMaxAttempts {
		t.Errorf("restart of a failed replication: %v, %s attempt %d", err, r.State, r.Attempt)
	}
}

func TestRetryStartsAFreshRun(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "good", "bad")
	if err := f.c.MarkSent(f.ctx, "r1", 1, 1, 10, 10, digest); err != nil {
		t.Fatal(err)
	}
	if _, err := f.report("r1", streams.Report{Event: streams.EvCommitted, Target: "good", Attempt: 1, Path: "/t/src.1"}); err != nil {
		t.Fatal(err)
	}
	v, err := f.report("r1", streams.Report{Event: streams.EvFailed, Target: "bad", Attempt: 1, Reason: "out of space", Permanent: true})
	if err != nil || v.Action != streams.ActDiscard {
		t.Fatalf("permanent failure: %+v, %v", v, err)
	}
	r := f.get("r1")
	if r.State != Failed || !strings.Contains(r.Error, "target bad failed: out of space") {
		t.Fatalf("after a permanent failure: %s %q", r.State, r.Error)
	}

	// Retry of a replication that did not fail changes nothing.
	other := f.create("r2", "x")
	if got, err := f.c.Retry(f.ctx, "r2", nil); err != nil || got.State != Sending || got.Attempt != other.Attempt {
		t.Errorf("retry of a sending replication: %v, %s attempt %d", err, got.State, got.Attempt)
	}

	r, err = f.c.Retry(f.ctx, "r1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != Planned || r.Attempt != 2 || r.Targets["bad"].Attempts != 1 {
		t.Errorf("after retry: %s attempt %d, target's attempts in the new run %d", r.State, r.Attempt, r.Targets["bad"].Attempts)
	}
	if r.Targets["good"].State != TCommitted || r.Targets["bad"].State != TPending || r.Targets["bad"].Error != "" {
		t.Errorf("targets after retry: good %+v, bad %+v", *r.Targets["good"], *r.Targets["bad"])
	}
	if f.consumer("r1", "bad") == nil {
		t.Error("the retried target has no consumer")
	}
	if f.consumer("r1", "good") != nil {
		t.Error("the committed target got a consumer again")
	}
	// The new run has a whole budget: MaxAttempts-1 restarts before giving up.
	for i := 1; i < DefaultMaxAttempts; i++ {
		if r, err = f.c.Restart(f.ctx, "r1", f.get("r1").Attempt, "flaky link", false); err != nil || r.State != Planned {
			t.Fatalf("restart %d of the new run: %v, %s", i, err, r.State)
		}
	}
	if r, err = f.c.Restart(f.ctx, "r1", f.get("r1").Attempt, "flaky link", false); err != nil || r.State != Failed {
		t.Fatalf("restart past the budget: %v, %s", err, r.State)
	}
	if r.Attempt != 1+DefaultMaxAttempts {
		t.Errorf("the second run ended at attempt %d, want %d", r.Attempt, 1+DefaultMaxAttempts)
	}
	if r.Targets["good"].State != TCommitted {
		t.Errorf("giving up touched the committed target: %s", r.Targets["good"].State)
	}
}

func TestReportsThroughTheService(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "a", "b")
	f.publish("r1", 1, 0)

	v, err := f.report("r1", streams.Report{Event: streams.EvProgress, Target: "a", Attempt: 1, ChunksApplied: 1, BytesApplied: 10})
	if err != nil || v.Action != streams.ActOK {
		t.Fatalf("progress: %+v, %v", v, err)
	}
	if got := f.get("r1").Targets["a"]; got.State != TReceiving || got.BytesApplied != 10 {
		t.Errorf("stored target after progress: %+v", *got)
	}
	if err := f.c.MarkSent(f.ctx, "r1", 2, 1, 10, 10, digest); err == nil {
		t.Error("MarkSent of an attempt that does not exist was accepted")
	}
	if err := f.c.MarkSent(f.ctx, "r1", 1, 1, 10, 10, digest); err != nil {
		t.Fatal(err)
	}
	v, err = f.report("r1", streams.Report{Event: streams.EvReceived, Target: "a", Attempt: 1, ChunksApplied: 1, BytesApplied: 10,
		Digest: digest, ReceivedUUID: snapUUID, ReadOnly: true})
	if err != nil || v.Action != streams.ActCommit {
		t.Fatalf("received: %+v, %v", v, err)
	}
	if _, err := f.report("r1", streams.Report{Event: streams.EvCommitted, Target: "a", Attempt: 1, Path: "/t/src.1"}); err != nil {
		t.Fatal(err)
	}
	if f.consumer("r1", "a") != nil {
		t.Error("the committed target keeps its consumer")
	}

	// b saw a different stream: its verdict is discard. The stream as
	// stored gave the wrong result, so no replay: b is the only active
	// target, and a new attempt begins.
	v, err = f.report("r1", streams.Report{Event: streams.EvReceived, Target: "b", Attempt: 1, ChunksApplied: 1, BytesApplied: 10,
		Digest: "sha256:00", ReceivedUUID: snapUUID, ReadOnly: true})
	if err != nil || v.Action != streams.ActDiscard || v.Attempt != 2 || !strings.Contains(v.Reason, "digest") {
		t.Fatalf("received with a bad digest: %+v, %v", v, err)
	}
	r := f.get("r1")
	if r.Attempt != 2 || r.State != Planned || r.Targets["a"].State != TCommitted || r.Targets["b"].State != TPending {
		t.Errorf("after the discard: %s attempt %d, a %s, b %s", r.State, r.Attempt, r.Targets["a"].State, r.Targets["b"].State)
	}
	if n := f.streamMsgs("r1"); n != 0 {
		t.Errorf("the discarded attempt left %d messages", n)
	}
	if r.Targets["a"].Path != "/t/src.1" {
		t.Errorf("committed path %q", r.Targets["a"].Path)
	}

	// A late report of attempt 1 is refused and changes nothing.
	before := f.get("r1")
	v, err = f.report("r1", streams.Report{Event: streams.EvReceived, Target: "b", Attempt: 1, ChunksApplied: 1, BytesApplied: 10,
		Digest: digest, ReceivedUUID: snapUUID, ReadOnly: true})
	if err != nil || v.Action != streams.ActStale || v.Attempt != 2 {
		t.Fatalf("stale report: %+v, %v", v, err)
	}
	if after := f.get("r1"); after.Attempt != before.Attempt || after.State != before.State || *after.Targets["b"] != *before.Targets["b"] {
		t.Errorf("a stale report changed the record: %+v", after)
	}

	// Nonsense is answered with an error, not a verdict.
	if _, err := f.report("r1", streams.Report{Event: streams.EvProgress, Target: "ghost", Attempt: 2}); err == nil {
		t.Error("a report of an unknown target got a verdict")
	}
}

func TestRewindReplaysOrRestarts(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "a")
	f.publish("r1", 1, 0)
	f.publish("r1", 1, 1)

	// The target consumed and acked the first chunk, then lost its partial.
	s, err := f.b.JS.Stream(f.ctx, streams.StreamName("r1"))
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.Consumer(f.ctx, streams.ConsumerName("a"))
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if ci := f.consumer("r1", "a"); ci.Delivered.Consumer != 1 {
		t.Fatalf("delivered %d", ci.Delivered.Consumer)
	}
	v, err := f.report("r1", streams.Report{Event: streams.EvRewind, Target: "a", Attempt: 1})
	if err != nil || v.Action != streams.ActOK {
		t.Fatalf("rewind with the start stored: %+v, %v", v, err)
	}
	if ci := f.consumer("r1", "a"); ci.Delivered.Consumer != 0 || ci.NumPending != 2 {
		t.Errorf("after the rewind the consumer delivered %d and has %d pending, want 0 and 2", ci.Delivered.Consumer, ci.NumPending)
	}

	// Once the sender dropped chunk 0 a replay cannot start: new attempt.
	if err := s.Purge(f.ctx, jetstream.WithPurgeSequence(2)); err != nil {
		t.Fatal(err)
	}
	v, err = f.report("r1", streams.Report{Event: streams.EvRewind, Target: "a", Attempt: 1})
	if err != nil || v.Action != streams.ActStale || v.Attempt != 2 {
		t.Fatalf("rewind without the start: %+v, %v", v, err)
	}
	if r := f.get("r1"); r.Attempt != 2 || r.State != Planned || !strings.Contains(r.Error, "lost its partial") {
		t.Errorf("after the rewind: %s attempt %d %q", r.State, r.Attempt, r.Error)
	}
}

func TestProgressOfAnOldAttemptIsIgnored(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "a")
	r, err := f.c.Progress(f.ctx, "r1", 1, 3, 3000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if r.ChunksSent != 3 || r.Targets["a"] == nil {
		t.Errorf("Progress returned %+v, want the record with its 3 chunks and target a", r)
	}
	if _, err := f.c.Restart(f.ctx, "r1", f.get("r1").Attempt, "test", false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Progress(f.ctx, "r1", 1, 9, 9000, 9000); err != nil {
		t.Fatal(err)
	}
	if r := f.get("r1"); r.ChunksSent != 0 || r.BytesSent != 0 {
		t.Errorf("progress of attempt 1 counted in attempt 2: %d chunks %d bytes", r.ChunksSent, r.BytesSent)
	}
	if _, _, err := f.c.Store().Get(f.ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an unknown id: %v", err)
	}
}

// A report for one target sent on another target's subject is refused and
// changes nothing: with per-site permissions on the subjects, site A cannot
// report a commit for site B.
func TestForgedReportIsRefused(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "siteA", "siteB")
	if err := f.c.MarkSent(f.ctx, "r1", 1, 1, 10, 10, digest); err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(streams.Report{Event: streams.EvCommitted, Target: "siteB", Attempt: 1, Path: "/t/src.1"})
	msg, err := f.b.NC.Request(streams.ReportSubject("r1", "siteA"), forged, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e := msg.Header.Get("Nats-Service-Error"); !strings.Contains(e, "refused") {
		t.Errorf("forged report answered %q / %s, want a refusal", e, msg.Data)
	}
	if r := f.get("r1"); r.Targets["siteB"].State != TPending || r.State != Sent {
		t.Errorf("a forged report changed the record: %s, siteB %s", r.State, r.Targets["siteB"].State)
	}
}

// A sent attempt whose stream is gone (a stream in memory dies with its
// process) goes back to sending, same attempt, so the sender sends it
// again; while the stream holds it, or for another attempt, nothing moves.
func TestResendWhenTheStreamIsGone(t *testing.T) {
	f := newFixture(t)
	f.create("r1", "nas")
	f.publish("r1", 1, 0)
	if err := f.c.MarkSent(f.ctx, "r1", 1, 1, 10, 10, "sha256:aa"); err != nil {
		t.Fatal(err)
	}
	if resent, err := f.c.Resend(f.ctx, "r1", 1); err != nil || resent {
		t.Fatalf("Resend with the stream in place: %v, %v; want false", resent, err)
	}
	if err := f.b.JS.DeleteStream(f.ctx, streams.StreamName("r1")); err != nil {
		t.Fatal(err)
	}
	if resent, err := f.c.Resend(f.ctx, "r1", 2); err != nil || resent {
		t.Fatalf("Resend of attempt 2 (it is 1): %v, %v; want false", resent, err)
	}
	if resent, err := f.c.Resend(f.ctx, "r1", 1); err != nil || !resent {
		t.Fatalf("Resend after the stream was deleted: %v, %v; want true", resent, err)
	}
	if r := f.get("r1"); r.State != Sending || r.Attempt != 1 {
		t.Fatalf("after Resend: %s attempt %d, want sending attempt 1", r.State, r.Attempt)
	}
	// The next BeginAttempt makes the stream and the target's consumer again.
	if _, err := f.c.BeginAttempt(f.ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if f.consumer("r1", "nas") == nil {
		t.Fatal("no consumer for nas after the stream was made again")
	}
}

// With StreamsInMemory a replication whose window fits gets its stream in
// memory, a larger one in the file store, and an existing stream keeps its
// storage whatever the option says.
func TestStreamsInMemory(t *testing.T) {
	f := newFixture(t)
	l := NewStreamLog(f.b.JS, slog.New(slog.DiscardHandler))
	StreamsInMemory(1 << 20)(l)
	storage := func(id string) jetstream.StorageType {
		s, err := f.b.JS.Stream(f.ctx, streams.StreamName(id))
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.Storage
	}
	for _, tc := range []struct {
		id     string
		window int64
		want   jetstream.StorageType
	}{{"small", 1 << 20, jetstream.MemoryStorage}, {"large", 1<<20 + 1, jetstream.FileStorage}} {
		if err := l.Open(f.ctx, tc.id, tc.window, 1<<10, []Dest{{Target: "nas"}}); err != nil {
			t.Fatal(err)
		}
		if got := storage(tc.id); got != tc.want {
			t.Errorf("window %d: stream in %v, want %v", tc.window, got, tc.want)
		}
	}
	if err := NewStreamLog(f.b.JS, slog.New(slog.DiscardHandler)).Open(f.ctx, "small", 1<<20, 1<<10, nil); err != nil {
		t.Fatalf("opening a stream in memory without the option: %v", err)
	}
	if got := storage("small"); got != jetstream.MemoryStorage {
		t.Errorf("an existing stream in memory, opened again: %v", got)
	}
}
