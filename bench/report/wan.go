package report

import (
	"fmt"
	"sort"
	"strings"
)

// WANRow is one run of one method over the emulated WAN link.
type WANRow struct {
	Set          string  `json:"set"` // "random" or "text"
	Method       string  `json:"method"`
	RateMbit     int     `json:"rate_mbit"`
	RTTms        int     `json:"rtt_ms"`
	Repeat       int     `json:"repeat"`
	WallSeconds  float64 `json:"wall_seconds"`
	StreamBytes  int64   `json:"stream_bytes"`
	LinkBytes    int64   `json:"link_bytes"`    // the shaped veth's tx counter, headers included
	PayloadBytes int64   `json:"payload_bytes"` // what the delay relay forwarded towards the receiver
	// Utilisation is LinkBytes / (rate × wall): the share of the link's
	// capacity the row used from its first process's start to the target's
	// sync.
	Utilisation  float64 `json:"utilisation"`
	LongestGapMs float64 `json:"longest_gap_ms"` // longest idle stretch of the link between busy intervals
	Gaps100      int     `json:"gaps_100ms"`     // idle stretches of 100 ms or more
	// SteadyGapMs and SteadyGaps100 count only the gaps of the steady
	// transfer, after its first and before its last 4 MiB.
	SteadyGapMs   float64 `json:"steady_gap_ms"`
	SteadyGaps100 int     `json:"steady_gaps_100ms"`
	CPUSeconds    float64 `json:"cpu_seconds"`
	Verified      string  `json:"verified"`
	Error         string  `json:"error,omitempty"`
	// Compression is snapjet's chunks per zstd level, from its log
	// ("default:40 better:216").
	Compression string `json:"compression,omitempty"`
}

// Spread is the median and the range of one figure over a cell's repeats.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spread(v []float64) Spread {
	if len(v) == 0 {
		return Spread{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: m, Min: s[0], Max: s[len(s)-1]}
}

// WANCell is one method on one set over one link, summarised over its
// repeats that succeeded.
type WANCell struct {
	Set          string `json:"set"`
	Method       string `json:"method"`
	RateMbit     int    `json:"rate_mbit"`
	RTTms        int    `json:"rtt_ms"`
	Runs         int    `json:"runs"`
	Failed       int    `json:"failed"`
	Wall         Spread `json:"wall_seconds"`
	Utilisation  Spread `json:"utilisation"`
	LongestGapMs Spread `json:"longest_gap_ms"`
	CPUSeconds   Spread `json:"cpu_seconds"`
	Wire         Spread `json:"wire"`           // payload bytes over send-stream bytes
	Gaps100      int    `json:"gaps_100ms_max"` // most 100 ms gaps in one repeat
	SteadyGapMs  Spread `json:"steady_gap_ms"`
	// SteadyGaps100 is the most 100 ms gaps of a steady transfer in one
	// repeat.
	SteadyGaps100 int `json:"steady_gaps_100ms_max"`
}

// SummariseWAN groups rows into cells, in the order the cells first ran.
func SummariseWAN(rows []WANRow) []WANCell {
	type key struct {
		set, method string
		rate, rtt   int
	}
	var order []key
	groups := map[key][]WANRow{}
	for _, r := range rows {
		k := key{r.Set, r.Method, r.RateMbit, r.RTTms}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	var cells []WANCell
	for _, k := range order {
		c := WANCell{Set: k.set, Method: k.method, RateMbit: k.rate, RTTms: k.rtt}
		var wall, util, gap, steady, cpu, wire []float64
		for _, r := range groups[k] {
			if r.Error != "" {
				c.Failed++
				continue
			}
			c.Runs++
			wall = append(wall, r.WallSeconds)
			util = append(util, r.Utilisation)
			gap = append(gap, r.LongestGapMs)
			steady = append(steady, r.SteadyGapMs)
			cpu = append(cpu, r.CPUSeconds)
			if r.StreamBytes > 0 {
				wire = append(wire, float64(r.PayloadBytes)/float64(r.StreamBytes))
			}
			c.Gaps100 = max(c.Gaps100, r.Gaps100)
			c.SteadyGaps100 = max(c.SteadyGaps100, r.SteadyGaps100)
		}
		c.Wall, c.Utilisation, c.LongestGapMs, c.SteadyGapMs, c.CPUSeconds, c.Wire = spread(wall), spread(util), spread(gap), spread(steady), spread(cpu), spread(wire)
		cells = append(cells, c)
	}
	return cells
}

func rate(mbit int) string {
	if mbit%1000 == 0 {
		return fmt.Sprintf("%d Gbit/s", mbit/1000)
	}
	return fmt.Sprintf("%d Mbit/s", mbit)
}

// wanMarkdown renders the WAN cells, one line per cell.
func wanMarkdown(r *Results) string {
	if len(r.WANCells) == 0 {
		return ""
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n#### WAN: the receiving side behind a shaped link with added round-trip time\n\n")
	p("Each cell ran %s; figures are the median with the range (min–max) in brackets. Link use is the shaped veth's transmitted bytes (headers included) over rate × wall. Longest gap is the longest stretch, between the first and the last busy 10 ms interval, in which the link carried less than 3000 bytes. ≥100 ms gaps is the most such gaps in one repeat. Steady counts only the gaps after the first and before the last 4 MiB on the link (start-up and the end apart). CPU is user+system of the process tree (nats-server included for snapjet). Wire is the payload towards the receiver (ssh's encrypted bytes, snapjet's NATS traffic) over the send stream.\n\n", repeats(r.WAN))
	p("| Data | Link | RTT | Method | Wall s | Link use | Longest gap ms | ≥100 ms gaps | Steady: longest gap ms | Steady: ≥100 ms gaps | CPU s | Wire | Runs |\n|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range r.WANCells {
		runs := fmt.Sprint(c.Runs)
		if c.Failed > 0 {
			runs += fmt.Sprintf(" (%d failed)", c.Failed)
		}
		if c.Runs == 0 {
			p("| %s | %s | %d ms | %s | failed | | | | | | | | %s |\n", c.Set, rate(c.RateMbit), c.RTTms, cell(c.Method), runs)
			continue
		}
		p("| %s | %s | %d ms | %s | %s | %s | %s | %d | %s | %d | %s | %s | %s |\n", c.Set, rate(c.RateMbit), c.RTTms, cell(c.Method),
			fmtSpread(c.Wall, "%.1f"), fmtSpread(c.Utilisation, "%.2f"), fmtSpread(c.LongestGapMs, "%.0f"), c.Gaps100,
			fmtSpread(c.SteadyGapMs, "%.0f"), c.SteadyGaps100, fmtSpread(c.CPUSeconds, "%.1f"), fmtSpread(c.Wire, "%.3f"), runs)
	}
	levels := false
	for _, row := range r.WAN {
		if row.Compression != "" {
			if !levels {
				p("\nsnapjet's chunks per compression level, each repeat:\n")
				levels = true
			}
			p("\n- %s, %s, %d ms, repeat %d: %s", row.Set, rate(row.RateMbit), row.RTTms, row.Repeat, row.Compression)
		}
	}
	if levels {
		p("\n")
	}
	for _, row := range r.WAN {
		if row.Error != "" {
			p("\n- failed: %s, %s, %d Mbit/s, %d ms, repeat %d: %s", row.Set, row.Method, row.RateMbit, row.RTTms, row.Repeat, cell(row.Error))
		}
	}
	p("\n")
	return b.String()
}

func repeats(rows []WANRow) string {
	n := 0
	for _, r := range rows {
		n = max(n, r.Repeat)
	}
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%d times", n)
}

func fmtSpread(s Spread, f string) string {
	if s.Min == s.Max {
		return fmt.Sprintf(f, s.Median)
	}
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.Median, s.Min, s.Max)
}
