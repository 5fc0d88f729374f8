package jobstatus

import (
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
)

func TestOf(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 30, 0, 0, time.UTC)
	sched, _ := cron.ParseStandard("0 * * * *")
	job := config.Job{Name: "share", Source: "/data/share", Schedule: config.Schedule{Spec: "0 * * * *", Schedule: sched},
		Targets: []config.Target{{Remote: "ok"}, {Remote: "late"}, {Remote: "never"}, {Remote: "busy"}}}
	rec := func(id string, updated time.Time, state coordinator.State, targets map[string]*coordinator.Target) *coordinator.Replication {
		return &coordinator.Replication{ID: id, Source: "/data/share", SnapshotName: id, State: state, Updated: updated, Targets: targets}
	}
	recs := []*coordinator.Replication{
		rec("r1", now.Add(-5*time.Hour), coordinator.Done, map[string]*coordinator.Target{
			"late": {State: coordinator.TCommitted}, "ok": {State: coordinator.TCommitted}}),
		rec("r2", now.Add(-30*time.Minute), coordinator.Failed, map[string]*coordinator.Target{
			"late": {State: coordinator.TFailed, Error: "no space left on target"}, "ok": {State: coordinator.TCommitted},
			"busy": {State: coordinator.TCommitted}}),
		rec("r3", now.Add(-time.Minute), coordinator.Sending, map[string]*coordinator.Target{
			"busy": {State: coordinator.TPending, BytesApplied: 100}}),
		{ID: "other", Source: "/data/other", State: coordinator.Done, Updated: now, Targets: map[string]*coordinator.Target{"never": {State: coordinator.TCommitted}}},
	}
	st := Of([]config.Job{job}, recs, now)
	if len(st) != 1 {
		t.Fatal(st)
	}
	j := st[0]
	if j.Interval != time.Hour || !j.NextRun.Equal(time.Date(2026, 12, 1, 13, 0, 0, 0, time.UTC)) || !j.Overdue {
		t.Errorf("job: %+v", j)
	}
	want := map[string]struct {
		age     time.Duration
		snap    string
		err     string
		overdue bool
		running bool
	}{
		"ok":    {30 * time.Minute, "r2", "", false, false},
		"late":  {5 * time.Hour, "r1", "no space left on target", true, false},
		"never": {0, "", "", true, false},
		"busy":  {30 * time.Minute, "r2", "", false, true},
	}
	for _, ts := range j.Targets {
		w := want[ts.Name]
		if ts.Age != w.age || ts.Snapshot != w.snap || ts.LastError != w.err || ts.Overdue != w.overdue || (ts.Running != nil) != w.running {
			t.Errorf("%s: %+v, want %+v", ts.Name, ts, w)
		}
	}
	if r := j.Targets[3].Running; r == nil || r.ID != "r3" || r.BytesApplied != 100 {
		t.Errorf("running: %+v", r)
	}
}
