package retention

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// side is the set of snapshot names one side holds.
type side map[string]Snapshot

func (s side) list() []Snapshot {
	var out []Snapshot
	for _, x := range s {
		out = append(out, x)
	}
	return newestFirst(out)
}

// common names what both sides hold.
func (s side) common(o side) map[string]bool {
	m := map[string]bool{}
	for n := range s {
		if _, ok := o[n]; ok {
			m[n] = true
		}
	}
	return m
}

// base is the newest snapshot both sides hold, "" for none.
func (s side) base(o side) string {
	for _, x := range s.list() {
		if _, ok := o[x.Name]; ok {
			return x.Name
		}
	}
	return ""
}

type simTarget struct {
	name    string
	held    side
	failed  bool
	down    func(round int) bool
	catchUp []string // what each return after an absence sent: "incremental from X"
}

// TestSimulation runs a job every 20 minutes of an injected clock for 60
// rounds (20 hours, across midnight) with two targets, one of them down
// for rounds 20 to 29, and checks after every round that each side keeps
// exactly what its policy and the protections say, that no base is ever
// deleted, and that the absent target catches up incrementally.
func TestSimulation(t *testing.T) {
	srcPol := Policy{Latest: 3, Hourly: 2}
	tgtPol := Policy{Latest: 3, Hourly: 4, Daily: 2}
	clock := time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC)
	src := side{}
	targets := []*simTarget{
		{name: "a", held: side{}, down: func(int) bool { return false }},
		{name: "b", held: side{}, down: func(r int) bool { return r >= 20 && r < 30 }},
	}
	for round := range 60 {
		clock = clock.Add(20 * time.Minute)
		s := snap(clock)
		src[s.Name] = s
		for _, tg := range targets {
			if tg.down(round) {
				tg.failed = true
				continue
			}
			base := src.base(tg.held)
			if tg.failed {
				if base == "" {
					t.Fatalf("round %d: target %s came back without a base on the source: it needs a full send", round, tg.name)
				}
				tg.catchUp = append(tg.catchUp, fmt.Sprintf("round %d: incremental from %s", round, base))
			}
			tg.held[s.Name] = s
			tg.failed = false
		}
		bases := map[string]string{}
		var srcTargets []Target
		for _, tg := range targets {
			bases[tg.name] = src.base(tg.held)
			srcTargets = append(srcTargets, Target{Name: tg.name, Holds: src.common(tg.held), Failed: tg.failed})
		}
		parent := nextParent(src, targets)
		prune(t, round, "source", src, Input{Now: clock, Policy: srcPol, Snapshots: src.list(), Targets: srcTargets, Parent: parent})
		for _, tg := range targets {
			if tg.down(round) {
				continue // its host is away: nothing runs there
			}
			prune(t, round, "target "+tg.name, tg.held, Input{Now: clock, Policy: tgtPol, Snapshots: tg.held.list(),
				Targets: []Target{{Name: tg.name, Holds: tg.held.common(src), Failed: tg.failed}}, Parent: parent})
		}
		for _, tg := range targets {
			b := bases[tg.name]
			if _, ok := src[b]; b != "" && !ok {
				t.Fatalf("round %d: the source deleted %s, the base of target %s", round, b, tg.name)
			}
			if _, ok := tg.held[b]; b != "" && !ok {
				t.Fatalf("round %d: target %s deleted its base %s", round, tg.name, b)
			}
			if _, ok := tg.held[parent]; parent != "" && !ok && !tg.down(round) {
				t.Fatalf("round %d: target %s deleted the next parent %s", round, tg.name, parent)
			}
		}
		anyFailed := targets[1].failed
		if !anyFailed && len(src) > srcPol.Latest+srcPol.Hourly+len(targets) {
			t.Errorf("round %d: the source keeps %d snapshots, more than latest+hourly+bases", round, len(src))
		}
	}
	if got := targets[1].catchUp; len(got) != 1 || !strings.Contains(got[0], "round 30: incremental from share.20261130T204000Z") {
		t.Errorf("catch-up of b = %v", got)
	}
	t.Logf("after 60 rounds: source %v; a %v; b %v; b's return: %v", names(src), names(targets[0].held), names(targets[1].held), targets[1].catchUp)
	// Round 59 is at 10:00: latest 3 on the source; on the targets latest
	// 3, the newest of hours 10, 09, 08 and 07, and of 1 and 30 November,
	// which for b is its last snapshot before it went away.
	for which, want := range map[string]string{
		"source": "100000 094000 092000", "a": "100000 094000 092000 084000 074000 234000", "b": "100000 094000 092000 084000 074000 204000"} {
		got := map[string]side{"source": src, "a": targets[0].held, "b": targets[1].held}[which]
		if g := strings.Join(names(got), " "); g != want {
			t.Errorf("%s after 60 rounds = %s, want %s", which, g, want)
		}
	}
}

// nextParent is the newest source snapshot every target holds.
func nextParent(src side, targets []*simTarget) string {
	for _, s := range src.list() {
		all := true
		for _, tg := range targets {
			_, ok := tg.held[s.Name]
			all = all && ok
		}
		if all {
			return s.Name
		}
	}
	return ""
}

// prune decides for one side, checks the verdicts against an independent
// reading of the policy, and deletes what it was told to.
func prune(t *testing.T, round int, what string, s side, in Input) {
	t.Helper()
	want := oracle(in)
	for _, d := range Decide(in) {
		if d.Keep != want[d.Name] {
			t.Fatalf("round %d %s: %s keep=%v (%s), the policy says keep=%v", round, what, d.Name, d.Keep, d.Rule, want[d.Name])
		}
		if !d.Keep {
			delete(s, d.Name)
		}
	}
	// What survives is stable: deciding again deletes nothing more.
	in.Snapshots = s.list()
	for _, d := range Decide(in) {
		if !d.Keep {
			t.Fatalf("round %d %s: a second pass would delete %s (%s)", round, what, d.Name, d.Rule)
		}
	}
}

// oracle reads the policy independently of Decide: it groups by bucket
// with maps instead of walking a sorted list.
func oracle(in Input) map[string]bool {
	keep := map[string]bool{}
	snaps := in.Snapshots
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Created.After(snaps[j].Created) })
	for i, s := range snaps {
		failed := false
		for _, tg := range in.Targets {
			failed = failed || tg.Failed
		}
		if i < in.Policy.Latest || failed {
			keep[s.Name] = true
		}
	}
	if in.Parent != "" {
		keep[in.Parent] = true
	}
	for _, tg := range in.Targets {
		for _, s := range snaps {
			if tg.Holds[s.Name] {
				keep[s.Name] = true
				break
			}
		}
	}
	for _, b := range buckets(in.Policy) {
		newest := map[string]Snapshot{}
		for _, s := range snaps {
			k := b.key(s.Created.UTC())
			if cur, ok := newest[k]; !ok || s.Created.After(cur.Created) {
				newest[k] = s
			}
		}
		var keys []string
		for k := range newest {
			keys = append(keys, k)
		}
		sort.Sort(sort.Reverse(sort.StringSlice(keys)))
		for i := 0; i < len(keys) && i < b.n; i++ {
			keep[newest[keys[i]].Name] = true
		}
	}
	return keep
}

// names lists a side's snapshots newest first by their time of day.
func names(s side) []string {
	var out []string
	for _, x := range s.list() {
		out = append(out, x.Created.Format("150405"))
	}
	return out
}
