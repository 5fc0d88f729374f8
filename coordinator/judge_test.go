package coordinator

import (
	"strings"
	"testing"

	"github.com/snapjet/snapjet/streams"
)

const (
	snapUUID = "0b4fd3a2-52c8-7d4e-a2f0-3c1d44e7a9b1"
	digest   = "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
)

// sentRecord is attempt 2 of a replication whose end marker is stored:
// 4 chunks, 4000 bytes. Target "a" is receiving, "b" is still pending.
func sentRecord() *Replication {
	return &Replication{
		ID: "r1", State: Sent, Attempt: 2, SnapshotUUID: snapUUID,
		TotalChunks: 4, TotalBytes: 4000, Digest: digest,
		Targets: targets(map[string]TargetState{"a": TReceiving, "b": TPending}),
	}
}

// alone is sentRecord with "b" committed: "a" is the only active target.
func alone() *Replication {
	r := sentRecord()
	r.Targets["b"].State = TCommitted
	return r
}

// received is the report of a target that applied the whole stream intact.
func received() streams.Report {
	return streams.Report{Event: streams.EvReceived, Target: "a", Attempt: 2, ChunksApplied: 4, BytesApplied: 4000,
		Digest: digest, ReceivedUUID: snapUUID, ReadOnly: true}
}

func TestJudge(t *testing.T) {
	type want struct {
		action      streams.Action
		effect      effect
		reason      string // in the restart reason or the verdict's reason
		target      TargetState
		targetError string
		state       State
		attempts    int // the target's attempt count afterwards
	}
	tests := []struct {
		name        string
		record      func() *Replication
		report      func() streams.Report
		startStored bool
		want        want
	}{
		{
			name:   "first progress moves pending to receiving",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvProgress, Target: "b", Attempt: 2, ChunksApplied: 1, BytesApplied: 1000}
			},
			want: want{action: streams.ActOK, effect: noEffect, target: TReceiving, state: Sent},
		},
		{
			name:   "rewind while the stream holds its start replays to the target",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvRewind, Target: "a", Attempt: 2}
			},
			startStored: true,
			want:        want{action: streams.ActOK, effect: resetConsumer, reason: "lost its partial", target: TPending, state: Sent, attempts: 1},
		},
		{
			name:   "rewind of the only active target after the start was dropped restarts the attempt",
			record: alone,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvRewind, Target: "a", Attempt: 2}
			},
			want: want{action: streams.ActStale, effect: restart, reason: "lost its partial", target: TReceiving, state: Sent},
		},
		{
			name:   "received with matching facts commits",
			record: sentRecord,
			report: received,
			want:   want{action: streams.ActCommit, effect: noEffect, target: TReceived, state: Sent},
		},
		{
			name:   "received with another digest is discarded",
			record: alone,
			report: func() streams.Report { r := received(); r.Digest = "sha256:00"; return r },
			want:   want{action: streams.ActDiscard, effect: restart, reason: "digest", target: TDiscarded, targetError: "digest", state: Sent},
		},
		{
			name:   "received with a chunk missing is discarded",
			record: alone,
			report: func() streams.Report { r := received(); r.ChunksApplied = 3; return r },
			want:   want{action: streams.ActDiscard, effect: restart, reason: "applied 3 chunks", target: TDiscarded, targetError: "applied", state: Sent},
		},
		{
			name:   "received with bytes missing is discarded",
			record: alone,
			report: func() streams.Report { r := received(); r.BytesApplied = 3999; return r },
			want:   want{action: streams.ActDiscard, effect: restart, reason: "3999 bytes", target: TDiscarded, targetError: "applied", state: Sent},
		},
		{
			name:   "received writable subvolume is discarded",
			record: alone,
			report: func() streams.Report { r := received(); r.ReadOnly = false; return r },
			want:   want{action: streams.ActDiscard, effect: restart, reason: "not read-only", target: TDiscarded, targetError: "not read-only", state: Sent},
		},
		{
			name:   "received with another received UUID is discarded",
			record: alone,
			report: func() streams.Report {
				r := received()
				r.ReceivedUUID = "11111111-2222-3333-4444-555555555555"
				return r
			},
			want: want{action: streams.ActDiscard, effect: restart, reason: "received UUID", target: TDiscarded, targetError: "received UUID", state: Sent},
		},
		{
			name:   "received with no received UUID is discarded",
			record: alone,
			report: func() streams.Report { r := received(); r.ReceivedUUID = ""; return r },
			want:   want{action: streams.ActDiscard, effect: restart, reason: "received UUID", target: TDiscarded, targetError: "received UUID", state: Sent},
		},
		{
			name:   "received before the end marker was stored is discarded",
			record: func() *Replication { r := alone(); r.State = Sending; return r },
			report: received,
			want:   want{action: streams.ActDiscard, effect: restart, reason: "before the sender stored its end marker", target: TDiscarded, targetError: "end marker", state: Sending},
		},
		{
			name:   "committed while another target is active keeps the replication open",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvCommitted, Target: "a", Attempt: 2, Path: "/t/snap"}
			},
			want: want{action: streams.ActOK, effect: dropConsumer, target: TCommitted, state: Sent},
		},
		{
			name: "last commit settles to done",
			record: func() *Replication {
				r := sentRecord()
				r.Targets["a"].State, r.Targets["b"].State = TReceived, TCommitted
				return r
			},
			report: func() streams.Report {
				return streams.Report{Event: streams.EvCommitted, Target: "a", Attempt: 2, Path: "/t/snap"}
			},
			want: want{action: streams.ActOK, effect: dropConsumer, target: TCommitted, state: Done},
		},
		{
			name: "a repeated commit report changes nothing",
			record: func() *Replication {
				r := sentRecord()
				r.Targets["a"].State = TCommitted
				return r
			},
			report: func() streams.Report {
				return streams.Report{Event: streams.EvCommitted, Target: "a", Attempt: 2, Path: "/t/snap"}
			},
			want: want{action: streams.ActOK, effect: noEffect, target: TCommitted, state: Sent},
		},
		{
			name:   "permanent failure fails the target only",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "out of space", Permanent: true}
			},
			want: want{action: streams.ActDiscard, effect: dropConsumer, target: TFailed, targetError: "out of space", state: Sent},
		},
		{
			name: "permanent failure of the last active target settles to failed",
			record: func() *Replication {
				r := sentRecord()
				r.Targets["b"].State = TCommitted
				return r
			},
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "out of space", Permanent: true}
			},
			want: want{action: streams.ActDiscard, effect: dropConsumer, target: TFailed, targetError: "out of space", state: Failed},
		},
		{
			name:   "temporary failure of the only active target restarts the attempt",
			record: alone,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "corrupt chunk 2"}
			},
			want: want{action: streams.ActDiscard, effect: restart, reason: "corrupt chunk 2", target: TDiscarded, targetError: "corrupt chunk 2", state: Sent},
		},
		{
			name:   "missing parent restarts with a full send",
			record: alone,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "parent gone", ParentMissing: true}
			},
			want: want{action: streams.ActDiscard, effect: restartFull, reason: "parent gone", target: TDiscarded, targetError: "parent gone", state: Sent},
		},
		{
			name:   "temporary failure of one of two targets replays the stream to it alone",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "corrupt chunk 2"}
			},
			startStored: true,
			want:        want{action: streams.ActReplay, effect: resetConsumer, reason: "corrupt chunk 2", target: TPending, state: Sent, attempts: 1},
		},
		{
			name:   "temporary failure of one of two targets moves it to a stream of its own when the start is gone",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "corrupt chunk 2"}
			},
			want: want{action: streams.ActDiscard, effect: split, reason: "corrupt chunk 2", target: TMoved, targetError: "corrupt chunk 2", state: Sent},
		},
		{
			name:        "a digest mismatch on one of two targets moves it: replaying the same stream cannot help",
			record:      sentRecord,
			report:      func() streams.Report { r := received(); r.Digest = "sha256:00"; return r },
			startStored: true,
			want:        want{action: streams.ActDiscard, effect: split, reason: "digest", target: TMoved, targetError: "digest", state: Sent},
		},
		{
			name:   "a corrupt stored chunk on one of two targets moves it even though the start is stored",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "corrupt chunk 3", StreamBad: true}
			},
			startStored: true,
			want:        want{action: streams.ActDiscard, effect: split, reason: "corrupt chunk 3", target: TMoved, targetError: "corrupt chunk 3", state: Sent},
		},

		{
			name:   "missing parent on one of two targets moves it to a full send of its own",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "parent gone", ParentMissing: true}
			},
			startStored: true,
			want:        want{action: streams.ActDiscard, effect: splitFull, reason: "parent gone", target: TMoved, targetError: "parent gone", state: Sent},
		},
		{
			name:   "rewind of one of two targets after the start was dropped moves it",
			record: sentRecord,
			report: func() streams.Report {
				return streams.Report{Event: streams.EvRewind, Target: "a", Attempt: 2}
			},
			want: want{action: streams.ActStale, effect: split, reason: "lost its partial", target: TMoved, targetError: "lost its partial", state: Sent},
		},
		{
			name: "a target past its attempt budget fails alone",
			record: func() *Replication {
				r := sentRecord()
				r.Targets["a"].Attempts = 3
				return r
			},
			report: func() streams.Report {
				return streams.Report{Event: streams.EvFailed, Target: "a", Attempt: 2, Reason: "corrupt chunk 2"}
			},
			startStored: true,
			want:        want{action: streams.ActDiscard, effect: dropConsumer, reason: "corrupt chunk 2", target: TFailed, targetError: "gave up after 3 attempts", state: Sent, attempts: 3},
		},
		{
			name:   "a report of an earlier attempt is stale",
			record: sentRecord,
			report: func() streams.Report { r := received(); r.Attempt = 1; return r },
			want:   want{action: streams.ActStale, effect: noEffect, target: TReceiving, state: Sent},
		},
		{
			name:   "a report of a later attempt is stale",
			record: sentRecord,
			report: func() streams.Report { r := received(); r.Attempt = 3; return r },
			want:   want{action: streams.ActStale, effect: noEffect, target: TReceiving, state: Sent},
		},
		{
			name:   "a report on a finished replication is stale",
			record: func() *Replication { r := sentRecord(); r.State = Done; return r },
			report: received,
			want:   want{action: streams.ActStale, effect: noEffect, target: TReceiving, state: Done},
		},
		{
			name: "a failed target's report is stale",
			record: func() *Replication {
				r := sentRecord()
				r.Targets["a"].State = TFailed
				return r
			},
			report: received,
			want:   want{action: streams.ActStale, effect: noEffect, target: TFailed, state: Sent},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, rep := tc.record(), tc.report()
			v, eff, reason, err := judge(r, rep, tc.startStored, DefaultMaxAttempts)
			if err != nil {
				t.Fatalf("judge: %v", err)
			}
			w := tc.want
			if v.Action != w.action || eff != w.effect {
				t.Errorf("verdict %s with effect %d, want %s with %d", v.Action, eff, w.action, w.effect)
			}
			if v.Attempt != 2 {
				t.Errorf("verdict attempt %d, want the record's 2", v.Attempt)
			}
			if w.reason != "" {
				if !strings.Contains(v.Reason+reason, w.reason) {
					t.Errorf("reasons %q / %q do not say %q", v.Reason, reason, w.reason)
				}
				if eff != noEffect && eff != dropConsumer && !strings.Contains(reason, rep.Target) {
					t.Errorf("reason %q does not name the target", reason)
				}
			} else if reason != "" {
				t.Errorf("reason %q where none was expected", reason)
			}
			if got := r.Targets[rep.Target].Attempts; got != w.attempts {
				t.Errorf("target attempts %d, want %d", got, w.attempts)
			}
			if w.target == TMoved && r.Targets[rep.Target].MovedTo != SplitID(r.ID, rep.Target) {
				t.Errorf("moved to %q, want %q", r.Targets[rep.Target].MovedTo, SplitID(r.ID, rep.Target))
			}
			for name, o := range r.Targets {
				if name != rep.Target && o.State == TMoved {
					t.Errorf("another target %s moved too", name)
				}
			}
			if w.action == streams.ActDiscard && !strings.Contains(v.Reason+reason, w.reason) {
				t.Errorf("discard reason %q does not say %q", v.Reason+reason, w.reason)
			}
			tg := r.Targets[rep.Target]
			if tg.State != w.target || !strings.Contains(tg.Error, w.targetError) || w.targetError == "" && tg.Error != "" {
				t.Errorf("target %s %q, want %s %q", tg.State, tg.Error, w.target, w.targetError)
			}
			if r.State != w.state {
				t.Errorf("replication %s, want %s", r.State, w.state)
			}
			if r.Attempt != 2 {
				t.Errorf("judge changed the attempt to %d; only Restart may", r.Attempt)
			}
		})
	}
}

func TestJudgeCopiesCounters(t *testing.T) {
	r := sentRecord()
	rep := streams.Report{Event: streams.EvProgress, Target: "a", Attempt: 2, ChunksApplied: 3, BytesApplied: 3000, Redelivered: 1, BusyMs: 250, ElapsedMs: 1000}
	if _, _, _, err := judge(r, rep, false, DefaultMaxAttempts); err != nil {
		t.Fatal(err)
	}
	if got := *r.Targets["a"]; got.ChunksApplied != 3 || got.BytesApplied != 3000 || got.RedeliveredChunks != 1 || got.BusyMs != 250 || got.ElapsedMs != 1000 {
		t.Errorf("counters %+v", got)
	}
	stale := rep
	stale.Attempt, stale.ChunksApplied = 1, 99
	if _, _, _, err := judge(r, stale, false, DefaultMaxAttempts); err != nil {
		t.Fatal(err)
	}
	if r.Targets["a"].ChunksApplied != 3 {
		t.Errorf("a stale report changed the counters to %d", r.Targets["a"].ChunksApplied)
	}
}

func TestJudgeRefusesNonsense(t *testing.T) {
	tests := []struct {
		name string
		rep  streams.Report
		says string
	}{
		{"unknown target", streams.Report{Event: streams.EvProgress, Target: "ghost", Attempt: 2}, `"ghost"`},
		{"unknown event", streams.Report{Event: "teleported", Target: "a", Attempt: 2}, "teleported"},
		{"commit of a failed target", streams.Report{Event: streams.EvCommitted, Target: "failed", Attempt: 2}, "cannot go from failed to committed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := sentRecord()
			r.Targets["failed"] = &Target{State: TFailed}
			_, _, _, err := judge(r, tc.rep, false, DefaultMaxAttempts)
			if err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Errorf("judge: %v, want an error saying %s", err, tc.says)
			}
		})
	}
}
