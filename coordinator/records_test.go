package coordinator_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/coordinator/coordtest"
	"github.com/snapjet/snapjet/internal/broker"
)

// TestRecordsConformance holds every Records implementation to the
// contract in its doc comment: the JetStream KV adapter and the in-memory
// store that unit tests use.
func TestRecordsConformance(t *testing.T) {
	impls := map[string]func(t *testing.T) coordinator.Records{
		"memory": func(*testing.T) coordinator.Records { return coordtest.NewRecords() },
		"jetstream": func(t *testing.T) coordinator.Records {
			s, err := coordinator.OpenStore(t.Context(), testBroker(t).JS)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) { recordsContract(t, open(t)) })
	}
}

// testBroker is an in-process JetStream server of its own, for the
// conformance suites of the JetStream adapters.
func testBroker(t *testing.T) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: t.Name(),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func recordsContract(t *testing.T, s coordinator.Records) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rec := func(id string, created time.Time) *coordinator.Replication {
		return &coordinator.Replication{ID: id, State: coordinator.Planned, Attempt: 1, Created: created,
			Targets: map[string]*coordinator.Target{"a": {State: coordinator.TPending, Attempts: 1}}}
	}
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

	if _, _, err := s.Get(ctx, "nope"); !errors.Is(err, coordinator.ErrNotFound) {
		t.Fatalf("Get of an unknown id: %v, want ErrNotFound", err)
	}
	watch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rev1, err := s.Create(ctx, rec("r2", t0.Add(time.Minute)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, rec("r2", t0)); !errors.Is(err, coordinator.ErrExists) {
		t.Fatalf("second Create of r2: %v, want ErrExists", err)
	}
	if _, err := s.Create(ctx, rec("r1", t0)); err != nil {
		t.Fatal(err)
	}

	got, rev, err := s.Get(ctx, "r2")
	if err != nil || rev != rev1 || got.ID != "r2" || got.Targets["a"].Attempts != 1 {
		t.Fatalf("Get r2: %+v rev %d (%v), want the created record at rev %d", got, rev, err, rev1)
	}
	// A caller's copy is its own: changing it changes nothing stored.
	got.Targets["a"].State = coordinator.TFailed
	if again, _, _ := s.Get(ctx, "r2"); again.Targets["a"].State != coordinator.TPending {
		t.Fatal("a record read from the store shares memory with the store")
	}

	got.State = coordinator.Sending
	rev2, err := s.Update(ctx, got, rev)
	if err != nil || rev2 == rev {
		t.Fatalf("Update at the current revision: rev %d, %v", rev2, err)
	}
	if _, err := s.Update(ctx, got, rev); !errors.Is(err, coordinator.ErrConflict) {
		t.Fatalf("Update at a stale revision: %v, want ErrConflict", err)
	}
	if _, err := s.Update(ctx, rec("ghost", t0), 1); !errors.Is(err, coordinator.ErrNotFound) && !errors.Is(err, coordinator.ErrConflict) {
		t.Fatalf("Update of an unknown id: %v", err)
	}

	all, err := s.List(ctx)
	if err != nil || len(all) != 2 || all[0].ID != "r1" || all[1].ID != "r2" {
		t.Fatalf("List: %v (%v), want r1 then r2 (oldest first)", ids(all), err)
	}

	// The watch saw both creations and the update, in any interleaving
	// but with the update of r2 last for r2.
	seen := map[string]coordinator.State{}
	for deadline := time.After(10 * time.Second); seen["r1"] == "" || seen["r2"] != coordinator.Sending; {
		select {
		case r := <-watch:
			seen[r.ID] = r.State
		case <-deadline:
			t.Fatalf("the watch delivered %v, want r1 and r2 in state sending", seen)
		}
	}

	if err := s.Delete(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "r1"); err != nil {
		t.Fatalf("Delete of an unknown id: %v", err)
	}
	if _, _, err := s.Get(ctx, "r1"); !errors.Is(err, coordinator.ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if all, _ := s.List(ctx); len(all) != 1 {
		t.Fatalf("List after Delete: %v", ids(all))
	}

	// A new watch starts with the current records; it closes with its ctx.
	wctx, stop := context.WithCancel(ctx)
	w2, err := s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-w2:
		if r.ID != "r2" {
			t.Fatalf("a new watch started with %s, want the current r2", r.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a new watch did not deliver the current record")
	}
	stop()
	for deadline := time.After(10 * time.Second); ; {
		select {
		case _, ok := <-w2:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("the watch did not close when its context ended")
		}
	}
}

func ids(rs []*coordinator.Replication) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}
