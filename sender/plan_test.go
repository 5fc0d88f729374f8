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

func TestChooseParent(t *testing.T) {
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
		want  int // snapshot number; 0 for a full send
	}{
		{"no targets: full", snaps, map[string]streams.Inventory{}, 0},
		{"no snapshots yet: full", nil, map[string]streams.Inventory{"a": holds("a")}, 0},
		{"target holds nothing: full", snaps, map[string]streams.Inventory{"a": holds("a")}, 0},
		{"newest held", snaps, map[string]streams.Inventory{"a": holds("a", snaps[0], snaps[1], snaps[2])}, 3},
		{"only an older one held", snaps, map[string]streams.Inventory{"a": holds("a", snaps[0])}, 1},
		{"newest held by every target", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[1], snaps[2]), "b": holds("b", snaps[0], snaps[1])}, 2},
		{"no snapshot common to all targets: full", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[2]), "b": holds("b", snaps[1])}, 0},
		{"one target empty: full", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[2]), "b": holds("b")}, 0},
		{"same name with another UUID does not count", snaps, map[string]streams.Inventory{
			"a": holds("a", impostor(snaps[2]))}, 0},
		{"same name with another UUID, older one held by UUID", snaps, map[string]streams.Inventory{
			"a": holds("a", snaps[0], impostor(snaps[2]))}, 1},
		{"held under another name counts", snaps, map[string]streams.Inventory{
			"a": holds("a", renamed(snaps[2], "monday"))}, 3},
		{"UUID case does not matter", snaps, map[string]streams.Inventory{
			"a": upper(holds("a", snaps[1]))}, 2},
		{"a writable source snapshot is never a parent", []btrfs.Info{snap(1, true), snap(2, false)}, map[string]streams.Inventory{
			"a": holds("a", snap(1, true), snap(2, false))}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := chooseParent(tc.snaps, tc.inv)
			if tc.want == 0 {
				if !got.UUID.IsZero() || got.Path != "" {
					t.Fatalf("parent %s (%s), want a full send", got.Path, got.UUID)
				}
				return
			}
			if want := snap(tc.want, true); got.UUID != want.UUID || got.Path != want.Path {
				t.Fatalf("parent %s (%s), want %s (%s)", got.Path, got.UUID, want.Path, want.UUID)
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
		{"data.20261124T064512Z", "data_20261124T064512Z"},
		{"data.20261124T064512Z-2", "data_20261124T064512Z-2"},
		{"my data.20261124T064512Z", "my_data_20261124T064512Z"},
		{"home/ü.20261124T064512Z", "home_20261124T064512Z"},
		{"a..*>b", "a_b"},
		{long, strings.Repeat("d", 103) + "_20261124T064512Z"}, // the tail, with the time, is kept
	}
	for _, tc := range tests {
		t.Run(tc.snapshot, func(t *testing.T) {
			got := replicationID(tc.snapshot)
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
		id := replicationID(name)
		if prev, ok := seen[id]; ok {
			t.Errorf("%q and %q share id %q", prev, name, id)
		}
		seen[id] = name
	}
}
