package retry

import (
	"context"
	"testing"
	"time"
)

func TestWaitGrowsAndStaysBounded(t *testing.T) {
	b := New(time.Millisecond, 4*time.Millisecond)
	for i := 0; i < 6; i++ {
		start := time.Now()
		if err := b.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		// The jitter is ±50 %: no wait may exceed 1.5 × the bound (plus
		// scheduling slack).
		if d := time.Since(start); d > 50*time.Millisecond {
			t.Fatalf("wait %d took %v, the bound is 4ms", i, d)
		}
	}
}

func TestWaitEndsWhenCancelled(t *testing.T) {
	b := New(time.Hour, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx); err != context.Canceled {
		t.Fatalf("Wait after cancel = %v, want context.Canceled", err)
	}
}
