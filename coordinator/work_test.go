package coordinator_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// Each receiver reads only its own work views: a record written through
// the store publishes one view per target, a view changes only when what
// its receiver needs changes (another target's progress does not wake it),
// a target's watch sees no other target's keys, a view carries its own
// target's error and no other's, ListWork lists a target's views and no
// other's, and deleting the record deletes its views.
func TestWorkViews(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b := testBroker(t)
	s, err := coordinator.OpenStore(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := b.JS.KeyValue(ctx, streams.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	revision := func(target string) uint64 {
		t.Helper()
		e, err := kv.Get(ctx, "work."+target+".r1")
		if err != nil {
			t.Fatalf("work view of %s: %v", target, err)
		}
		return e.Revision()
	}

	watchA, err := s.WatchWork(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	r := &coordinator.Replication{ID: "r1", Source: "/srv/data", SnapshotName: "data.1", SnapshotUUID: "u1", State: coordinator.Sending, Attempt: 1,
		ChunkSize: 1 << 20, Window: 64 << 20, Targets: map[string]*coordinator.Target{
			"a": {State: coordinator.TPending, Attempts: 1, Site: "site-x"}, "b": {State: coordinator.TPending, Attempts: 1}}}
	rev, err := s.Create(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Work(ctx, "a", "r1")
	if err != nil {
		t.Fatal(err)
	}
	want := coordinator.Work{ID: "r1", Target: "a", Source: "/srv/data", State: coordinator.Sending, Attempt: 1, TargetState: coordinator.TPending,
		SnapshotName: "data.1", SnapshotUUID: "u1", ChunkSize: 1 << 20, Window: 64 << 20, Site: "site-x"}
	if *w != want || !w.Wanted() {
		t.Fatalf("work of a = %+v, want %+v, wanted", *w, want)
	}
	if got := <-watchA; got.ID != "r1" || got.Target != "a" {
		t.Fatalf("a's watch delivered %+v", got)
	}

	// b's progress changes nothing that a's receiver reads.
	revA, revB := revision("a"), revision("b")
	r.Targets["b"].State, r.Targets["b"].ChunksApplied, r.ChunksSent = coordinator.TReceiving, 7, 9
	if rev, err = s.Update(ctx, r, rev); err != nil {
		t.Fatal(err)
	}
	if revision("a") != revA {
		t.Error("a's view was rewritten for b's progress")
	}
	if revision("b") == revB {
		t.Error("b's view was not rewritten when b started receiving")
	}

	// a commits: its view says so and its receiver's job is over.
	r.Targets["a"].State = coordinator.TCommitted
	if rev, err = s.Update(ctx, r, rev); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-watchA:
		if got.Target != "a" || got.TargetState != coordinator.TCommitted || !got.Over(1) || got.Wanted() {
			t.Fatalf("a's watch delivered %+v, want a committed view", got)
		}
	case <-ctx.Done():
		t.Fatal("a's watch did not deliver the committed view")
	}

	// b fails: its view carries its own reason; a's view carries nothing
	// of it, not even the replication's error, which names b.
	r.Targets["b"].State, r.Targets["b"].Error = coordinator.TFailed, "target out of space"
	r.State, r.Error = coordinator.Failed, "target b failed: target out of space"
	if _, err = s.Update(ctx, r, rev); err != nil {
		t.Fatal(err)
	}
	r2 := &coordinator.Replication{ID: "r2", Source: "/srv/data", State: coordinator.Sending, Attempt: 1,
		Targets: map[string]*coordinator.Target{"a": {State: coordinator.TPending, Attempts: 1}}}
	if _, err := s.Create(ctx, r2); err != nil {
		t.Fatal(err)
	}
	listed := func(target string) string {
		t.Helper()
		ws, err := s.ListWork(ctx, target)
		if err != nil {
			t.Fatalf("ListWork(%s): %v", target, err)
		}
		var out []string
		for _, w := range ws {
			if w.Target != target || w.Updated.IsZero() {
				t.Errorf("ListWork(%s) listed %+v", target, w)
			}
			out = append(out, w.ID+":"+string(w.TargetState)+":"+w.Error)
		}
		return strings.Join(out, " ")
	}
	if got, want := listed("a"), "r1:committed: r2:pending:"; got != want {
		t.Errorf("a's listed views: %q, want %q (the least recently changed first)", got, want)
	}
	if got, want := listed("b"), "r1:failed:target out of space"; got != want {
		t.Errorf("b's listed views: %q, want %q", got, want)
	}
	if got := listed("c"); got != "" {
		t.Errorf("a target without work lists %q", got)
	}

	if err := s.Delete(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"a", "b"} {
		if _, err := s.Work(ctx, target, "r1"); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("work of %s after the record was deleted: %v, want ErrNotFound", target, err)
		}
	}
	if _, err := kv.Get(ctx, "work.b.r1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("b's view is still stored: %v", err)
	}
}
