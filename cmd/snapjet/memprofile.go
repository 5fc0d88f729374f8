package main

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

// profileHeapPeak writes a heap profile to path each time the heap in use
// reaches a new high (checked every second) until ctx ends: the profile left
// is the one nearest the peak, which is where memory has to be cut. A
// profile written at exit would show the heap after the work.
func profileHeapPeak(ctx context.Context, path string) {
	runtime.MemProfileRate = 64 << 10
	var high uint64
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse <= high+high/20 {
			continue
		}
		high = ms.HeapInuse
		if f, err := os.Create(path); err == nil {
			_ = pprof.Lookup("heap").WriteTo(f, 0)
			_ = f.Close()
		}
	}
}
