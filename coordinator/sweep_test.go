package coordinator

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/streams"
)

// Sweep deletes the streams of finished replications and of records that
// are gone, expires old finished records, and touches nothing running.
func TestSweep(t *testing.T) {
	f := newFixture(t)
	f.create("running", "a")
	f.create("finished", "a")
	if _, err := f.c.Fail(f.ctx, "finished", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := streams.EnsureStream(f.ctx, f.b.JS, "ghost", 1<<20, 64<<10); err != nil {
		t.Fatal(err)
	}
	streamsGone, recordsGone, err := f.c.Sweep(f.ctx, DefaultRecordRetention)
	if err != nil {
		t.Fatal(err)
	}
	if streamsGone != 2 || recordsGone != 0 {
		t.Errorf("swept %d streams and %d records, want 2 and 0", streamsGone, recordsGone)
	}
	for id, want := range map[string]bool{"running": true, "finished": false, "ghost": false} {
		_, err := f.b.JS.Stream(f.ctx, streams.StreamName(id))
		if exists := !errors.Is(err, jetstream.ErrStreamNotFound); exists != want {
			t.Errorf("stream of %s exists=%v, want %v (%v)", id, exists, want, err)
		}
	}
	// A month later the finished record expires; the running one stays.
	f.c.now = func() time.Time { return time.Now().Add(DefaultRecordRetention + time.Hour) }
	if _, recordsGone, err = f.c.Sweep(f.ctx, DefaultRecordRetention); err != nil || recordsGone != 1 {
		t.Fatalf("expired %d records (%v), want 1", recordsGone, err)
	}
	if _, _, err := f.c.Store().Get(f.ctx, "finished"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the expired record is still there: %v", err)
	}
	if r := f.get("running"); r.State != Sending {
		t.Errorf("the running replication is %s", r.State)
	}
}
