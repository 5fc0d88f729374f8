package main

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"

	"github.com/snapjet/snapjet/bench/dataset"
	"github.com/snapjet/snapjet/bench/report"
)

// memorySection runs the three-process deployment and replicate on two
// island sets, the second four times as long, and reports the peak RSS of
// the snapjet processes for each: memory must not grow with the stream.
func (b *bench) memorySection(ctx context.Context) error {
	// Compression makes the zero runs free on both filesystems, so a long
	// stream costs neither disk nor time to write. Only this section needs
	// it, and it runs last.
	for _, dir := range []string{b.src.Dir, b.tgt.Dir} {
		if out, err := exec.CommandContext(ctx, "mount", "-o", "remount,compress=zstd:1", dir).CombinedOutput(); err != nil {
			return fmt.Errorf("remount %s with compression: %v: %s", dir, err, out)
		}
	}
	for _, size := range b.size.islands {
		key := fmt.Sprintf("e%d", size>>20)
		if size >= 1<<30 {
			key = fmt.Sprintf("e%dG", size>>30)
		}
		size := size
		ds, err := b.prepare(ctx, key, "zeros with 1 MiB random islands every 16 MiB (the zeros compress away on disk)", func(ctx context.Context, dir string) error {
			return dataset.Islands(ctx, dir, size, b.cfg.seed)
		})
		if err != nil {
			return err
		}
		threeOnSnapjet := func(ctx context.Context, ds *dataSet) report.Row { return b.threeRowOn(ctx, ds, methodThreeSnapjet) }
		for _, run := range []func(context.Context, *dataSet) report.Row{b.threeRow, threeOnSnapjet, b.replicateRow} {
			row := run(ctx, ds)
			b.res.Rows = append(b.res.Rows, row)
			m := report.Memory{Dataset: key, Method: row.Method, StreamBytes: ds.StreamBytes, WallSeconds: row.WallSeconds, Error: row.Error}
			for _, p := range row.Procs {
				switch p.Label {
				case "snapjet send":
					m.SenderRSS = p.PeakRSS
				case "snapjet receive":
					m.ReceiverRSS = p.PeakRSS
				case "nats-server", "snapjet server":
					m.ServerRSS = p.PeakRSS
				case "snapjet replicate":
					m.ReplicateRSS = p.PeakRSS
				}
			}
			slog.Info("memory row done", "set", key, "method", row.Method, "stream", m.StreamBytes, "sender_rss", m.SenderRSS,
				"receiver_rss", m.ReceiverRSS, "replicate_rss", m.ReplicateRSS, "err", m.Error)
			b.res.Memory = append(b.res.Memory, m)
		}
	}
	return nil
}
