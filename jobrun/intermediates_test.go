package jobrun

import (
	"fmt"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/retention"
)

// intermediates offers a returning target the snapshots its policy would
// keep once the new snapshot (taken now) is there, oldest first.
func TestIntermediates(t *testing.T) {
	at := func(hhmm string) btrfs.Info {
		return btrfs.Info{Path: "/src/.snapjet/share/share.20261201T" + hhmm + "00Z"}
	}
	missing := []btrfs.Info{at("0700"), at("0720"), at("0740"), at("0800"), at("0820"), at("0840"), at("0900"), at("0920")}
	now := func() time.Time { return time.Date(2026, 12, 1, 9, 40, 0, 0, time.UTC) }
	for _, tc := range []struct {
		policy retention.Policy
		want   string
	}{
		// latest 3 counts the new one: two intermediates.
		{retention.Policy{Latest: 3}, "[0900 0920]"},
		// hour 09 has the new one; hour 08's newest is 08:40.
		{retention.Policy{Hourly: 2}, "[0840]"},
		{retention.Policy{Latest: 3, Hourly: 3}, "[0740 0840 0900 0920]"},
		{retention.Policy{MinAge: 50 * time.Minute}, "[0900 0920]"},
		{retention.Policy{Latest: 1}, "[]"},
	} {
		var got []string
		for _, s := range intermediates(tc.policy, now, time.UTC)(missing) {
			got = append(got, s.Path[len(s.Path)-7:len(s.Path)-3])
		}
		if fmt.Sprint(got) != tc.want && !(tc.want == "[]" && got == nil) {
			t.Errorf("%v: %v, want %s", tc.policy, got, tc.want)
		}
	}
}
