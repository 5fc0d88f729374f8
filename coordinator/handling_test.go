package coordinator_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/coordinator/coordtest"
	"github.com/snapjet/snapjet/streams"
)

// These tests drive the coordinator as the receivers' reports and the
// sender's calls do, on the in-memory Records and Log: what a report does
// to the record and to the stream's consumers. What each report decides is
// the table of judge_test.go.

const (
	testUUID   = "0b4fd3a2-52c8-7d4e-a2f0-3c1d44e7a9b1"
	testDigest = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
)

// world is a coordinator on fakes with replication r1 in its first attempt.
type world struct {
	t    *testing.T
	ctx  context.Context
	recs *coordtest.Records
	log  *coordtest.Log
	c    *coordinator.Coordinator
}

func newWorld(t *testing.T, targets ...string) *world {
	t.Helper()
	w := &world{t: t, ctx: t.Context(), recs: coordtest.NewRecords(), log: coordtest.NewLog()}
	w.c = coordinator.NewWith(w.recs, w.log, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r := &coordinator.Replication{ID: "r1", SnapshotUUID: testUUID, ChunkSize: 1000, Window: 1 << 20, Targets: map[string]*coordinator.Target{}}
	for _, name := range targets {
		r.Targets[name] = &coordinator.Target{State: coordinator.TPending}
	}
	if err := w.c.Create(w.ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := w.c.BeginAttempt(w.ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	return w
}

// send stores n chunks of attempt (sequences follow on), and with ended
// the end marker, which the sender then reports: 1000 bytes a chunk.
func (w *world) send(attempt int, n int64, ended bool) {
	w.t.Helper()
	for i := range n {
		w.log.Append("r1", streams.Message{Kind: streams.KindChunk, Repl: "r1", Attempt: attempt, Index: i, Offset: 1000 * i})
	}
	if !ended {
		return
	}
	w.log.Append("r1", streams.Message{Kind: streams.KindEnd, Repl: "r1", Attempt: attempt, Chunks: n, TotalBytes: 1000 * n, Digest: testDigest})
	if err := w.c.MarkSent(w.ctx, "r1", attempt, n, 1000*n, 1000*n, testDigest); err != nil {
		w.t.Fatal(err)
	}
}

// report hands rep to the coordinator on the subject of target.
func (w *world) reportAs(target string, rep streams.Report) (streams.Verdict, error) {
	body, _ := json.Marshal(rep)
	return w.c.Handle(w.ctx, "r1", target, body)
}

func (w *world) report(rep streams.Report) (streams.Verdict, error) {
	return w.reportAs(rep.Target, rep)
}

// must is report for the reports that set a scene.
func (w *world) must(rep streams.Report) {
	w.t.Helper()
	if _, err := w.report(rep); err != nil {
		w.t.Fatalf("report %s of %s: %v", rep.Event, rep.Target, err)
	}
}

func (w *world) get(id string) *coordinator.Replication {
	w.t.Helper()
	r, _, err := w.recs.Get(w.ctx, id)
	if err != nil {
		w.t.Fatal(err)
	}
	return r
}

// snapshot is what a report may change: the record (but its time of
// update) and where each target's consumer delivers from.
type snapshot struct {
	r         *coordinator.Replication
	consumers map[string]uint64
}

func (w *world) snapshot() snapshot {
	r := w.get("r1")
	r.Updated = time.Time{}
	s := snapshot{r: r, consumers: map[string]uint64{}}
	for name := range r.Targets {
		if from, _, ok := w.log.Consumer("r1", name); ok {
			s.consumers[name] = from
		}
	}
	return s
}

func failed(target, reason string) streams.Report {
	return streams.Report{Event: streams.EvFailed, Target: target, Attempt: 1, Reason: reason}
}

func received(target, digest string) streams.Report {
	return streams.Report{Event: streams.EvReceived, Target: target, Attempt: 1, ChunksApplied: 4, BytesApplied: 4000,
		Digest: digest, ReceivedUUID: testUUID, ReadOnly: true}
}

func progress(target string, attempt int, chunks int64) streams.Report {
	return streams.Report{Event: streams.EvProgress, Target: target, Attempt: attempt, ChunksApplied: chunks, BytesApplied: 1000 * chunks}
}

// TestReportHandling: a target's trouble costs that target only. With three
// targets (a, b, c) on a stream of four chunks (sequences 1-4) and its end
// marker (5), b's report replays its consumer or moves it to a record of
// its own, while a and c keep attempt 1, their state and their consumers.
func TestReportHandling(t *testing.T) {
	type want struct {
		action   streams.Action
		state    coordinator.TargetState // b's state afterwards
		attempts int                     // b's attempts in the run afterwards
		replay   uint64                  // b's consumer delivers from here; 0: it has none
		moved    bool                    // b continues in record r1_b
		error    string                  // in b's error
	}
	tests := []struct {
		name   string
		before func(w *world)
		report streams.Report
		want   want
	}{
		{
			name:   "a killed receive while the stream holds its start replays to the target from the start",
			report: failed("b", "btrfs receive: killed"),
			want:   want{action: streams.ActReplay, state: coordinator.TPending, attempts: 2, replay: 1},
		},
		{
			name:   "a killed receive after the start was purged moves the target to a stream of its own",
			before: func(w *world) { _ = w.log.PurgeTo(w.ctx, "r1", 3, nil) },
			report: failed("b", "btrfs receive: killed"),
			want:   want{action: streams.ActDiscard, state: coordinator.TMoved, attempts: 1, moved: true, error: "killed"},
		},
		{
			name: "a corrupt stored chunk moves the target even though the start is stored",
			report: streams.Report{Event: streams.EvFailed, Target: "b", Attempt: 1, Reason: "corrupt chunk 2",
				StreamBad: true},
			want: want{action: streams.ActDiscard, state: coordinator.TMoved, attempts: 1, moved: true, error: "corrupt chunk 2"},
		},
		{
			name:   "a digest mismatch moves the target: replaying the same stream cannot help",
			report: received("b", "sha256:00"),
			want:   want{action: streams.ActDiscard, state: coordinator.TMoved, attempts: 1, moved: true, error: "digest"},
		},
		{
			name:   "a resumed receive continues from where its partial ends",
			before: func(w *world) { w.must(progress("b", 1, 2)) },
			report: streams.Report{Event: streams.EvRewind, Target: "b", Attempt: 1, FromSeq: 3},
			want:   want{action: streams.ActOK, state: coordinator.TReceiving, attempts: 1, replay: 3},
		},
		{
			name:   "a lost partial while the stream holds its start replays from the start",
			before: func(w *world) { w.must(progress("b", 1, 2)) },
			report: streams.Report{Event: streams.EvRewind, Target: "b", Attempt: 1},
			want:   want{action: streams.ActOK, state: coordinator.TPending, attempts: 2, replay: 1},
		},
		{
			name:   "a lost partial after the start was purged moves the target",
			before: func(w *world) { _ = w.log.PurgeTo(w.ctx, "r1", 2, nil) },
			report: streams.Report{Event: streams.EvRewind, Target: "b", Attempt: 1},
			want:   want{action: streams.ActStale, state: coordinator.TMoved, attempts: 1, moved: true, error: "lost its partial"},
		},
		{
			name: "the third attempt's failure fails only the exhausted target",
			before: func(w *world) {
				w.must(failed("b", "btrfs receive: killed"))
				w.must(failed("b", "btrfs receive: killed"))
			},
			report: failed("b", "btrfs receive: killed"),
			want:   want{action: streams.ActDiscard, state: coordinator.TFailed, attempts: 3, error: "gave up after 3 attempts"},
		},
		{
			name:   "a late progress report does not lower the counters",
			before: func(w *world) { w.must(progress("b", 1, 3)) },
			report: progress("b", 1, 1),
			want:   want{action: streams.ActOK, state: coordinator.TReceiving, attempts: 1, replay: 1},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.send(1, 4, true)
			w.must(progress("a", 1, 2))
			if tc.before != nil {
				tc.before(w)
			}
			before := w.snapshot()
			v, err := w.report(tc.report)
			if err != nil || v.Action != tc.want.action || v.Attempt != 1 {
				t.Fatalf("verdict %+v (%v), want %s in attempt 1", v, err, tc.want.action)
			}
			after := w.snapshot()
			if after.r.Attempt != 1 || after.r.State != coordinator.Sent {
				t.Errorf("the record went to %s attempt %d, want sent attempt 1", after.r.State, after.r.Attempt)
			}
			for _, other := range []string{"a", "c"} {
				if *after.r.Targets[other] != *before.r.Targets[other] || after.consumers[other] != before.consumers[other] {
					t.Errorf("target %s changed: %+v from %d, was %+v from %d", other, *after.r.Targets[other], after.consumers[other],
						*before.r.Targets[other], before.consumers[other])
				}
			}
			b := after.r.Targets["b"]
			if b.State != tc.want.state || b.Attempts != tc.want.attempts || !strings.Contains(b.Error, tc.want.error) {
				t.Errorf("b is %s after %d attempts (%q), want %s after %d (%q)", b.State, b.Attempts, b.Error,
					tc.want.state, tc.want.attempts, tc.want.error)
			}
			if from, ok := after.consumers["b"]; from != tc.want.replay || ok != (tc.want.replay > 0) {
				t.Errorf("b's consumer delivers from %d (exists: %v), want %d", from, ok, tc.want.replay)
			}
			if b.ChunksApplied < before.r.Targets["b"].ChunksApplied && b.Attempts == before.r.Targets["b"].Attempts {
				t.Errorf("b's applied chunks went down within an attempt: %d, was %d", b.ChunksApplied, before.r.Targets["b"].ChunksApplied)
			}
			split, _, err := w.recs.Get(w.ctx, coordinator.SplitID("r1", "b"))
			if moved := err == nil; moved != tc.want.moved {
				t.Fatalf("record r1_b exists: %v, want %v", moved, tc.want.moved)
			}
			if tc.want.moved {
				if b.MovedTo != split.ID || len(split.Targets) != 1 || split.Targets["b"].Attempts != 2 || split.Origin != "r1" {
					t.Errorf("b moved to %q: %+v, want r1_b with b alone at its attempt 2", b.MovedTo, split)
				}
			}
		})
	}
}

// A report that cannot be applied now or at all leaves the record and
// the consumers exactly as they were.
func TestReportChangesNothing(t *testing.T) {
	broken := errors.New("stream info: timeout")
	tests := []struct {
		name    string
		before  func(w *world)
		broken  bool   // the Log fails every call when the report comes
		target  string // the subject's target
		report  streams.Report
		action  streams.Action // the verdict; "" for an error
		errText string
	}{
		{
			name:    "a forged report (body target differs from subject target) is refused",
			target:  "a",
			report:  streams.Report{Event: streams.EvCommitted, Target: "b", Attempt: 1, Path: "/t/src.1"},
			errText: "refused",
		},
		{
			name: "a report of the old attempt is not applied to the new one",
			before: func(w *world) {
				if _, err := w.c.Restart(w.ctx, "r1", 1, "test", false); err != nil {
					w.t.Fatal(err)
				}
			},
			target: "b",
			report: received("b", testDigest),
			action: streams.ActStale,
		},
		{
			name:    "an unreadable stream start gives an error, not a verdict",
			broken:  true,
			target:  "b",
			report:  failed("b", "btrfs receive: killed"),
			errText: broken.Error(),
		},
		{
			name:    "an unreadable stream end gives an error, not a verdict",
			broken:  true,
			target:  "b",
			report:  received("b", testDigest),
			errText: broken.Error(),
		},
		{
			name:    "an unreadable stream on a rewind gives an error, not a verdict",
			broken:  true,
			target:  "b",
			report:  streams.Report{Event: streams.EvRewind, Target: "b", Attempt: 1},
			errText: broken.Error(),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.send(1, 4, true)
			if tc.before != nil {
				tc.before(w)
			}
			before := w.snapshot()
			if tc.broken {
				w.log.Break(broken)
			}
			v, err := w.reportAs(tc.target, tc.report)
			switch {
			case tc.errText != "" && (err == nil || !strings.Contains(err.Error(), tc.errText)):
				t.Fatalf("verdict %+v (%v), want an error saying %q", v, err, tc.errText)
			case tc.errText == "" && (err != nil || v.Action != tc.action):
				t.Fatalf("verdict %+v (%v), want %s", v, err, tc.action)
			}
			w.log.Break(nil)
			if after := w.snapshot(); !reflect.DeepEqual(after, before) {
				t.Errorf("the report changed\n%+v\nto\n%+v", before, after)
			}
		})
	}
}

// The only active target's trouble restarts the attempt: the stream is
// emptied and that target replays from the next attempt's start, while a
// committed target is not touched.
func TestRestartOfTheLastActiveTarget(t *testing.T) {
	w := newWorld(t, "a", "b")
	w.send(1, 4, true)
	w.must(streams.Report{Event: streams.EvCommitted, Target: "a", Attempt: 1, Path: "/t/src.1"})
	_ = w.log.PurgeTo(w.ctx, "r1", 3, nil)
	v, err := w.report(failed("b", "btrfs receive: killed"))
	if err != nil || v.Action != streams.ActDiscard || v.Attempt != 2 {
		t.Fatalf("verdict %+v (%v), want discard, attempt 2", v, err)
	}
	r := w.get("r1")
	if r.State != coordinator.Planned || r.Targets["b"].State != coordinator.TPending || r.Targets["b"].Attempts != 2 ||
		r.Targets["a"].State != coordinator.TCommitted || r.Targets["a"].Attempts != 1 {
		t.Errorf("after the restart: %s, a %+v, b %+v", r.State, *r.Targets["a"], *r.Targets["b"])
	}
	if first, last, _ := w.log.Stored("r1"); first != last+1 {
		t.Errorf("the stream holds %d-%d of the discarded attempt", first, last)
	}
	if from, _, ok := w.log.Consumer("r1", "b"); !ok || from != 6 {
		t.Errorf("b's consumer delivers from %d (%v), want the next attempt's first sequence 6", from, ok)
	}
	if _, _, ok := w.log.Consumer("r1", "a"); ok {
		t.Error("the committed target has a consumer again")
	}
}

// Purge drops only what every active target acked; failed and moved
// targets hold nothing back, and the last stored message always stays.
func TestPurge(t *testing.T) {
	tests := []struct {
		name    string
		acks    map[string]uint64 // a, b, c ack up to here on ten chunks
		before  func(w *world)    // then this happens
		purged  bool
		floor   uint64
		slowest string
	}{
		{name: "a target that acked nothing holds everything", acks: map[string]uint64{"b": 5, "c": 5}, floor: 0, slowest: "a"},
		{name: "the slowest holds the floor", acks: map[string]uint64{"a": 8, "b": 5, "c": 9}, purged: true, floor: 5, slowest: "b"},
		{name: "all acked: the last message stays", acks: map[string]uint64{"a": 10, "b": 10, "c": 10}, purged: true, floor: 10},
		{
			name: "a failed target is not waited for", acks: map[string]uint64{"a": 8, "c": 7},
			before: func(w *world) {
				if err := w.c.FailTarget(w.ctx, "r1", 1, "b", "stalled"); err != nil {
					w.t.Fatal(err)
				}
			},
			purged: true, floor: 7, slowest: "c",
		},
		{
			name: "a moved target is not waited for", acks: map[string]uint64{"a": 6, "c": 9},
			before: func(w *world) {
				w.must(streams.Report{Event: streams.EvFailed, Target: "b", Attempt: 1, Reason: "corrupt chunk", StreamBad: true})
			},
			purged: true, floor: 6, slowest: "a",
		},
		{
			name: "a target replayed from the start holds everything", acks: map[string]uint64{"a": 9, "b": 9, "c": 9},
			before: func(w *world) { w.must(failed("b", "btrfs receive: killed")) },
			floor:  0, slowest: "b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, "a", "b", "c")
			w.send(1, 10, false)
			for target, seq := range tc.acks {
				w.log.Ack("r1", target, seq)
			}
			if tc.before != nil {
				tc.before(w)
			}
			first, last, _ := w.log.Stored("r1")
			purged, floor, slowest, err := w.c.Purge(w.ctx, "r1", first, last)
			if err != nil || purged != tc.purged || floor != tc.floor || slowest != tc.slowest {
				t.Fatalf("Purge: %v floor %d held by %q (%v), want %v %d %q", purged, floor, slowest, err, tc.purged, tc.floor, tc.slowest)
			}
			now, _, _ := w.log.Stored("r1")
			if want := min(tc.floor+1, last); tc.purged && now != want || !tc.purged && now != first {
				t.Errorf("the stream starts at %d, want %d", now, map[bool]uint64{true: want, false: first}[tc.purged])
			}
		})
	}

	w := newWorld(t, "a")
	w.send(1, 3, false)
	w.log.Ack("r1", "a", 3)
	w.log.Break(errors.New("consumer list: timeout"))
	if purged, _, _, err := w.c.Purge(w.ctx, "r1", 1, 3); err == nil || purged {
		t.Errorf("Purge on an unreadable stream: %v (%v), want an error", purged, err)
	}
	w.log.Break(nil)
	if first, _, _ := w.log.Stored("r1"); first != 1 {
		t.Errorf("Purge on an unreadable stream dropped up to %d", first)
	}
}

// The sender's side of a run with three targets: a stalled target fails
// alone and loses its consumer, Finish deletes the stream, and Retry runs
// the failed one again on a fresh stream with a fresh budget.
func TestRunAndRetry(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	for _, name := range []string{"a", "b", "c"} {
		if from, _, ok := w.log.Consumer("r1", name); !ok || from != 1 {
			t.Fatalf("BeginAttempt gave %s a consumer from %d (%v), want one from the start", name, from, ok)
		}
	}
	w.send(1, 4, true)
	if err := w.c.FailTarget(w.ctx, "r1", 1, "b", "no progress for 10m"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := w.log.Consumer("r1", "b"); ok {
		t.Error("the failed target keeps its consumer")
	}
	for _, name := range []string{"a", "c"} {
		w.must(received(name, testDigest))
		w.must(streams.Report{Event: streams.EvCommitted, Target: name, Attempt: 1, Path: "/t/src.1"})
	}
	r := w.get("r1")
	if r.State != coordinator.Failed || !strings.Contains(r.Error, "target b failed: no progress") {
		t.Fatalf("after a and c committed: %s %q", r.State, r.Error)
	}
	if err := w.c.Finish(w.ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := w.log.Stored("r1"); ok {
		t.Fatal("Finish left the stream")
	}

	r, err := w.c.Retry(w.ctx, "r1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != coordinator.Planned || r.Attempt != 2 || r.Targets["b"].State != coordinator.TPending || r.Targets["b"].Attempts != 1 {
		t.Errorf("after Retry: %s attempt %d, b %+v", r.State, r.Attempt, *r.Targets["b"])
	}
	if r, err = w.c.BeginAttempt(w.ctx, "r1"); err != nil || r.State != coordinator.Sending {
		t.Fatalf("BeginAttempt of the retry: %v", err)
	}
	for name, want := range map[string]bool{"a": false, "b": true, "c": false} {
		if _, _, ok := w.log.Consumer("r1", name); ok != want {
			t.Errorf("after the retry %s has a consumer: %v, want %v", name, ok, want)
		}
	}
	// A late report of the first run changes nothing.
	if v, err := w.report(received("b", testDigest)); err != nil || v.Action != streams.ActStale || v.Attempt != 2 {
		t.Errorf("a report of attempt 1 in attempt 2: %+v (%v), want stale", v, err)
	}
}

// TestTargetsAtASite: a target whose receiver is at a site consumes the
// site's copy of the stream. Its consumer is made there, its ack floor
// read from there holds the purge like any other, a replay resets it
// there, and a record it moves to keeps its site.
func TestTargetsAtASite(t *testing.T) {
	w := &world{t: t, ctx: t.Context(), recs: coordtest.NewRecords(), log: coordtest.NewLog()}
	w.c = coordinator.NewWith(w.recs, w.log, slog.New(slog.NewTextHandler(io.Discard, nil)))
	r := &coordinator.Replication{ID: "r1", SnapshotUUID: testUUID, ChunkSize: 1000, Window: 1 << 20, Targets: map[string]*coordinator.Target{
		"a": {State: coordinator.TPending},
		"b": {State: coordinator.TPending, Site: "site-x"},
		"c": {State: coordinator.TPending, Site: "site-x"},
	}}
	if err := w.c.Create(w.ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := w.c.BeginAttempt(w.ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"a": "", "b": "site-x", "c": "site-x"} {
		if _, site, ok := w.log.Consumer("r1", name); !ok || site != want {
			t.Errorf("consumer of %s at %q (%v), want at %q", name, site, ok, want)
		}
	}
	w.send(1, 10, false)
	w.log.Ack("r1", "a", 8)
	w.log.Ack("r1", "b", 5)
	w.log.Ack("r1", "c", 9)
	purged, floor, slowest, err := w.c.Purge(w.ctx, "r1", 1, 10)
	if err != nil || !purged || floor != 5 || slowest != "b" {
		t.Fatalf("Purge: %v floor %d held by %q (%v), want the site's b to hold it at 5", purged, floor, slowest, err)
	}

	// A receiver at the site that found no copy there asks for one.
	v, err := w.report(streams.Report{Event: streams.EvRewind, Target: "b", Attempt: 1, FromSeq: 1})
	if err != nil || v.Action != streams.ActOK {
		t.Fatalf("rewind of b: %+v (%v)", v, err)
	}
	if from, site, ok := w.log.Consumer("r1", "b"); !ok || site != "site-x" || from != 1 {
		t.Errorf("after the rewind, b's consumer delivers from %d at %q (%v), want from 1 at site-x", from, site, ok)
	}

	w.must(streams.Report{Event: streams.EvFailed, Target: "c", Attempt: 1, Reason: "corrupt chunk", StreamBad: true})
	moved := w.get("r1_c")
	if tc := moved.Targets["c"]; tc == nil || tc.Site != "site-x" {
		t.Errorf("c moved to r1_c as %+v, want it still at site-x", tc)
	}
}

// TestSweepRemovesCopiesLeftAtSites: a site that was away when its
// replication ended keeps the copy; a later sweep deletes it, and the copy
// of a replication with no record at all, and keeps the copy of one that
// is still running.
func TestSweepRemovesCopiesLeftAtSites(t *testing.T) {
	w := &world{t: t, ctx: t.Context(), recs: coordtest.NewRecords(), log: coordtest.NewLog()}
	w.c = coordinator.NewWith(w.recs, w.log, slog.New(slog.NewTextHandler(io.Discard, nil)))
	for _, id := range []string{"ended", "running"} {
		r := &coordinator.Replication{ID: id, SnapshotUUID: testUUID, ChunkSize: 1000, Window: 1 << 20,
			Targets: map[string]*coordinator.Target{"a": {State: coordinator.TPending, Site: "site-x"}}}
		if err := w.c.Create(w.ctx, r); err != nil {
			t.Fatal(err)
		}
		if _, err := w.c.BeginAttempt(w.ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.c.Fail(w.ctx, "ended", "stalled"); err != nil {
		t.Fatal(err)
	}
	// The site was away at the end: only the stream went.
	if err := w.log.Delete(w.ctx, "ended", nil); err != nil {
		t.Fatal(err)
	}
	// A copy whose record is gone altogether.
	if err := w.log.Open(w.ctx, "ghost", 1<<20, 1000, []coordinator.Dest{{Target: "a", Site: "site-x"}}); err != nil {
		t.Fatal(err)
	}
	streamsGone, _, err := w.c.Sweep(w.ctx, coordinator.DefaultRecordRetention)
	if err != nil {
		t.Fatal(err)
	}
	left, err := w.log.List(w.ctx, "site-x")
	if err != nil || !reflect.DeepEqual(left, []string{"running"}) {
		t.Errorf("site-x keeps %v (%v), want only the copy of the running replication", left, err)
	}
	if streamsGone != 3 { // ghost's stream, then the copies of ghost and ended
		t.Errorf("swept %d streams and copies, want 3", streamsGone)
	}
}
