package retention

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 11, 30, 14, 0, 0, 0, time.UTC) // a Monday

// snap names a snapshot the way the sender does: share.<UTC time>.
func snap(t time.Time) Snapshot {
	return Snapshot{Name: "share." + t.UTC().Format("20060102T150405Z"), Created: t}
}

// every returns n snapshots, the first at start, one every step.
func every(start time.Time, step time.Duration, n int) []Snapshot {
	var out []Snapshot
	for i := range n {
		out = append(out, snap(start.Add(time.Duration(i)*step)))
	}
	return out
}

func at(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s)
	if err != nil {
		panic(err)
	}
	return t
}

func holds(snaps ...Snapshot) map[string]bool {
	m := map[string]bool{}
	for _, s := range snaps {
		m[s.Name] = true
	}
	return m
}

// render prints decisions as "keep NAME-TIME rule" lines, the time being
// the part of the name after the dot, so that the table reads easily.
func render(ds []Decision) string {
	var b strings.Builder
	for _, d := range ds {
		verdict := "delete"
		if d.Keep {
			verdict = "keep"
		}
		fmt.Fprintf(&b, "%s %s: %s\n", verdict, strings.TrimPrefix(d.Name, "share."), d.Rule)
	}
	return b.String()
}

func TestDecide(t *testing.T) {
	hours3 := every(at("2026-11-30 11:00"), 20*time.Minute, 9) // 11:00 … 13:40, three per hour
	cases := []struct {
		name string
		in   Input
		want string
	}{
		{"zero policy keeps everything", Input{Now: t0, Snapshots: every(t0.Add(-2*time.Hour), time.Hour, 2)}, `
keep 20261130T130000Z: no retention policy
keep 20261130T120000Z: no retention policy
`},
		{"latest 2 of 4", Input{Now: t0, Policy: Policy{Latest: 2}, Snapshots: every(t0.Add(-4*time.Hour), time.Hour, 4)}, `
keep 20261130T130000Z: latest 2
keep 20261130T120000Z: latest 2
delete 20261130T110000Z: not kept by latest 2
delete 20261130T100000Z: not kept by latest 2
`},
		{"hourly 2 keeps the newest of the two latest hours", Input{Now: t0, Policy: Policy{Hourly: 2}, Snapshots: hours3}, `
keep 20261130T134000Z: hourly 2026-11-30T13
delete 20261130T132000Z: not kept by hourly 2
delete 20261130T130000Z: not kept by hourly 2
keep 20261130T124000Z: hourly 2026-11-30T12
delete 20261130T122000Z: not kept by hourly 2
delete 20261130T120000Z: not kept by hourly 2
delete 20261130T114000Z: not kept by hourly 2
delete 20261130T112000Z: not kept by hourly 2
delete 20261130T110000Z: not kept by hourly 2
`},
		{"latest wins over hourly, which still counts its bucket", Input{Now: t0, Policy: Policy{Latest: 1, Hourly: 2}, Snapshots: hours3[3:]}, `
keep 20261130T134000Z: latest 1
delete 20261130T132000Z: not kept by latest 1, hourly 2
delete 20261130T130000Z: not kept by latest 1, hourly 2
keep 20261130T124000Z: hourly 2026-11-30T12
delete 20261130T122000Z: not kept by latest 1, hourly 2
delete 20261130T120000Z: not kept by latest 1, hourly 2
`},
		{"daily buckets follow the location's midnight", Input{Now: t0, Policy: Policy{Daily: 2}, Location: time.FixedZone("UTC+2", 2*3600),
			Snapshots: []Snapshot{snap(at("2026-11-28 21:30")), snap(at("2026-11-28 22:30")), snap(at("2026-11-29 21:00")), snap(at("2026-11-29 23:00"))}}, `
keep 20261129T230000Z: daily 2026-11-30
keep 20261129T210000Z: daily 2026-11-29
delete 20261128T223000Z: not kept by daily 2
delete 20261128T213000Z: not kept by daily 2
`},
		{"days without a snapshot do not count", Input{Now: t0, Policy: Policy{Daily: 3},
			Snapshots: []Snapshot{snap(at("2026-11-01 10:00")), snap(at("2026-11-05 10:00")), snap(at("2026-11-09 10:00")), snap(at("2026-11-10 10:00"))}}, `
keep 20261110T100000Z: daily 2026-11-10
keep 20261109T100000Z: daily 2026-11-09
keep 20261105T100000Z: daily 2026-11-05
delete 20261101T100000Z: not kept by daily 3
`},
		{"ISO weeks span the new year, monthly and yearly", Input{Now: at("2027-01-04 12:00"), Policy: Policy{Weekly: 2, Monthly: 2, Yearly: 3},
			Snapshots: []Snapshot{snap(at("2025-06-01 00:00")), snap(at("2026-11-29 12:00")), snap(at("2026-12-27 12:00")), snap(at("2026-12-28 12:00")), snap(at("2027-01-02 12:00"))}}, `
keep 20270102T120000Z: weekly 2026-W53
keep 20261228T120000Z: monthly 2026-12
keep 20261227T120000Z: weekly 2026-W52
delete 20261129T120000Z: not kept by weekly 2, monthly 2, yearly 3
keep 20250601T000000Z: yearly 2025
`},
		{"min_age keeps the young whatever the counts", Input{Now: t0, Policy: Policy{Latest: 1, MinAge: 150 * time.Minute}, Snapshots: every(t0.Add(-3*time.Hour), time.Hour, 3)}, `
keep 20261130T130000Z: latest 1
keep 20261130T120000Z: min_age 2h30m0s
delete 20261130T110000Z: not kept by latest 1, min_age 2h30m0s
`},
		{"the base of each target survives any policy", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: every(t0.Add(-4*time.Hour), time.Hour, 4),
			Targets: []Target{
				{Name: "a", Holds: holds(snap(t0.Add(-4*time.Hour)), snap(t0.Add(-3*time.Hour)))},
				{Name: "b", Holds: holds(snap(t0.Add(-3 * time.Hour)))},
				{Name: "c", Holds: holds(snap(t0.Add(-time.Hour)))},
				{Name: "new"}}}, `
keep 20261130T130000Z: base of target c
delete 20261130T120000Z: not kept by latest 1
keep 20261130T110000Z: base of target a, target b
delete 20261130T100000Z: not kept by latest 1
`},
		{"the parent of the next run survives where the targets are out of step", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: every(t0.Add(-4*time.Hour), time.Hour, 4),
			Parent: snap(t0.Add(-3 * time.Hour)).Name, Targets: []Target{{Name: "a", Holds: holds(snap(t0.Add(-time.Hour)))}}}, `
keep 20261130T130000Z: base of target a
delete 20261130T120000Z: not kept by latest 1
keep 20261130T110000Z: parent of the next replication (newest snapshot all targets hold)
delete 20261130T100000Z: not kept by latest 1
`},
		{"a failed target holds everything", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: every(t0.Add(-3*time.Hour), time.Hour, 3),
			Targets: []Target{{Name: "a", Holds: holds(snap(t0.Add(-time.Hour)))}, {Name: "b", Failed: true, Holds: holds(snap(t0.Add(-3 * time.Hour)))}}}, `
keep 20261130T130000Z: target b failed last run
keep 20261130T120000Z: target b failed last run
keep 20261130T110000Z: target b failed last run
`},
		{"an unfinished replication keeps its snapshot and parent", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: every(t0.Add(-4*time.Hour), time.Hour, 4),
			Needed: map[string]string{snap(t0.Add(-3 * time.Hour)).Name: "share_20261130T120000Z", snap(t0.Add(-2 * time.Hour)).Name: "share_20261130T120000Z"}}, `
keep 20261130T130000Z: latest 1
keep 20261130T120000Z: needed by unfinished replication share_20261130T120000Z
keep 20261130T110000Z: needed by unfinished replication share_20261130T120000Z
delete 20261130T100000Z: not kept by latest 1
`},
		{"a snapshot from the future is kept", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: []Snapshot{snap(t0.Add(time.Hour)), snap(t0.Add(2 * time.Hour)), snap(t0.Add(-time.Hour))}}, `
keep 20261130T160000Z: latest 1
keep 20261130T150000Z: created after now (clock skew?)
delete 20261130T130000Z: not kept by latest 1
`},
		{"equal times order by name", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: []Snapshot{{"share.b", t0}, {"share.c", t0}, {"share.a", t0}}}, `
keep c: latest 1
delete b: not kept by latest 1
delete a: not kept by latest 1
`},
		{"a fact in doubt holds everything", Input{Now: t0, Policy: Policy{Latest: 1}, Snapshots: every(t0.Add(-2*time.Hour), time.Hour, 2), Hold: "replication records unreadable"}, `
keep 20261130T130000Z: replication records unreadable
keep 20261130T120000Z: replication records unreadable
`},
		{"no snapshots", Input{Now: t0, Policy: Policy{Latest: 1}}, "\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := "\n" + render(Decide(tc.in)); got != tc.want {
				t.Errorf("got:%s\nwant:%s", got, tc.want)
			}
		})
	}
}

func TestPolicyString(t *testing.T) {
	p := Policy{Latest: 3, Hourly: 2, Yearly: 1, MinAge: 36 * time.Hour}
	if got := p.String(); got != "latest 3, hourly 2, yearly 1, min_age 36h0m0s" {
		t.Errorf("String() = %q", got)
	}
	if got := (Policy{}).String(); got != "none" {
		t.Errorf("zero String() = %q", got)
	}
}
