package native

import (
	"context"
	"fmt"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

// BenchmarkReceive applies the same stream (256 MiB of file data and
// 2,000 small files) with the native receiver and with btrfs receive.
func BenchmarkReceive(b *testing.B) {
	fs := loopfs.New(b, 4<<30)
	src := subvolume(b, join(fs.Dir, "src"))
	for i := 0; i < 32; i++ {
		writeRandom(b, join(src, fmt.Sprint("big", i)), 8<<20, int64(i))
	}
	sh(b, "cd "+src+" && mkdir small && i=0; while [ $i -lt 2000 ]; do echo $i > small/f$i; i=$((i+1)); done")
	snap := snapshot(b, src, join(fs.Dir, "snap1"))
	stream := sendStream(b, snap, btrfs.SendOptions{Proto: 2})
	for _, impl := range []string{"native", "btrfs-receive"} {
		b.Run(impl, func(b *testing.B) {
			b.SetBytes(int64(len(stream)))
			for i := 0; i < b.N; i++ {
				dir := join(fs.Dir, fmt.Sprint(impl, i))
				mkdirs(b, dir)
				if impl == "native" {
					receiveNative(b, dir, stream, Options{})
				} else {
					receiveProgs(b, dir, stream)
				}
				b.StopTimer()
				if err := btrfs.DeleteSubvolume(context.Background(), join(dir, "snap1")); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
