package main

import (
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/snapjet/snapjet/sender"
)

// progress shows a bar on a terminal and a log line every few seconds
// otherwise.
type progress struct {
	log   *slog.Logger
	mu    sync.Mutex
	bar   *progressbar.ProgressBar
	last  time.Time
	start time.Time
	tty   bool
}

func newProgress(log *slog.Logger) *progress {
	return &progress{log: log, tty: term.IsTerminal(int(os.Stderr.Fd())), start: time.Now()}
}

func (p *progress) update(pr sender.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty {
		if p.bar == nil {
			total := pr.Estimated
			if total <= 0 {
				total = -1
			}
			p.bar = progressbar.NewOptions64(total, progressbar.OptionSetWriter(os.Stderr),
				progressbar.OptionShowBytes(true), progressbar.OptionSetDescription("sending "+pr.ID),
				progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond))
		}
		_ = p.bar.Set64(pr.Bytes)
		return
	}
	if time.Since(p.last) < 5*time.Second {
		return
	}
	p.last = time.Now()
	rate := float64(pr.Bytes) / time.Since(p.start).Seconds()
	attrs := []any{"replication", pr.ID, "bytes", pr.Bytes, "wire_bytes", pr.Wire, "rate_MBps", int(rate / 1e6)}
	if pr.Estimated > pr.Bytes && rate > 0 {
		attrs = append(attrs, "eta", time.Duration(float64(pr.Estimated-pr.Bytes)/rate*float64(time.Second)).Round(time.Second))
	}
	p.log.Info("progress", attrs...)
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Finish()
	}
}
