package sender

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// memSource is a Source in memory: every stream is data. With fail set the
// producer fails after failAt bytes: reading fails there, or, when failAt
// is the whole stream, the read ends as a pipe does and Close reports it.
type memSource struct {
	data   []byte
	failAt int
	fail   error
}

type memStream struct {
	ctx context.Context
	io.Reader
	fail error
}

func (m *memSource) Open(ctx context.Context, _, _ string) (io.ReadCloser, error) {
	var r io.Reader = bytes.NewReader(m.data)
	if m.fail != nil && m.failAt < len(m.data) {
		r = io.MultiReader(bytes.NewReader(m.data[:m.failAt]), iotestErr{m.fail})
	}
	return &memStream{ctx: ctx, Reader: r, fail: m.fail}, nil
}

// Close reports the producer's failure; a producer whose ctx ended before
// Close was killed, as btrfs send would be.
func (s *memStream) Close() error {
	if s.fail != nil {
		return s.fail
	}
	return s.ctx.Err()
}

type iotestErr struct{ err error }

func (e iotestErr) Read([]byte) (int, error) { return 0, e.err }

// standIn points btrfs.Binary at a script that plays btrfs send for the
// test: the snapshot (its last argument) is a file holding the stream, and
// a file beside it named <snapshot>.fail makes it fail after writing it.
// Like btrfs send it is one process (exec): a killed shell would leave its
// cat holding the pipes.
func standIn(t *testing.T) {
	t.Helper()
	script := filepath.Join(t.TempDir(), "btrfs")
	err := os.WriteFile(script, []byte(`#!/bin/sh
for a; do snap=$a; done
[ -e "$snap.fail" ] || exec cat "$snap"
cat "$snap"
echo "ERROR: send ioctl failed with -5: Input/output error" >&2
exit 1
`), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	saved := btrfs.Binary
	btrfs.Binary = script
	t.Cleanup(func() { btrfs.Binary = saved })
}

// TestSourceConformance holds the Sources to the contract in its doc
// comment: the btrfs adapter (on a stand-in for btrfs, so no root) and the
// in-memory stream that the tests of readChunks use.
func TestSourceConformance(t *testing.T) {
	// open returns a Source and the snapshot whose stream is data; with
	// fail the producer fails after writing it.
	impls := map[string]func(t *testing.T, data []byte, fail bool) (Source, string){
		"memory": func(_ *testing.T, data []byte, fail bool) (Source, string) {
			src := &memSource{data: data, failAt: len(data)}
			if fail {
				src.fail = errors.New("send ioctl failed")
			}
			return src, "snap"
		},
		"btrfs": func(t *testing.T, data []byte, fail bool) (Source, string) {
			standIn(t)
			snap := filepath.Join(t.TempDir(), "snap")
			if err := os.WriteFile(snap, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if fail {
				if err := os.WriteFile(snap+".fail", nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			return BtrfsSource{}, snap
		},
	}
	big := bytes.Repeat([]byte("snapjet!"), 1<<19) // 4 MiB: more than a pipe holds
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			src, snap := open(t, big, false)
			out, err := src.Open(t.Context(), snap, "")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(out)
			if err != nil || !bytes.Equal(got, big) {
				t.Fatalf("read %d bytes (%v), want the %d of the stream", len(got), err, len(big))
			}
			if err := out.Close(); err != nil {
				t.Fatalf("Close after a complete read of a producer that succeeded: %v", err)
			}

			src, snap = open(t, []byte("a whole stream"), true)
			if out, err = src.Open(t.Context(), snap, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(out); err == nil {
				if err := out.Close(); err == nil {
					t.Fatal("a producer that failed after writing the stream: Close reported success")
				}
			} else {
				_ = out.Close()
			}

			// Abandoned before its end: cancel, then Close returns.
			src, snap = open(t, big, false)
			ctx, cancel := context.WithCancel(t.Context())
			if out, err = src.Open(ctx, snap, ""); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(out, make([]byte, 10)); err != nil {
				t.Fatal(err)
			}
			cancel()
			if err := out.Close(); err == nil {
				t.Error("Close of a stream abandoned before its end reported success")
			}
		})
	}
}

// TestReadChunks: the stream is cut the same on every run, every chunk
// (skipped ones too) goes into the digest, and a resumed attempt skips exactly what is stored.
func TestReadChunks(t *testing.T) {
	data := []byte("0123456789") // chunks of 4: "0123" "4567" "89"
	sum := func(b string) uint64 { return xxhash.Sum64String(b) }
	type chunk struct {
		idx, off int64
		raw      string
	}
	broken := errors.New("send ioctl failed")
	tests := []struct {
		name    string
		src     *memSource
		rp      resumePoint
		want    []chunk
		wantErr error // errors.Is; nil: none
	}{
		{name: "a whole stream", src: &memSource{data: data},
			want: []chunk{{0, 0, "0123"}, {1, 4, "4567"}, {2, 8, "89"}}},
		{name: "a stream of whole chunks ends without an empty one", src: &memSource{data: data[:8]},
			want: []chunk{{0, 0, "0123"}, {1, 4, "4567"}}},
		{name: "an empty stream", src: &memSource{}},
		{name: "resumed after two chunks: only the third is sent", src: &memSource{data: data},
			rp: resumePoint{idx: 2, off: 8, lastSum: sum("4567")}, want: []chunk{{2, 8, "89"}}},
		{name: "resumed after the whole stream: nothing is sent", src: &memSource{data: data},
			rp: resumePoint{idx: 3, off: 10, lastSum: sum("89")}},
		{name: "a regenerated stream whose last stored chunk differs", src: &memSource{data: []byte("0123456X89")},
			rp: resumePoint{idx: 2, off: 8, lastSum: sum("4567")}, wantErr: errStreamChanged},
		{name: "a regenerated stream shorter than what is stored", src: &memSource{data: data[:6]},
			rp: resumePoint{idx: 3, off: 12, lastSum: sum("89AB")}, wantErr: errStreamChanged},
		{name: "the producer fails mid-chunk", src: &memSource{data: data, failAt: 6, fail: broken},
			want: []chunk{{0, 0, "0123"}}, wantErr: broken},
		{name: "the producer fails at a chunk boundary", src: &memSource{data: data, failAt: 8, fail: broken},
			want: []chunk{{0, 0, "0123"}, {1, 4, "4567"}}, wantErr: broken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := &Sender{}
			r := &coordinator.Replication{ID: "r1", ChunkSize: 4}
			order, work := make(chan *job, 16), make(chan *job, 16)
			out, err := tc.src.Open(t.Context(), "snap", "")
			if err != nil {
				t.Fatal(err)
			}
			digest := streams.NewDigest()
			readErr := s.readChunks(t.Context(), out, r, tc.rp, digest, order, work)
			closeErr := out.Close()
			close(order)
			close(work)
			if tc.wantErr == nil && (readErr != nil || closeErr != nil) || !errors.Is(readErr, tc.wantErr) {
				t.Fatalf("readChunks: %v, Close: %v; want %v", readErr, closeErr, tc.wantErr)
			}
			var got []chunk
			for j := range order {
				if w := <-work; w != j {
					t.Errorf("chunk %d went to the workers out of order (%d)", j.idx, w.idx)
				}
				got = append(got, chunk{j.idx, j.off, string(j.raw)})
			}
			if len(got) != len(tc.want) {
				t.Fatalf("chunks %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("chunk %d: %+v, want %+v", i, got[i], tc.want[i])
				}
			}
			want := streams.NewDigest()
			for i := 0; i < len(tc.src.data); i += 4 {
				c := tc.src.data[i:min(i+4, len(tc.src.data))]
				want.Add(int64(i/4), len(c), xxhash.Sum64(c))
			}
			if tc.wantErr == nil && digest.String() != want.String() {
				t.Errorf("digest %s, want %s (every chunk's index, length and checksum)", digest, want)
			}
		})
	}
}

func TestCompressedData(t *testing.T) {
	can := func() error { return nil }
	cannot := func() error { return errors.New("the kernel speaks send protocol 1") }
	for _, tc := range []struct {
		mode      string
		supported func() error
		want      bool
		err       string
	}{
		{"", can, true, ""},
		{CompressedAuto, can, true, ""},
		{CompressedAuto, cannot, false, ""},
		{CompressedAlways, can, true, ""},
		{CompressedAlways, cannot, false, "speaks send protocol 1; send without it"},
		{CompressedNever, can, false, ""},
		{"yes", can, false, "write auto, always or never"},
	} {
		got, err := CompressedData(tc.mode, tc.supported)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("mode %q: %v, %v; want %v, error with %q", tc.mode, got, err, tc.want, tc.err)
		}
	}
}
