package coordinator

import (
	"testing"
	"time"
)

// TestProgressed drives the stall decision with a fake clock: each step
// changes the record and advances time, and says how long each target has
// made no progress afterwards.
func TestProgressed(t *testing.T) {
	type step struct {
		after  time.Duration
		change func(r *Replication)
		idle   map[string]time.Duration
	}
	rec := func() *Replication {
		return &Replication{ID: "r", State: Sending, Attempt: 1, ChunksSent: 10,
			Targets: map[string]*Target{
				"a": {State: TReceiving, ChunksApplied: 5},
				"b": {State: TReceiving, ChunksApplied: 5},
			}}
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a target that applies chunks is never idle, a silent one is, concurrently", []step{
			{0, nil, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Minute, func(r *Replication) { r.Targets["a"].ChunksApplied = 6 }, map[string]time.Duration{"a": 0, "b": time.Minute}},
			{time.Minute, func(r *Replication) { r.Targets["a"].ChunksApplied = 7 }, map[string]time.Duration{"a": 0, "b": 2 * time.Minute}},
		}},
		{"a target that applied all that is stored waits for the sender, not the other way round", []step{
			{0, nil, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Hour, func(r *Replication) { r.Targets["a"].ChunksApplied = 10 }, map[string]time.Duration{"a": 0, "b": time.Hour}},
			{time.Hour, nil, map[string]time.Duration{"a": 0, "b": 2 * time.Hour}},
			// The sender stores more: a is behind again, counted from when
			// it was last seen waiting.
			{time.Minute, func(r *Replication) { r.ChunksSent = 20 }, map[string]time.Duration{"a": time.Minute, "b": 2*time.Hour + time.Minute}},
			{time.Minute, nil, map[string]time.Duration{"a": 2 * time.Minute, "b": 2*time.Hour + 2*time.Minute}},
		}},
		{"in state sent everyone is behind until it committed", []step{
			{0, func(r *Replication) { r.State = Sent; r.Targets["a"].ChunksApplied = 10 }, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Minute, nil, map[string]time.Duration{"a": time.Minute, "b": time.Minute}},
			{time.Minute, func(r *Replication) { r.Targets["a"].State = TReceived }, map[string]time.Duration{"a": 0, "b": 2 * time.Minute}},
			{time.Minute, func(r *Replication) { r.Targets["a"].State = TCommitted }, map[string]time.Duration{"b": 3 * time.Minute}},
		}},
		{"a new attempt starts every clock again; a planned record waits for nobody", []step{
			{0, nil, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Minute, func(r *Replication) { r.State, r.Attempt = Planned, 2 }, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Hour, nil, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Minute, func(r *Replication) { r.State = Sending }, map[string]time.Duration{"a": time.Minute, "b": time.Minute}},
			{time.Minute, nil, map[string]time.Duration{"a": 2 * time.Minute, "b": 2 * time.Minute}},
		}},
		{"a target that left the record is forgotten", []step{
			{0, nil, map[string]time.Duration{"a": 0, "b": 0}},
			{time.Minute, func(r *Replication) { r.Targets["b"].State = TMoved }, map[string]time.Duration{"a": time.Minute}},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, marks := rec(), map[string]mark{}
			now := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			for i, s := range tc.steps {
				now = now.Add(s.after)
				if s.change != nil {
					s.change(r)
				}
				got := progressed(r, marks, now)
				if len(got) != len(s.idle) {
					t.Fatalf("step %d: idle %v, want %v", i, got, s.idle)
				}
				for name, want := range s.idle {
					if got[name] != want {
						t.Fatalf("step %d: idle %v, want %v", i, got, s.idle)
					}
				}
				if len(marks) != len(s.idle) {
					t.Fatalf("step %d: %d marks kept for %d active targets", i, len(marks), len(s.idle))
				}
			}
		})
	}
}
