package btrfs_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
)

// TestSendReceiveRoundTrip sends a full and then an incremental snapshot
// to another filesystem and checks that what arrives equals the source.
func TestSendReceiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		compression string // btrfs.compression property of the source
		opt         btrfs.SendOptions
		wantCommand string // a send stream command that proves the option took effect
	}{
		{"protocol 1", "", btrfs.SendOptions{}, "write"},
		{"protocol 2", "", btrfs.SendOptions{Proto: 2}, "write"},
		{"compressed extents passed through", "zstd", btrfs.SendOptions{CompressedData: true}, "encoded_write"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srcFS, dstFS := newFS(t, smallFS), newFS(t, smallFS)
			src := filepath.Join(srcFS, "src")
			must(t, btrfs.CreateSubvolume(ctx, src))
			if tt.compression != "" {
				runCmd(t, "btrfs", "property", "set", src, "compression", tt.compression)
			}
			populate(t, src)
			snap1 := filepath.Join(mkdir(t, filepath.Join(srcFS, "snaps")), "src.1")
			must(t, btrfs.Snapshot(ctx, src, snap1, true))
			mutate(t, src)
			snap2 := filepath.Join(srcFS, "snaps", "src.2")
			must(t, btrfs.Snapshot(ctx, src, snap2, true))

			if n := streamCommands(t, snap1, tt.opt)[tt.wantCommand]; n == 0 {
				t.Errorf("the send stream has no %s command", tt.wantCommand)
			}

			target := mkdir(t, filepath.Join(dstFS, "target"))
			got1 := sendReceive(t, snap1, tt.opt, target)
			assertSameTree(t, snap1, got1)
			info1 := inspect(t, got1)
			if !info1.ReadOnly || info1.ReceivedUUID != inspect(t, snap1).UUID {
				t.Errorf("full receive: read-only %v, received UUID %q, want %q", info1.ReadOnly, info1.ReceivedUUID, inspect(t, snap1).UUID)
			}

			opt := tt.opt
			opt.Parent = snap1
			got2 := sendReceive(t, snap2, opt, target)
			assertSameTree(t, snap2, got2)
			info2 := inspect(t, got2)
			if !info2.ReadOnly || info2.ReceivedUUID != inspect(t, snap2).UUID || info2.ParentUUID != info1.UUID {
				t.Errorf("incremental receive: read-only %v, received UUID %q (want %q), parent UUID %q (want the received parent %q)",
					info2.ReadOnly, info2.ReceivedUUID, inspect(t, snap2).UUID, info2.ParentUUID, info1.UUID)
			}
			// The incremental must not have touched its parent.
			assertSameTree(t, snap1, got1)
		})
	}
}

// TestReceiveFailures checks that each way a receive can fail yields the
// typed error callers act on, and never leaves something that looks complete.
func TestReceiveFailures(t *testing.T) {
	ctx := context.Background()
	srcFS := newFS(t, 512<<20)
	src := filepath.Join(srcFS, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	writeFile(t, filepath.Join(src, "small"), []byte("first version"), 0o644)
	base := filepath.Join(srcFS, "base")
	must(t, btrfs.Snapshot(ctx, src, base, true))
	writeFile(t, filepath.Join(src, "medium"), randomBytes(5, 4<<20), 0o644)
	next := filepath.Join(srcFS, "next")
	must(t, btrfs.Snapshot(ctx, src, next, true))
	writeFile(t, filepath.Join(src, "big"), randomBytes(6, 300<<20), 0o644)
	big := filepath.Join(srcFS, "big")
	must(t, btrfs.Snapshot(ctx, src, big, true))

	streams := t.TempDir()
	bigStream := sendToFile(t, big, btrfs.SendOptions{}, filepath.Join(streams, "big"))
	fullStream := sendToFile(t, next, btrfs.SendOptions{}, filepath.Join(streams, "full"))
	incremental := sendToFile(t, next, btrfs.SendOptions{Parent: base}, filepath.Join(streams, "incremental"))
	garbage := filepath.Join(streams, "garbage")
	writeFile(t, garbage, bytes.Repeat([]byte("garbage!"), 1000), 0o644)
	receiveFile := func(t *testing.T, dir, stream string, limit int64) error {
		f, err := os.Open(stream)
		must(t, err)
		defer f.Close()
		return btrfs.Receive(ctx, dir, io.LimitReader(f, limit))
	}
	all := int64(1 << 62)

	tests := []struct {
		name    string
		fsSize  int64
		setup   func(t *testing.T, dir string)
		stream  string
		limit   int64 // bytes of the stream fed to receive
		wantErr error // nil: any error will do, but one must come
		partial bool  // a new subvolume may be left and must look unfinished
	}{
		{name: "target too small", fsSize: 120 << 20, stream: bigStream, limit: all, wantErr: btrfs.ErrNoSpace, partial: true},
		{name: "incremental without its parent", fsSize: smallFS, stream: incremental, limit: all, wantErr: btrfs.ErrParentMissing},
		{name: "truncated stream", fsSize: smallFS, stream: fullStream, limit: fileSize(t, fullStream) / 2, partial: true},
		{name: "empty stream", fsSize: smallFS, stream: fullStream, limit: 0},
		{name: "not a send stream", fsSize: smallFS, stream: garbage, limit: all},
		{name: "same name already received", fsSize: smallFS, stream: fullStream, limit: all, wantErr: btrfs.ErrExists,
			setup: func(t *testing.T, dir string) { must(t, receiveFile(t, dir, fullStream, all)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := mkdir(t, filepath.Join(newFS(t, tt.fsSize), "target"))
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			before := inspectAll(t, dir)
			err := receiveFile(t, dir, tt.stream, tt.limit)
			if err == nil || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Receive = %v, want %v", err, tt.wantErr)
			}
			t.Logf("receive failed as expected: %v", err)
			for name, info := range inspectAll(t, dir) {
				if prev, ok := before[name]; ok && prev == info {
					continue // untouched
				}
				if !tt.partial {
					t.Errorf("failed receive left subvolume %s", name)
				}
				assertNotCommitted(t, filepath.Join(dir, name))
			}
		})
	}

	t.Run("not a btrfs directory", func(t *testing.T) {
		if err := receiveFile(t, t.TempDir(), fullStream, all); !errors.Is(err, btrfs.ErrNotBtrfs) {
			t.Errorf("Receive into a non-btrfs directory = %v, want ErrNotBtrfs", err)
		}
	})
}

// TestCancel checks that cancelling the context stops send and receive
// promptly and that the cancelled receive is not mistaken for a complete one.
func TestCancel(t *testing.T) {
	srcFS, dstFS := newFS(t, smallFS), newFS(t, smallFS)
	src := filepath.Join(srcFS, "src")
	must(t, btrfs.CreateSubvolume(context.Background(), src))
	writeFile(t, filepath.Join(src, "data"), randomBytes(6, 64<<20), 0o644)
	snap := filepath.Join(srcFS, "snap")
	must(t, btrfs.Snapshot(context.Background(), src, snap, true))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, send, err := btrfs.Send(ctx, snap, btrfs.SendOptions{})
	must(t, err)
	target := mkdir(t, filepath.Join(dstFS, "target"))
	in, recv, err := btrfs.StartReceive(ctx, target)
	must(t, err)
	if _, err := io.CopyN(in, stream, 8<<20); err != nil {
		t.Fatalf("feeding the first 8 MiB: %v", err)
	}
	cancel()
	// Both processes are killed: the rest of the copy fails fast instead
	// of moving the remaining 56 MiB.
	n, _ := io.Copy(in, stream)
	in.Close()
	stream.Close()
	if n >= 56<<20 {
		t.Errorf("%d more bytes flowed after cancel", n)
	}
	if err := send.Wait(); err == nil {
		t.Error("cancelled send reported success")
	}
	if err := recv.Wait(); err == nil {
		t.Error("cancelled receive reported success")
	}
	assertNotCommitted(t, filepath.Join(target, "snap"))
}

func TestMissingBinary(t *testing.T) {
	saved := btrfs.Binary
	btrfs.Binary = "snapjet-test-no-such-btrfs"
	t.Cleanup(func() { btrfs.Binary = saved })
	ctx := context.Background()
	dir := t.TempDir()

	tests := []struct {
		name string
		call func() error
	}{
		{"CreateSubvolume", func() error { return btrfs.CreateSubvolume(ctx, filepath.Join(dir, "s")) }},
		{"Snapshot", func() error { return btrfs.Snapshot(ctx, dir, filepath.Join(dir, "s"), true) }},
		{"SetReadOnly", func() error { return btrfs.SetReadOnly(ctx, dir, true) }},
		{"Send", func() error {
			_, _, err := btrfs.Send(ctx, dir, btrfs.SendOptions{})
			return err
		}},
		{"StartReceive", func() error {
			_, _, err := btrfs.StartReceive(ctx, dir)
			return err
		}},
		{"Receive", func() error { return btrfs.Receive(ctx, dir, bytes.NewReader([]byte("stream"))) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, btrfs.ErrCommandMissing) {
				t.Errorf("%s with btrfs-progs missing = %v, want ErrCommandMissing", tt.name, err)
			}
		})
	}
}

// streamCommands counts the commands in the send stream of snap, as
// `btrfs receive --dump` names them. The stream goes through a file: dump
// stops reading at the end command, and btrfs send, still waiting for EOF
// on its internal pipe, would then die of SIGPIPE.
func streamCommands(t *testing.T, snap string, opt btrfs.SendOptions) map[string]int {
	t.Helper()
	stream := sendToFile(t, snap, opt, filepath.Join(t.TempDir(), "stream"))
	out, err := exec.Command("btrfs", "receive", "--dump", "-f", stream).Output()
	must(t, err)
	counts := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			counts[f[0]]++
		}
	}
	return counts
}

// sendToFile writes the send stream of snap to path and returns path.
func sendToFile(t *testing.T, snap string, opt btrfs.SendOptions, path string) string {
	t.Helper()
	f, err := os.Create(path)
	must(t, err)
	defer f.Close()
	stream, p, err := btrfs.Send(context.Background(), snap, opt)
	must(t, err)
	_, err = io.Copy(f, stream)
	must(t, err)
	must(t, p.Wait())
	return path
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	must(t, err)
	return st.Size()
}

// inspectAll maps the names of the subvolumes in dir to their state.
func inspectAll(t *testing.T, dir string) map[string]btrfs.Info {
	t.Helper()
	infos, err := btrfs.List(dir)
	must(t, err)
	out := map[string]btrfs.Info{}
	for _, info := range infos {
		out[info.Name] = info
	}
	return out
}
