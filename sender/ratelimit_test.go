package sender

import (
	"context"
	"testing"
	"time"
)

// The limiter's schedule: starting empty, N bytes go after N/rate seconds
// whatever the message sizes, and no instant lets more than one burst (a
// tenth of a second of traffic) through ahead of the rate.
func TestWireLimiterSchedule(t *testing.T) {
	const bps = 1 << 20
	w := newWireLimiter(bps)
	if w.burst != bps/10 {
		t.Fatalf("burst %d, want %d", w.burst, bps/10)
	}
	// The bucket starts empty when the limiter is made; tokens that accrue
	// before t0 (a loaded machine) shift every delay by the same amount,
	// so delays are compared with the first one.
	t0 := time.Now()
	var total int
	var first time.Duration
	for i, n := range []int{1000, w.burst, 7, w.burst, 50000, w.burst} {
		r := w.lim.ReserveN(t0, n)
		if !r.OK() {
			t.Fatalf("reserve %d refused", n)
		}
		total += n
		d := r.DelayFrom(t0)
		if i == 0 {
			first = d
			if ideal := time.Duration(float64(n) / bps * float64(time.Second)); d > ideal+time.Millisecond {
				t.Errorf("first %d bytes wait %v, more than %v", n, d, ideal)
			}
			continue
		}
		want := first + time.Duration(float64(total-1000)/bps*float64(time.Second))
		if d < want-time.Millisecond || d > want+time.Millisecond {
			t.Errorf("after %d bytes: delay %v, want %v", total, d, want)
		}
	}
	if newWireLimiter(0) != nil || newWireLimiter(0).wait(context.Background(), 1<<30) != nil {
		t.Error("no limit must never wait")
	}
	if w := newWireLimiter(100); w.burst != burstFloor {
		t.Errorf("tiny rate: burst %d, want the floor %d", w.burst, burstFloor)
	}
}

// In real time: 400 KiB in 1 MiB-burst-sized and larger messages at
// 1 MiB/s take 0.4 s, within 10% (more only on a starved machine).
func TestWireLimiterRealTime(t *testing.T) {
	w := newWireLimiter(1 << 20)
	start := time.Now()
	for _, n := range []int{300 << 10, 100 << 10} { // larger than a burst: waited in pieces
		if err := w.wait(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	if took < 360*time.Millisecond || took > 600*time.Millisecond {
		t.Errorf("400 KiB at 1 MiB/s took %v, want about 400ms", took)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.wait(ctx, 1<<20); err != context.Canceled {
		t.Errorf("cancelled wait: %v", err)
	}
}
