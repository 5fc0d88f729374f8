package sender

import (
	"fmt"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/streams"
)

func uuid(t *testing.T, n int) btrfs.UUID {
	t.Helper()
	u, err := btrfs.ParseUUID(fmt.Sprintf("%08x-1111-2222-3333-444455556666", n))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestGroupByParent(t *testing.T) {
	// Three source snapshots, oldest first, as btrfs.List returns them.
	snap := func(n int, ro bool) btrfs.Info {
		name := fmt.Sprintf("data.2026112%dT000000Z", n)
		return btrfs.Info{Path: "/src/.snapjet/data/" + name, Name: name, UUID: uuid(t, n), ReadOnly: ro}
	}
	snaps := []btrfs.Info{snap(1, true), snap(2, true), snap(3, true)}
	holds := func(target string, held ...btrfs.Info) streams.Inventory {
		inv := streams.Inventory{Target: target, Snapshots: []streams.Held{}}
		for _, h := range held {
			inv.Snapshots = append(inv.Snapshots, streams.Held{Name: h.Name, Path: "/t/" + h.Name, ReceivedUUID: h.UUID.String()})
		}
		return inv
	}
	renamed := func(s btrfs.Info, name string) btrfs.Info { s.Name = name; return s }
	impostor := func(s btrfs.Info) btrfs.Info { s.UUID = uuid(t, 99); return s } // same name, other UUID
	upper := func(inv streams.Inventory) streams.Inventory {
		for i := range inv.Snapshots {
			inv.Snapshots[i].ReceivedUUID = strings.ToUpper(inv.Snapshots[i].ReceivedUUID)
		}
		return inv
	}
	tests := []struct {
		name  string
		snaps []btrfs.Info
		inv   map[string]streams.Inventory
		want  map[string]int // target -> parent snapshot number; 0 for a full send
	}{
		{"no targets: no groups", snaps, map[string]streams.Inventory{}, map[string]int{}},
		{"no snapshots yet: full", nil, map[string]streams.Inventory{"a": holds("a")}, map[string]int{"a": 0}},
		{"target holds nothing: full", snaps, map[string]streams.Inventory{"a": holds("a")}, map[string]int{"a": 0}},
		{"newest held", snaps, map[string]streams.Inventory{"a": holds("a", snaps[0], snaps[1], snaps[2])}, map[string]int{"a": 3}},
		{"only an older one held", snaps, map[string]streams.Inventory{"a": holds("a", snaps[0])}, map[string]int{"a": 1}},
		{"each target its own newest", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[1], snaps[2]), "b": holds("b", snaps[0], snaps[1])}, map[string]int{"a": 3, "b": 2}},
		{"targets that hold the same newest share it", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[2]), "b": holds("b", snaps[1], snaps[2]), "c": holds("c", snaps[0])}, map[string]int{"a": 3, "b": 3, "c": 1}},
		{"a new target gets a full send, the others their incremental", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[2]), "b": holds("b", snaps[2]), "new": holds("new")}, map[string]int{"a": 3, "b": 3, "new": 0}},
		{"same name with another UUID does not count", snaps, map[string]streams.Inventory{
			"a": holds("a", impostor(snaps[2]))}, map[string]int{"a": 0}},
		{"same name with another UUID, older one held by UUID", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[0], impostor(snaps[2]))}, map[string]int{"a": 1}},
		{"held under another name counts", snaps, map[string]streams.Inventory{
			"a": holds("a", renamed(snaps[2], "monday"))}, map[string]int{"a": 3}},
		{"UUID case does not matter", snaps, map[string]streams.Inventory{
			"a": upper(holds("a", snaps[1]))}, map[string]int{"a": 2}},
		{"a writable source snapshot is never a parent", []btrfs.Info{snap(1, true), snap(2, false)}, map[string]streams.Inventory{
			"a": holds("a", snap(1, true), snap(2, false))}, map[string]int{"a": 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			groups := groupByParent(tc.snaps, tc.inv)
			got := map[string]int{}
			first := ""
			for _, g := range groups {
				if len(g.Targets) == 0 || g.Targets[0] <= first {
					t.Fatalf("groups %+v: empty or not ordered by their first target", groups)
				}
				first = g.Targets[0]
				n := 0
				for i, sn := range snaps {
					if g.ParentUUID == sn.UUID.String() && g.Parent == sn.Path {
						n = i + 1
					}
				}
				if n == 0 && (g.ParentUUID != "" || g.Parent != "") {
					t.Fatalf("group %+v has a parent that is no source snapshot", g)
				}
				for _, tg := range g.Targets {
					got[tg] = n
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("parents %v, want %v", got, tc.want)
			}
			// One group per distinct parent: targets sharing a parent share a stream.
			distinct := map[int]bool{}
			for _, n := range tc.want {
				distinct[n] = true
			}
			if len(groups) != len(distinct) {
				t.Fatalf("%d groups for %d distinct parents: %+v", len(groups), len(distinct), groups)
			}
		})
	}
}

func TestReplicationID(t *testing.T) {
	long := strings.Repeat("d", 150) + ".20261124T064512Z"
	tests := []struct {
		snapshot string
		want     string
	}{
		{"data.20261124T064512Z", "data_20261124T064512Z_0b4fd3a2"},
		{"data.20261124T064512Z-2", "data_20261124T064512Z-2_0b4fd3a2"},
		{"my data.20261124T064512Z", "my_data_20261124T064512Z_0b4fd3a2"},
		{"home/ü.20261124T064512Z", "home_20261124T064512Z_0b4fd3a2"},
		{"a..*>b", "a_b_0b4fd3a2"},
		{long, strings.Repeat("d", 83) + "_20261124T064512Z_0b4fd3a2"}, // the tail, with the time, is kept
	}
	for _, tc := range tests {
		t.Run(tc.snapshot, func(t *testing.T) {
			got := replicationID(tc.snapshot, sourceUUID)
			if got != tc.want {
				t.Errorf("replicationID(%q) = %q, want %q", tc.snapshot, got, tc.want)
			}
			if !streams.ValidID(got) {
				t.Errorf("replicationID(%q) = %q is not a valid stream id", tc.snapshot, got)
			}
		})
	}
	// Snapshots of one source differ in time or suffix; their ids must too.
	seen := map[string]string{}
	for _, name := range []string{"data.20261124T064512Z", "data.20261124T064513Z", "data.20261124T064512Z-2",
		"data.20261124T064512Z-3", long, strings.Replace(long, "064512", "064513", 1)} {
		id := replicationID(name, sourceUUID)
		if prev, ok := seen[id]; ok {
			t.Errorf("%q and %q share id %q", prev, name, id)
		}
		seen[id] = name
	}
	// Two sources of the same name (two hosts replicating /srv/data) never
	// share a record.
	if a, b := replicationID("data.20261124T064512Z", sourceUUID), replicationID("data.20261124T064512Z", "7c1e0f7e-0000-4000-8000-000000000001"); a == b {
		t.Errorf("sources with other UUIDs share id %q", a)
	}
}

const sourceUUID = "0b4fd3a2-52c8-7d4e-a2f0-3c1d44e7a9b1"

// The catch-up plan: a target that was away is offered the snapshots newer
// than its base (read-only ones, oldest first) and receives the ones its
// chooser keeps; a target with no base or nothing missing gets none.
func TestCatchUpPlan(t *testing.T) {
	snap := func(n int, ro bool) btrfs.Info {
		name := fmt.Sprintf("data.2026112%dT000000Z", n)
		return btrfs.Info{Path: "/src/.snapjet/data/" + name, Name: name, UUID: uuid(t, n), ReadOnly: ro}
	}
	snaps := []btrfs.Info{snap(1, true), snap(2, true), snap(3, false), snap(4, true), snap(5, true)}
	holds := func(n ...int) streams.Inventory {
		inv := streams.Inventory{Snapshots: []streams.Held{}}
		for _, k := range n {
			inv.Snapshots = append(inv.Snapshots, streams.Held{ReceivedUUID: uuid(t, k).String()})
		}
		return inv
	}
	var offered = map[string]string{}
	// The chooser keeps every other snapshot offered, newest included.
	choose := func(missing []btrfs.Info) []btrfs.Info {
		var names []string
		var out []btrfs.Info
		for i, s := range missing {
			names = append(names, s.Name[12:13])
			if (len(missing)-1-i)%2 == 0 {
				out = append(out, s)
			}
		}
		offered[strings.Join(names, "")] = ""
		return out
	}
	plan := catchUpPlan(snaps, map[string]streams.Inventory{
		"away": holds(1), "behind": holds(1, 2), "current": holds(5), "new": holds(), "other": holds(4)}, choose)
	got := map[int][]string{}
	for n := 1; n <= 5; n++ {
		if ts := plan[uuid(t, n)]; ts != nil {
			got[n] = ts
		}
	}
	// away lacks 2, 4, 5 (3 is writable, no snapshot): keeps 2 and 5;
	// behind lacks 4, 5: keeps 5; other lacks 5: keeps it.
	want := map[int][]string{2: {"away"}, 5: {"away", "behind", "other"}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("plan %v, want %v", got, want)
	}
	for _, o := range []string{"245", "45", "5"} {
		if _, ok := offered[o]; !ok {
			t.Errorf("never offered %s; offered %v", o, offered)
		}
	}
	if _, ok := offered[""]; ok || len(offered) != 3 {
		t.Errorf("offered %v: a target with no base or nothing missing is offered nothing", offered)
	}
}

func TestSameState(t *testing.T) {
	for _, tc := range []struct {
		theirs, ours string
		fix          string // "" when the receiver sees this sender's work
	}{
		{"hub", "hub", ""},
		{"", "", ""},
		{"", "hub", ""}, // a receiver too old to say
		{"site-c", "hub", "--js-domain hub"},
		{"site-c", "", "give the hub one"},
	} {
		err := sameState("nas-c", tc.theirs, tc.ours)
		switch {
		case tc.fix == "" && err != nil:
			t.Errorf("receiver in %q, sender in %q: %v", tc.theirs, tc.ours, err)
		case tc.fix != "" && (err == nil || !strings.Contains(err.Error(), tc.fix)):
			t.Errorf("receiver in %q, sender in %q: %v, want the fix %q", tc.theirs, tc.ours, err, tc.fix)
		}
	}
}
