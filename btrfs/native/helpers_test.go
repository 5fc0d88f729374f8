package native

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream/streamtest"
	"github.com/snapjet/snapjet/internal/treecmp"
)

// feed writes stream to r in chunks of random size around chunk bytes,
// so that chunk boundaries fall inside commands.
func feed(t testing.TB, r *Receiver, stream []byte, chunk int, rng *rand.Rand) {
	t.Helper()
	for len(stream) > 0 {
		n := min(len(stream), 1+rng.Intn(2*chunk))
		if _, err := r.Write(stream[:n]); err != nil {
			t.Fatal(err)
		}
		stream = stream[n:]
	}
}

// receiveNative applies a whole stream into dir and finishes.
func receiveNative(t testing.TB, dir string, stream []byte, opt Options) Result {
	t.Helper()
	r, err := New(context.Background(), dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Abort() // releases the fds when the test fails half-way
	feed(t, r, stream, 1<<20, rand.New(rand.NewSource(int64(len(stream)))))
	res, err := r.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func receiveProgs(t testing.TB, dir string, stream []byte) {
	t.Helper()
	cmd := exec.Command("btrfs", "receive", dir)
	cmd.Stdin = bytes.NewReader(stream)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("btrfs receive: %v\n%s", err, out)
	}
}

// sameTree fails the test when the trees differ in anything a user sees.
func sameTree(t testing.TB, a, b string) {
	t.Helper()
	diffs, err := treecmp.Compare(a, b, treecmp.Options{Times: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diffs {
		t.Errorf("%s vs %s: %s", a, b, d)
	}
}

// sameSubvolume checks that two received subvolumes carry the same flags
// and identity as btrfs receive gives them.
func sameSubvolume(t testing.TB, native, progs string) {
	t.Helper()
	a, err := btrfs.Inspect(native)
	if err != nil {
		t.Fatal(err)
	}
	b, err := btrfs.Inspect(progs)
	if err != nil {
		t.Fatal(err)
	}
	if !a.ReadOnly || !b.ReadOnly {
		t.Errorf("read-only: native %v, btrfs receive %v", a.ReadOnly, b.ReadOnly)
	}
	if a.ReceivedUUID.IsZero() || a.ReceivedUUID != b.ReceivedUUID {
		t.Errorf("received UUID: native %s, btrfs receive %s", a.ReceivedUUID, b.ReceivedUUID)
	}
	if a.ParentUUID.IsZero() != b.ParentUUID.IsZero() {
		t.Errorf("parent UUID: native %s, btrfs receive %s", a.ParentUUID, b.ParentUUID)
	}
}

func mkdirs(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func snapshot(t testing.TB, src, dst string) string {
	t.Helper()
	if err := btrfs.Snapshot(context.Background(), src, dst, true); err != nil {
		t.Fatal(err)
	}
	return dst
}

func subvolume(t testing.TB, path string) string {
	t.Helper()
	if err := btrfs.CreateSubvolume(context.Background(), path); err != nil {
		t.Fatal(err)
	}
	return path
}

func join(parts ...string) string { return filepath.Join(parts...) }

// Short names for the shared stream helpers.
var (
	sendStream = streamtest.Send
	sh         = streamtest.Sh
)
