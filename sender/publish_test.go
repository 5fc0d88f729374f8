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
}
