// Package jobstatus tells, from the config file's jobs and the replication
// records, how each job and target stands: the last success and its age,
// the next scheduled run, the replication in progress, the last error, and
// whether the job is overdue (no success within twice its interval). It
// is pure: `snapjet status --config` reads the records and prints it.
package jobstatus

import (
	"path/filepath"
	"time"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/jobrun"
)

// Job is the status of one job.
type Job struct {
	Name     string        `json:"name"`
	Schedule string        `json:"schedule"`
	Interval time.Duration `json:"interval_ns"`
	NextRun  time.Time     `json:"next_run"`
	Overdue  bool          `json:"overdue"`
	Targets  []Target      `json:"targets"`
}

// Target is the status of one target of a job.
type Target struct {
	Name    string `json:"name"`    // the target name
	Display string `json:"display"` // as in the config file
	// LastSuccess is when the newest committed replication's record was
	// last updated (zero: none on record); Snapshot names it.
	LastSuccess time.Time     `json:"last_success,omitzero"`
	Age         time.Duration `json:"age_ns,omitempty"`
	Snapshot    string        `json:"snapshot,omitempty"`
	// Running is the replication in progress for this target, if any.
	Running *Running `json:"running,omitempty"`
	// LastError is the error of the newest replication that did not
	// commit here, when it is newer than the last success.
	LastError string `json:"last_error,omitempty"`
	Overdue   bool   `json:"overdue"`
}

// Running is a replication in progress.
type Running struct {
	ID           string `json:"id"`
	State        string `json:"state"`
	TargetState  string `json:"target_state"`
	BytesSent    int64  `json:"bytes_sent"`
	BytesApplied int64  `json:"bytes_applied"`
	Estimated    int64  `json:"estimated_bytes,omitempty"`
}

// Interval is the time between two runs of the schedule after now.
func Interval(s config.Schedule, now time.Time) time.Duration {
	a := s.Next(now)
	return s.Next(a).Sub(a)
}

// Of computes the status of jobs from the records at now. A target
// without a success within twice the job's interval is overdue, also one
// that never succeeded (nothing on record); a job is overdue when one of
// its targets is.
func Of(jobs []config.Job, recs []*coordinator.Replication, now time.Time) []Job {
	var out []Job
	for _, j := range jobs {
		js := Job{Name: j.Name, Schedule: j.Schedule.Spec, Interval: Interval(j.Schedule, now), NextRun: j.Next(now)}
		for _, t := range j.Targets {
			ts := target(j, t, recs, now)
			ts.Overdue = ts.LastSuccess.IsZero() || ts.Age > 2*js.Interval
			js.Overdue = js.Overdue || ts.Overdue
			js.Targets = append(js.Targets, ts)
		}
		out = append(out, js)
	}
	return out
}

func target(j config.Job, t config.Target, recs []*coordinator.Replication, now time.Time) Target {
	ts := Target{Name: jobrun.TargetName(t), Display: t.String()}
	var lastFail *coordinator.Replication
	for _, r := range recs { // oldest first
		if filepath.Clean(r.Source) != j.Source {
			continue
		}
		rt := r.Targets[ts.Name]
		if rt == nil || rt.State == coordinator.TMoved {
			continue
		}
		switch {
		case rt.State == coordinator.TCommitted:
			if r.Updated.After(ts.LastSuccess) {
				ts.LastSuccess, ts.Snapshot = r.Updated, r.SnapshotName
			}
		case !r.State.Terminal():
			ts.Running = &Running{ID: r.ID, State: string(r.State), TargetState: string(rt.State),
				BytesSent: r.BytesSent, BytesApplied: rt.BytesApplied, Estimated: r.EstimatedBytes}
			if rt.Error != "" {
				lastFail = r
			}
		default:
			lastFail = r
		}
	}
	if !ts.LastSuccess.IsZero() {
		ts.Age = now.Sub(ts.LastSuccess)
	}
	if lastFail != nil && lastFail.Updated.After(ts.LastSuccess) {
		ts.LastError = firstNonEmpty(lastFail.Targets[ts.Name].Error, lastFail.Error, "failed")
	}
	return ts
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
