package main

import (
	"testing"

	"github.com/snapjet/snapjet/bench/report"
)

// The WAN goals are judged per cell against ssh+zstd in the same cell: the
// CPU goal only at text, 1 Gbit/s, 20 ms; the wire goal on every text cell.
func TestEvaluateWAN(t *testing.T) {
	cell := func(set, method string, rate, rtt int, wall, cpu, wire, use, gap float64) report.WANCell {
		return report.WANCell{Set: set, Method: method, RateMbit: rate, RTTms: rtt, Runs: 3,
			Wall: report.Spread{Median: wall}, CPUSeconds: report.Spread{Median: cpu}, Wire: report.Spread{Median: wire},
			Utilisation: report.Spread{Median: use}, SteadyGapMs: report.Spread{Median: gap}}
	}
	b := &bench{res: &report.Results{WANCells: []report.WANCell{
		cell("text", methodWANSSH, 1000, 20, 9.2, 12.6, 0.297, 0.28, 69),
		cell("text", methodWANSnapjet, 1000, 20, 7.2, 10.4, 0.451, 0.54, 80),
		cell("text", methodWANSSH, 200, 80, 17.6, 12, 0.297, 0.75, 10),
		cell("text", methodWANSnapjet, 200, 80, 16.0, 13, 0.290, 0.96, 5),
		cell("random", methodWANSSH, 200, 0, 47.4, 10, 1.0, 0.94, 0),
		cell("random", methodWANSnapjet, 200, 0, 45.2, 8, 1.0, 0.98, 0),
	}}}
	got := map[string]bool{}
	b.evaluateWAN(func(goal, _ string, met bool, _ string) { got[goal] = met })
	want := map[string]bool{
		"WAN text, 1000 Mbit/s, 20 ms: ≥ 0.95 of the link, ahead of ssh+zstd, no steady stall > 100 ms": false,
		"WAN text, 1000 Mbit/s, 20 ms: ≥ 1.2× ssh+zstd's throughput (CPU)":                              true,
		"WAN text, 1000 Mbit/s, 20 ms: wire ≤ zstd -3's":                                                false,
		"WAN text, 200 Mbit/s, 80 ms: ≥ 0.95 of the link, ahead of ssh+zstd, no steady stall > 100 ms":  true,
		"WAN text, 200 Mbit/s, 80 ms: wire ≤ zstd -3's":                                                 true,
		"WAN random, 200 Mbit/s, 0 ms: ≥ 0.95 of the link, ahead of ssh+zstd, no steady stall > 100 ms": true,
	}
	for goal, met := range want {
		if g, ok := got[goal]; !ok || g != met {
			t.Errorf("%s: met %v (judged %v), want %v", goal, g, ok, met)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d goals judged, want %d: %v", len(got), len(want), got)
	}
}
