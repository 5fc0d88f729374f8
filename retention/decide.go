// Package retention decides which snapshots of one side of a job (the
// source, or one target) to keep and which to delete, btrbk-style: the
// latest N, the newest snapshot of each of the most recent hourly, daily,
// weekly, monthly and yearly buckets, everything younger than a minimum
// age; and never, whatever the policy, a snapshot that replication still
// needs. It is a pure function of its input: the callers gather the facts
// (subvolumes, UUID matches, replication records) and do the deleting.
package retention

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Snapshot is one snapshot of a side; Name is unique within the side (the
// source snapshot's name, which targets keep).
type Snapshot struct {
	Name    string
	Created time.Time
}

// Target is what one target means for this side's snapshots.
type Target struct {
	Name string
	// Holds names the snapshots of this side that are common to the source
	// and this target (matched by UUID by the caller). The newest of them
	// is the target's incremental base.
	Holds map[string]bool
	// Failed: the target's last replication failed, so nothing is deleted
	// on this side until a run succeeds (the base it needs must survive
	// until it is replaced, and the failure may have left it in doubt).
	Failed bool
}

// Input is everything a decision depends on.
type Input struct {
	Now       time.Time
	Policy    Policy
	Location  *time.Location // bucket boundaries; nil means UTC
	Snapshots []Snapshot
	Targets   []Target
	// Needed maps snapshot names to the unfinished replication that needs
	// them (as its snapshot or its incremental parent).
	Needed map[string]string
	// Parent names the snapshot the next replication will send from: the
	// newest one that every target of the job holds. One send feeds all
	// targets, so that is older than a target's own base when the targets
	// are not in step, and every side must keep it or the next run falls
	// back to a full send.
	Parent string
	// Hold, when set, keeps everything and is the rule: the caller could
	// not learn a fact a protection depends on (e.g. the replication
	// records), and a snapshot deleted in doubt cannot come back.
	Hold string
}

// Decision is the verdict on one snapshot and the rule that gave it.
type Decision struct {
	Snapshot
	Keep bool
	Rule string
}

// Decide returns a decision for every snapshot, newest first. The first
// rule that keeps a snapshot names it: protections (failed target,
// incremental base, unfinished replication), then latest, min_age and the
// buckets from hourly to yearly.
func Decide(in Input) []Decision {
	snaps := newestFirst(in.Snapshots)
	loc := in.Location
	if loc == nil {
		loc = time.UTC
	}
	keep := protections(in, snaps)
	if in.Policy.IsZero() {
		addAll(keep, snaps, "no retention policy")
	}
	for i, s := range snaps {
		switch {
		case i < in.Policy.Latest:
			addRule(keep, s.Name, fmt.Sprintf("latest %d", in.Policy.Latest))
		case s.Created.After(in.Now):
			addRule(keep, s.Name, "created after now (clock skew?)")
		case in.Policy.MinAge > 0 && in.Now.Sub(s.Created) < in.Policy.MinAge:
			addRule(keep, s.Name, "min_age "+in.Policy.MinAge.String())
		}
	}
	for _, b := range buckets(in.Policy) {
		for name, key := range newestPerBucket(snaps, b.n, func(t time.Time) string { return b.key(t.In(loc)) }) {
			addRule(keep, name, b.name+" "+key)
		}
	}
	out := make([]Decision, len(snaps))
	for i, s := range snaps {
		rule, ok := keep[s.Name]
		if !ok {
			rule = "not kept by " + in.Policy.String()
		}
		out[i] = Decision{Snapshot: s, Keep: ok, Rule: rule}
	}
	return out
}

// protections holds what replication needs, whatever the policy.
func protections(in Input, snaps []Snapshot) map[string]string {
	keep := map[string]string{}
	if in.Hold != "" {
		addAll(keep, snaps, in.Hold)
	}
	for _, t := range in.Targets {
		if t.Failed {
			addAll(keep, snaps, "target "+t.Name+" failed last run")
		}
	}
	for _, t := range in.Targets {
		for _, s := range snaps {
			if t.Holds[s.Name] {
				addRule(keep, s.Name, "base of target "+t.Name)
				break
			}
		}
	}
	if in.Parent != "" {
		addRule(keep, in.Parent, "parent of the next replication (newest snapshot all targets hold)")
	}
	for _, s := range snaps {
		if id, ok := in.Needed[s.Name]; ok {
			addRule(keep, s.Name, "needed by unfinished replication "+id)
		}
	}
	return keep
}

// addRule records the first rule that keeps name; a second base rule is
// appended, so that a snapshot that is the base of two targets says so.
func addRule(keep map[string]string, name, rule string) {
	old, ok := keep[name]
	switch {
	case !ok:
		keep[name] = rule
	case strings.HasPrefix(old, "base of target ") && strings.HasPrefix(rule, "base of target "):
		keep[name] = old + ", " + strings.TrimPrefix(rule, "base of ")
	}
}

func addAll(keep map[string]string, snaps []Snapshot, rule string) {
	for _, s := range snaps {
		addRule(keep, s.Name, rule)
	}
}

type bucket struct {
	name string
	n    int
	key  func(time.Time) string
}

func buckets(p Policy) []bucket {
	return []bucket{
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%d-W%02d", y, w)
		}},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
	}
}

// newestPerBucket keeps the newest snapshot of each of the n most recent
// buckets that hold a snapshot. Buckets without one do not count, so a
// source that was off for a week still keeps n daily snapshots.
// snaps is newest first.
func newestPerBucket(snaps []Snapshot, n int, key func(time.Time) string) map[string]string {
	out := map[string]string{}
	last, seen := "", 0
	for _, s := range snaps {
		k := key(s.Created)
		if k == last {
			continue
		}
		if seen == n {
			break
		}
		last, seen = k, seen+1
		out[s.Name] = k
	}
	return out
}

// newestFirst sorts a copy by creation time, newest first; equal times by
// name, highest first (snapshot names end in their UTC time).
func newestFirst(in []Snapshot) []Snapshot {
	s := append([]Snapshot(nil), in...)
	sort.SliceStable(s, func(i, j int) bool {
		if !s[i].Created.Equal(s[j].Created) {
			return s[i].Created.After(s[j].Created)
		}
		return s[i].Name > s[j].Name
	})
	return s
}
