package native

import (
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

func TestSimpleFull(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	sh(t, `cd `+src+` && mkdir -p d/e && head -c 300000 /dev/urandom > d/f && echo hi > d/e/g && ln d/f hard && ln -s d/f sym && mkfifo fifo && truncate -s 5M sparse && chmod 0751 d && chown 12:34 d/e/g`)
	snap := snapshot(t, src, join(fs.Dir, "snap1"))
	nat, progs := join(fs.Dir, "nat"), join(fs.Dir, "progs")
	mkdirs(t, nat, progs)
	stream := sendStream(t, snap, btrfs.SendOptions{})
	res := receiveNative(t, nat, stream, Options{})
	receiveProgs(t, progs, stream)
	sameTree(t, snap, res.Path)
	sameTree(t, join(progs, "snap1"), res.Path)
	sameSubvolume(t, res.Path, join(progs, "snap1"))
}
