package native

import (
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

// TestConcatenatedStreams receives a full and an incremental stream sent
// back to back as one stream (as `btrfs send -p a b` style pipelines
// produce): the first subvolume must be finished before the second, which
// is a snapshot of it, begins. It is run once straight and once with a
// kill at every command boundary, which covers resuming when the old
// process had already finished the first subvolume.
func TestConcatenatedStreams(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	renames := scenarios[0]
	renames.setup(t, src)
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	renames.change(t, src)
	snap2 := snapshot(t, src, join(fs.Dir, "snap2"))
	stream := append(sendStream(t, snap1, btrfs.SendOptions{}), sendStream(t, snap2, btrfs.SendOptions{Parent: snap1})...)
	ix := indexStream(t, stream)

	for _, tc := range []struct {
		name  string
		kills []int64
	}{{"straight", nil}, {"killed at every command", ix.offs[1:]}} {
		t.Run(tc.name, func(t *testing.T) {
			nat := join(fs.Dir, "nat-"+tc.name)
			mkdirs(t, nat)
			res, st := resumeRun(t, nat, stream, tc.kills, 300, 1, Options{})
			checkResumeStats(t, st, ix.data, len(tc.kills))
			if len(res.Subvolumes) != 2 || res.Path != join(nat, "snap2") {
				t.Fatalf("result %+v", res)
			}
			for _, name := range []string{"snap1", "snap2"} {
				sameTree(t, join(fs.Dir, name), join(nat, name))
				info, err := btrfs.Inspect(join(nat, name))
				if err != nil {
					t.Fatal(err)
				}
				want, _ := btrfs.Inspect(join(fs.Dir, name))
				if !info.ReadOnly || info.ReceivedUUID != want.UUID {
					t.Errorf("%s: read-only %v, received UUID %s, want %s", name, info.ReadOnly, info.ReceivedUUID, want.UUID)
				}
			}
		})
	}
}
