package sendstream

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream/streamtest"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// TestRealStreams decodes streams the kernel produced and checks the
// command sequence against `btrfs receive --dump`. With
// SENDSTREAM_WRITE_SEEDS=1 it saves them under testdata as fuzz seeds.
func TestRealStreams(t *testing.T) {
	fs := loopfs.New(t, 512<<20)
	ctx := context.Background()
	// Compressed extents make --compressed-data emit ENCODED_WRITE.
	streamtest.Sh(t, "mount -o remount,compress=zstd "+fs.Dir)
	src := filepath.Join(fs.Dir, "src")
	if err := btrfs.CreateSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	streamtest.Sh(t, `cd `+src+` && mkdir -p d/e && head -c 3000 /dev/urandom > d/f && yes hello | head -c 5000 > big &&
		cp --reflink=always d/f d/e/g && ln d/f hard && ln -s d/f sym && mkfifo fifo && truncate -s 1M sparse`)
	if err := unix.Setxattr(filepath.Join(src, "d/f"), "user.k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	snap1 := filepath.Join(fs.Dir, "snap1")
	if err := btrfs.Snapshot(ctx, src, snap1, true); err != nil {
		t.Fatal(err)
	}
	streamtest.Sh(t, `cd `+src+` && mv d/e e2 && rm hard && echo more >> big && chmod 0600 big && mv d e2/`)
	if err := unix.Removexattr(filepath.Join(src, "e2/d/f"), "user.k"); err != nil {
		t.Fatal(err)
	}
	snap2 := filepath.Join(fs.Dir, "snap2")
	if err := btrfs.Snapshot(ctx, src, snap2, true); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		snap string
		opt  btrfs.SendOptions
	}{
		{"full_v1", snap1, btrfs.SendOptions{Proto: 1}},
		{"full_v2", snap1, btrfs.SendOptions{Proto: 2}},
		{"full_v2c", snap1, btrfs.SendOptions{CompressedData: true}},
		{"inc_v1", snap2, btrfs.SendOptions{Proto: 1, Parent: snap1}},
		{"inc_v2", snap2, btrfs.SendOptions{Proto: 2, Parent: snap1}},
	}
	var all []byte
	var wantAll []string
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			stream := streamtest.Send(t, tc.snap, tc.opt)
			all = append(all, stream...)
			wantAll = append(wantAll, checkAgainstDump(t, stream, nil)...)
			if os.Getenv("SENDSTREAM_WRITE_SEEDS") == "1" && len(stream) < 16<<10 {
				if err := os.WriteFile(filepath.Join("testdata", tc.name+".stream"), stream, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	// btrfs receive --dump stops after the first stream, so the expected
	// sequence of the concatenation is the concatenation of the sequences.
	t.Run("concatenated", func(t *testing.T) { checkAgainstDump(t, all, wantAll) })
}

// checkAgainstDump decodes stream and compares its command types with
// want, or with what `btrfs receive --dump` shows when want is nil.
func checkAgainstDump(t *testing.T, stream []byte, want []string) []string {
	t.Helper()
	if want == nil {
		cmd := exec.Command("btrfs", "receive", "--dump")
		cmd.Stdin = bytes.NewReader(stream)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("btrfs receive --dump: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			want = append(want, strings.ToUpper(strings.Fields(line)[0]))
		}
	}
	r := NewReader(bytes.NewReader(stream), 0)
	var got []string
	for {
		c, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if c.Type != CmdEnd {
			got = append(got, c.Type.String())
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("decoded %d commands %v\ndump shows %d %v", len(got), got, len(want), want)
	}
	t.Logf("%d bytes, %d commands", len(stream), len(got))
	return got
}
