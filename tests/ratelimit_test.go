package tests

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// The bandwidth limit holds on a link: `send --rate-limit 4MB/s` through a
// relay that counts the bytes from the sender to the server moves a
// 30-second transfer at the limit within ±10 % overall, and no 5-second
// stretch of it goes more than 10 % over (bursts are bounded).
func TestRateLimitHoldsOnALink(t *testing.T) {
	const limit = 4_000_000 // 4MB/s
	source, target, _ := newPair(t, dataSet{seed: 41, bulk: 120 * mib})
	srv := startServer(t)
	startReceiver(t, srv.url(), "backup", target)
	link := startProxy(t, srv.addr)

	type sample struct {
		at    time.Time
		bytes int64
	}
	var (
		mu      sync.Mutex
		samples []sample
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				mu.Lock()
				samples = append(samples, sample{now, link.Up()})
				mu.Unlock()
			}
		}
	}()
	send := startSnapjet(t, "send", "send", "--server", "nats://"+link.Addr(), "--to", "backup", "--rate-limit", "4MB/s", source)
	res := send.wait(3 * transferTimeout)
	close(stop)
	<-sampled
	samples = append(samples, sample{time.Now(), link.Up()})
	if res.code != 0 {
		t.Fatalf("send exited %d: %s", res.code, res.stderr)
	}
	doc := srv.status()
	rep, _ := doc.newest()
	t.Logf("%d wire bytes sent, %d bytes from the sender over the link", rep.WireBytes, link.Up())

	// The transfer is the stretch from the first to the last megabyte
	// (planning and the final reports carry few bytes).
	total := link.Up()
	var from, to sample
	for _, s := range samples {
		if from.at.IsZero() && s.bytes >= 1<<20 {
			from = s
		}
		if to.at.IsZero() && s.bytes >= total-(1<<20) {
			to = s
		}
	}
	took := to.at.Sub(from.at)
	if took < 20*time.Second {
		t.Fatalf("the transfer took %v: too short to measure a rate over (want about 30 s)", took)
	}
	rate := float64(to.bytes-from.bytes) / took.Seconds()
	t.Logf("figures: %.2f MB/s over %v at a limit of %.2f MB/s (%.3f of it)", rate/1e6, took.Round(time.Millisecond), float64(limit)/1e6, rate/limit)
	if rate < 0.9*limit || rate > 1.1*limit {
		t.Errorf("the link carried %.0f B/s over %v, more than 10%% off the limit %d B/s", rate, took, limit)
	}
	var worst float64
	for i, a := range samples {
		if a.at.Before(from.at) || a.at.After(to.at) {
			continue
		}
		for _, b := range samples[i+1:] {
			if d := b.at.Sub(a.at); d >= 5*time.Second {
				worst = max(worst, float64(b.bytes-a.bytes)/d.Seconds())
				break
			}
		}
	}
	t.Logf("figures: the fastest 5-second stretch ran at %.3f of the limit", worst/limit)
	if worst > 1.1*limit {
		t.Errorf("a 5-second stretch ran at %s B/s, more than 10%% over the limit %d", fmt.Sprintf("%.0f", worst), limit)
	}
}
