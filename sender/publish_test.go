package sender

import "testing"

func TestWindowDecisions(t *testing.T) {
	fitsTests := []struct {
		name                 string
		stored, need, window int64
		msgs                 uint64
		want                 bool
	}{
		{"room left", 100, 10, 200, 3, true},
		{"exactly full", 190, 10, 200, 3, true},
		{"one byte over", 191, 10, 200, 3, false},
		{"an empty stream takes a chunk larger than the window", 0, 500, 200, 0, true},
	}
	for _, tc := range fitsTests {
		if got := fits(tc.stored, tc.need, tc.window, tc.msgs); got != tc.want {
			t.Errorf("fits %s: %v, want %v", tc.name, got, tc.want)
		}
	}
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
}
