package coordinator

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestReplicationTransitions(t *testing.T) {
	tests := []struct {
		from, to State
		ok       bool
	}{
		{Planned, Sending, true},
		{Planned, Failed, true},
		{Planned, Planned, true},
		{Sending, Sent, true},
		{Sending, Planned, true}, // restart
		{Sending, Failed, true},
		{Sent, Done, true},
		{Sent, Planned, true}, // verification failed: new attempt
		{Sent, Failed, true},
		{Failed, Planned, true}, // retry as a new run
		{Planned, Sent, false},  // nothing was sent
		{Planned, Done, false},
		{Sending, Done, false}, // no commit before the end marker
		{Sent, Sending, true},  // its stream is gone: send the attempt again
		{Done, Planned, false}, // done is final
		{Done, Failed, false},
		{Done, Sending, false},
		{Failed, Done, false},
		{Failed, Sending, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s to %s", tc.from, tc.to), func(t *testing.T) {
			r := &Replication{ID: "r1", State: tc.from}
			err := r.setState(tc.to)
			if tc.ok {
				if err != nil || r.State != tc.to {
					t.Fatalf("refused: %v (state %s)", err, r.State)
				}
				return
			}
			var te *ErrTransition
			if !errors.As(err, &te) {
				t.Fatalf("error %v, want *ErrTransition", err)
			}
			if r.State != tc.from {
				t.Errorf("a refused change moved the state to %s", r.State)
			}
			if te.From != string(tc.from) || te.To != string(tc.to) || !strings.Contains(err.Error(), "replication r1") {
				t.Errorf("error %q does not name what moved where", err)
			}
		})
	}
}

func TestTargetTransitions(t *testing.T) {
	tests := []struct {
		from, to TargetState
		ok       bool
	}{
		{TPending, TReceiving, true},
		{TPending, TReceived, true},
		{TPending, TCommitted, true}, // committed before a crash, reported after
		{TPending, TFailed, true},
		{TPending, TDiscarded, true},
		{TReceiving, TReceived, true},
		{TReceiving, TPending, true}, // rewind
		{TReceiving, TDiscarded, true},
		{TReceiving, TFailed, true},
		{TReceived, TCommitted, true},
		{TReceived, TDiscarded, true},
		{TDiscarded, TPending, true},  // the next attempt
		{TDiscarded, TFailed, true},   // out of attempts
		{TFailed, TPending, true},     // retry
		{TCommitted, TPending, false}, // a committed snapshot is never received again
		{TCommitted, TDiscarded, false},
		{TCommitted, TFailed, false},
		{TCommitted, TReceiving, false},
		{TDiscarded, TCommitted, false}, // a discarded partial is gone
		{TDiscarded, TReceived, false},
		{TDiscarded, TReceiving, false},
		{TFailed, TCommitted, false},
		{TFailed, TReceiving, false},
		{TFailed, TDiscarded, false},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s to %s", tc.from, tc.to), func(t *testing.T) {
			r := &Replication{ID: "r1", Targets: map[string]*Target{"nas": {State: tc.from, Error: "before"}}}
			err := r.setTarget("nas", tc.to, "why")
			got := r.Targets["nas"]
			if tc.ok {
				if err != nil || got.State != tc.to {
					t.Fatalf("refused: %v (state %s)", err, got.State)
				}
				return
			}
			var te *ErrTransition
			if !errors.As(err, &te) {
				t.Fatalf("error %v, want *ErrTransition", err)
			}
			if got.State != tc.from || got.Error != "before" {
				t.Errorf("a refused change altered the target: %+v", got)
			}
			if !strings.Contains(err.Error(), "target nas") {
				t.Errorf("error %q does not name the target", err)
			}
		})
	}
	r := &Replication{ID: "r1", Targets: map[string]*Target{}}
	if err := r.setTarget("ghost", TPending, ""); err == nil || !strings.Contains(err.Error(), "ghost") {
		t.Errorf("unknown target: %v", err)
	}
}

// targets builds a target map from name=state pairs.
func targets(states map[string]TargetState) map[string]*Target {
	out := map[string]*Target{}
	for name, s := range states {
		out[name] = &Target{State: s}
	}
	return out
}

func TestSettle(t *testing.T) {
	tests := []struct {
		name    string
		state   State
		targets map[string]TargetState
		want    State
		errSays string
	}{
		{"all committed", Sent, map[string]TargetState{"a": TCommitted, "b": TCommitted}, Done, ""},
		{"one failed", Sent, map[string]TargetState{"a": TCommitted, "b": TFailed}, Failed, "target b failed: disk full"},
		{"one still receiving", Sent, map[string]TargetState{"a": TCommitted, "b": TReceiving}, Sent, "earlier"},
		{"one discarded waits for the next attempt", Sent, map[string]TargetState{"a": TCommitted, "b": TDiscarded}, Sent, "earlier"},
		{"already failed stays", Failed, map[string]TargetState{"a": TCommitted}, Failed, "earlier"},
		{"failed while sending", Sending, map[string]TargetState{"a": TFailed}, Failed, "target a failed: disk full"},
		{"a moved target is settled in its own record", Sent, map[string]TargetState{"a": TCommitted, "b": TMoved}, Done, ""},
		{"a moved target does not hide a failure", Sent, map[string]TargetState{"a": TFailed, "b": TMoved}, Failed, "target a failed: disk full"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &Replication{ID: "r1", State: tc.state, Error: "earlier", Targets: targets(tc.targets)}
			for _, tg := range r.Targets {
				if tg.State == TFailed {
					tg.Error = "disk full"
				}
			}
			if err := r.settle(); err != nil {
				t.Fatal(err)
			}
			if r.State != tc.want {
				t.Errorf("state %s, want %s", r.State, tc.want)
			}
			if tc.errSays == "" && r.Error != "" || !strings.Contains(r.Error, tc.errSays) {
				t.Errorf("error %q, want %q", r.Error, tc.errSays)
			}
		})
	}
}

func TestNewAttemptResetsAllButFinishedTargets(t *testing.T) {
	r := &Replication{
		ID: "r1", State: Sent, Attempt: 2,
		ChunksSent: 4, BytesSent: 4000, WireBytes: 1000, TotalBytes: 4000, TotalChunks: 4, Digest: "sha256:aa",
		Targets: map[string]*Target{
			"done":      {State: TCommitted, BytesApplied: 4000, ChunksApplied: 4, Path: "/t/snap"},
			"broken":    {State: TFailed, Error: "out of space", BytesApplied: 10},
			"received":  {State: TReceived, Attempts: 2, BytesApplied: 4000, ChunksApplied: 4, RedeliveredChunks: 2},
			"discarded": {State: TDiscarded, Attempts: 1, Error: "corrupt chunk 2", BytesApplied: 2000, ChunksApplied: 2},
			"moved":     {State: TMoved, Attempts: 1, MovedTo: "r1_moved"},
		},
	}
	if err := r.newAttempt("digest mismatch"); err != nil {
		t.Fatal(err)
	}
	if r.State != Planned || r.Attempt != 3 || r.Error != "digest mismatch" {
		t.Errorf("record %s attempt %d error %q", r.State, r.Attempt, r.Error)
	}
	if r.ChunksSent != 0 || r.BytesSent != 0 || r.WireBytes != 0 || r.TotalBytes != 0 || r.TotalChunks != 0 || r.Digest != "" {
		t.Errorf("send counters survive: %+v", r)
	}
	want := map[string]Target{
		"done":      {State: TCommitted, BytesApplied: 4000, ChunksApplied: 4, Path: "/t/snap"},
		"broken":    {State: TFailed, Error: "out of space", BytesApplied: 10},
		"received":  {State: TPending, Attempts: 3}, // each active target spends one attempt
		"discarded": {State: TPending, Attempts: 2},
		"moved":     {State: TMoved, Attempts: 1, MovedTo: "r1_moved"},
	}
	for name, w := range want {
		if got := *r.Targets[name]; got != w {
			t.Errorf("target %s: %+v, want %+v", name, got, w)
		}
	}
	done := &Replication{ID: "r2", State: Done, Attempt: 1, Targets: targets(map[string]TargetState{"a": TCommitted})}
	var te *ErrTransition
	if err := done.newAttempt("again"); !errors.As(err, &te) || done.Attempt != 1 {
		t.Errorf("new attempt of a done replication: %v, attempt %d", err, done.Attempt)
	}
}
