package coordinator

import "testing"

func TestPurgeDecisions(t *testing.T) {
	purgeTests := []struct {
		name             string
		first, last, flr uint64
		wantKeep         uint64
		wantOK           bool
	}{
		{"nothing acked: wait", 1, 10, 0, 1, false},
		{"acked up to 4: drop 1-4", 1, 10, 4, 5, true},
		{"all acked: the last message stays", 1, 10, 10, 10, true},
		{"the slowest target holds the floor at the first message", 5, 10, 4, 5, false},
		{"only the last message left: wait", 10, 10, 10, 10, false},
		{"a target without consumer holds the floor at 0", 3, 10, 0, 1, false},
	}
	for _, tc := range purgeTests {
		keep, ok := purgeTo(tc.first, tc.last, tc.flr)
		if keep != tc.wantKeep && tc.wantOK || ok != tc.wantOK {
			t.Errorf("purgeTo %s: keep %d ok %v, want %d %v", tc.name, keep, ok, tc.wantKeep, tc.wantOK)
		}
	}
	floorTests := []struct {
		name        string
		active      []string
		floors      map[string]uint64
		wantFloor   uint64
		wantSlowest string
	}{
		{"everyone acked all", []string{"a", "b"}, map[string]uint64{"a": 10, "b": 10}, 10, ""},
		{"the slowest holds it", []string{"a", "b"}, map[string]uint64{"a": 10, "b": 4}, 4, "b"},
		{"a target without consumer holds it at 0", []string{"a", "b"}, map[string]uint64{"a": 10}, 0, "b"},
		{"a finished target does not count", []string{"a"}, map[string]uint64{"a": 9, "b": 1}, 9, "a"},
	}
	for _, tc := range floorTests {
		floor, slowest := ackFloor(tc.active, tc.floors, 10)
		if floor != tc.wantFloor || slowest != tc.wantSlowest {
			t.Errorf("ackFloor %s: %d %q, want %d %q", tc.name, floor, slowest, tc.wantFloor, tc.wantSlowest)
		}
	}
}
