package report

import (
	"fmt"
	"sort"
	"strings"
)

const (
	mib = 1 << 20
	mb  = 1e6
)

// Markdown renders r as the section that goes into bench/README.md.
func Markdown(r *Results) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("### Latest results: %s run, %s\n\n", r.Mode, r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	m := r.Machine
	p("Machine: %s, %d cores, %.1f GiB RAM, kernel %s; loop images on %s.\n", m.CPU, m.Cores, float64(m.MemoryBytes)/(1<<30), m.Kernel, m.Disk)
	names := make([]string, 0, len(m.Versions))
	for k := range m.Versions {
		names = append(names, k)
	}
	sort.Strings(names)
	var vs []string
	for _, k := range names {
		vs = append(vs, fmt.Sprintf("%s: `%s`", k, m.Versions[k]))
	}
	p("Versions: %s. Seed %d; the run took %s.\n\n", strings.Join(vs, ", "), r.Seed, r.Finished.Sub(r.Started).Round(1e9))

	p("#### Data sets\n\n| Set | Content | Files | Size | Send stream | Generated in |\n|---|---|--:|--:|--:|--:|\n")
	for _, d := range r.Datasets {
		p("| %s | %s | %d | %s | %s | %.1f s |\n", d.Key, d.Description, d.Files, size(d.FileBytes), size(d.StreamBytes), d.GenSeconds)
	}

	if len(r.Rows) > 0 {
		p("\n#### Throughput, bytes on the wire, CPU and memory\n\n")
		p("MB/s is send-stream bytes (10^6) per wall second; × raw is that throughput relative to the raw pipe on the same set. Wire is what crossed the connection. CPU is user+system of the whole process tree. Written is what the process tree wrote towards disk (receive target and broker store). Peak RSS is per process, in MiB.\n\n")
		p("| Set | Method | Wall s | MB/s | × raw | Wire MB | Wire/stream | CPU s | Written MB | Peak RSS (MiB) | Check |\n|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
		for _, row := range r.Rows {
			if row.Error != "" {
				p("| %s | %s | failed | | | | | | | | %s |\n", row.Dataset, cell(row.Method), cell(row.Error))
				continue
			}
			ratio := ""
			if row.StreamBytes > 0 {
				ratio = fmt.Sprintf("%.3f", float64(row.WireBytes)/float64(row.StreamBytes))
			}
			vsRaw := "–"
			if row.VsRaw > 0 {
				vsRaw = fmt.Sprintf("%.2f", row.VsRaw)
			}
			var written int64
			for _, pr := range row.Procs {
				written += pr.Written
			}
			p("| %s | %s | %.2f | %.0f | %s | %.1f | %s | %.1f | %.0f | %s | %s |\n", row.Dataset, cell(row.Method), row.WallSeconds, row.MBps, vsRaw,
				float64(row.WireBytes)/mb, ratio, row.CPUSeconds, float64(written)/mb, rss(row), cell(row.Verified))
		}
	}
	seen := map[string]bool{}
	for _, row := range r.Rows {
		if row.WireNote == "" || row.Error != "" || seen[row.Method] {
			continue
		}
		if len(seen) == 0 {
			p("\nWhat the wire column counts:\n\n")
		}
		seen[row.Method] = true
		p("- `%s`: %s\n", row.Method, row.WireNote)
	}

	if len(r.Resume) > 0 {
		p("\n#### Resume after an interruption at 50%%\n\nAgainst the uninterrupted three-process run of the same set; wire counts both hops (sender→server and server→receiver).\n\n")
		p("| Scenario | Interrupted at | What happened | Wall s | Extra s | Sender hop MB | Receiver hop MB | Extra bytes | Check |\n|---|--:|---|--:|--:|--:|--:|--:|---|\n")
		for _, x := range r.Resume {
			if x.Error != "" {
				p("| %s | | %s | failed | | | | | %s |\n", x.Scenario, cell(x.Detail), cell(x.Error))
				continue
			}
			p("| %s | %s | %s | %.2f | %+.2f | %.1f | %.1f | %+.2f%% | %s |\n", x.Scenario, size(x.InterruptedAt), cell(x.Detail), x.WallSeconds, x.ExtraSeconds,
				float64(x.UpBytes)/mb, float64(x.DownBytes)/mb, x.ExtraPercent, cell(x.Verified))
		}
	}

	if len(r.Memory) > 0 {
		p("\n#### Peak RSS against stream size\n\n| Set | Send stream | Method | Wall s | snapjet send | snapjet receive | server (nats-server or snapjet server, as the method says) | snapjet replicate |\n|---|--:|---|--:|--:|--:|--:|--:|\n")
		for _, x := range r.Memory {
			if x.Error != "" {
				p("| %s | | %s | failed | | | | %s |\n", x.Dataset, cell(x.Method), cell(x.Error))
				continue
			}
			p("| %s | %s | %s | %.2f | %s | %s | %s | %s |\n", x.Dataset, size(x.StreamBytes), cell(x.Method), x.WallSeconds,
				mibOrDash(x.SenderRSS), mibOrDash(x.ReceiverRSS), mibOrDash(x.ServerRSS), mibOrDash(x.ReplicateRSS))
		}
	}

	b.WriteString(wanMarkdown(r))

	if len(r.Targets) > 0 {
		p("\n#### Targets\n\n| Goal | Measured | Met |\n|---|---|---|\n")
		for _, t := range r.Targets {
			met := "no"
			if t.Met {
				met = "yes"
			}
			p("| %s | %s | %s |\n", t.Goal, cell(t.Figure), met)
		}
	}
	for _, prof := range r.Profiles {
		p("\nCPU profile, %s (`go tool pprof -top`, first lines):\n\n```\n%s\n```\n", prof.Row, strings.TrimRight(prof.Top, "\n"))
	}
	if len(r.Notes) > 0 {
		p("\nNotes from this run:\n\n")
		for _, n := range r.Notes {
			p("- %s\n", n)
		}
	}
	p("\n")
	return b.String()
}

func mibOrDash(n int64) string {
	if n == 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/mib)
}

func rss(row Row) string {
	var parts []string
	for _, pr := range row.Procs {
		if pr.PeakRSS == 0 {
			continue
		}
		name := pr.Label
		if pr.Count > 1 {
			name = fmt.Sprintf("%s ×%d", name, pr.Count)
		}
		parts = append(parts, fmt.Sprintf("%s %.1f", name, float64(pr.PeakRSS)/mib))
	}
	return strings.Join(parts, ", ")
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// cell keeps free text from breaking the table.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", "\\|")
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
