package main

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/snapjet/snapjet/bench/report"
)

const mib = 1 << 20

func (b *bench) findRow(set, method string) *report.Row {
	for i := range b.res.Rows {
		if r := &b.res.Rows[i]; r.Dataset == set && r.Method == method && r.Error == "" {
			return r
		}
	}
	return nil
}

var snapjetMethods = []struct{ method, short, profile string }{
	{methodReplicate, "replicate", "replicate"},
	{methodThree, "three processes", "three"},
}

// evaluateTargets compares the run's figures with the goals. They
// are figures to report, not pass/fail tests; a missed one gets the top of
// its CPU profile when --profile was given.
func (b *bench) evaluateTargets() {
	add := func(goal, figure string, met bool, profileRow string) {
		b.res.Targets = append(b.res.Targets, report.Target{Goal: goal, Figure: figure, Met: met})
		if !met && profileRow != "" {
			b.attachProfiles(profileRow)
		}
	}
	raw, ssh := b.findRow("a", methodRaw), b.findRow("a", methodSSH)
	zstdB := b.findRow("b", methodSSH)
	for _, m := range snapjetMethods {
		if r := b.findRow("a", m.method); r != nil && raw != nil {
			add("(a) snapjet "+m.short+" ≥ 0.8× raw pipe", fmt.Sprintf("%.2f× (%.0f vs %.0f MB/s)", r.MBps/raw.MBps, r.MBps, raw.MBps), r.MBps >= 0.8*raw.MBps, "a-"+m.profile)
		}
		if r := b.findRow("a", m.method); r != nil && ssh != nil {
			add("(a) snapjet "+m.short+" ≥ 1.2× ssh+zstd", fmt.Sprintf("%.2f× (%.0f vs %.0f MB/s)", r.MBps/ssh.MBps, r.MBps, ssh.MBps), r.MBps >= 1.2*ssh.MBps, "a-"+m.profile)
		}
		if r := b.findRow("b", m.method); r != nil && zstdB != nil {
			add("(b) snapjet "+m.short+" wire bytes ≤ zstd -3", fmt.Sprintf("%.1f MB vs %.1f MB (%.2f×)", float64(r.WireBytes)/1e6, float64(zstdB.WireBytes)/1e6, float64(r.WireBytes)/float64(zstdB.WireBytes)), r.WireBytes <= zstdB.WireBytes, "")
		}
	}
	for _, label := range []string{"snapjet send", "snapjet receive"} {
		var peak int64
		var where string
		for _, r := range b.res.Rows {
			for _, p := range r.Procs {
				if p.Label == label && p.PeakRSS > peak {
					peak, where = p.PeakRSS, r.Dataset+", "+r.Method
				}
			}
		}
		if peak > 0 {
			add("peak RSS of "+label+" < 100 MiB", fmt.Sprintf("%.1f MiB at most (%s)", float64(peak)/mib, where), peak < 100*mib, "")
		}
	}
	if len(b.res.Memory) == 2 && b.res.Memory[0].Error == "" && b.res.Memory[1].Error == "" {
		small, large := b.res.Memory[0], b.res.Memory[1]
		for _, x := range []struct {
			name       string
			small, big int64
		}{{"snapjet send", small.SenderRSS, large.SenderRSS}, {"snapjet receive", small.ReceiverRSS, large.ReceiverRSS}} {
			// Within 10% or 16 MiB, whichever is more: what a garbage-collected
			// process varies by between runs of one size (seen in repeated
			// quick runs), far below the 4× of memory that grows with the
			// stream.
			ok := x.big <= x.small+max(x.small/10, 16*mib)
			add(x.name+" peak RSS does not grow with the stream (4× the stream: within +10% or +16 MiB)", fmt.Sprintf("%.1f MiB at %.2f GiB, %.1f MiB at %.2f GiB", float64(x.small)/mib, float64(small.StreamBytes)/(1<<30), float64(x.big)/mib, float64(large.StreamBytes)/(1<<30)), ok, "")
		}
	}
	for _, x := range b.res.Resume {
		if x.Error != "" {
			add("resume after "+x.Scenario+" at 50%: ≤ 2% extra bytes, ≤ 5 s extra", "failed: "+x.Error, false, "")
			continue
		}
		add("resume after "+x.Scenario+" at 50%: ≤ 2% extra bytes, ≤ 5 s extra", fmt.Sprintf("%+.2f%% bytes, %+.2f s", x.ExtraPercent, x.ExtraSeconds), x.ExtraPercent <= 2 && x.ExtraSeconds <= 5, "")
	}
	for _, m := range snapjetMethods {
		if r := b.findRow("d", m.method); r != nil {
			add("(d) incremental snapshot→commit < 2 s, "+m.short, fmt.Sprintf("%.2f s", r.WallSeconds), r.WallSeconds < 2, "d-"+m.profile)
		}
	}
}

// attachProfiles adds the top of every CPU profile taken in the named row.
func (b *bench) attachProfiles(row string) {
	for _, p := range b.profiles {
		if p.row != row {
			continue
		}
		done := false
		for _, have := range b.res.Profiles {
			done = done || have.File == p.path
		}
		if done {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=25", b.cfg.snapjet, p.path).CombinedOutput()
		cancel()
		top := string(out)
		if err != nil {
			top = fmt.Sprintf("pprof failed: %v\n%s", err, out)
		} else if i := strings.Index(top, "Duration:"); i >= 0 {
			top = top[i:] // drop the file, build ID and date lines
		}
		b.res.Profiles = append(b.res.Profiles, report.Profile{Row: row + " (snapjet " + p.proc + ")", File: p.path, Top: strings.TrimSpace(top)})
	}
}
