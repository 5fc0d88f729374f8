package wanlink

import (
	"testing"
	"time"
)

func TestSummarise(t *testing.T) {
	t0 := time.Unix(0, 0)
	// 10 ms samples: idle start, busy, a 120 ms gap, busy, a 30 ms gap,
	// busy, idle tail (the sync) that must not count.
	per := []int64{0, 0, 9000, 9000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9000, 0, 0, 0, 9000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	var s []sample
	var total int64
	for i, b := range per {
		total += b
		s = append(s, sample{t0.Add(time.Duration(i) * 10 * time.Millisecond), total})
	}
	st := summarise(s)
	if st.Bytes != 4*9000 || st.LongestGap != 120*time.Millisecond || st.Gaps100 != 1 {
		t.Fatalf("%+v", st)
	}
	// The 120 ms gap ends after 18,000 bytes, the 30 ms one after 27,000:
	// a steady part from 10,000 to 26,000 bytes holds only the first.
	if l, n := gaps(s, 10000, 26000); l != 120*time.Millisecond || n != 1 {
		t.Fatalf("steady from 10000 to 26000: %v, %d", l, n)
	}
	if l, n := gaps(s, 20000, 30000); l != 30*time.Millisecond || n != 0 {
		t.Fatalf("steady from 20000 to 30000: %v, %d", l, n)
	}
}
