package wire

import (
	"bytes"
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

func TestCopyCounts(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"small", 17},
		{"several buffers", 3*bufSize + 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := bytes.Repeat([]byte("x"), tc.size)
			var dst bytes.Buffer
			var n atomic.Int64
			got, err := Copy(&dst, bytes.NewReader(src), &n)
			if err != nil {
				t.Fatal(err)
			}
			if got != int64(tc.size) || n.Load() != int64(tc.size) || !bytes.Equal(dst.Bytes(), src) {
				t.Fatalf("copied %d, counted %d, dst %d bytes; want %d", got, n.Load(), dst.Len(), tc.size)
			}
		})
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, io.ErrClosedPipe }

func TestCopyStopsOnWriteError(t *testing.T) {
	var n atomic.Int64
	if _, err := Copy(failWriter{}, strings.NewReader("data"), &n); err != io.ErrClosedPipe {
		t.Fatalf("err = %v, want %v", err, io.ErrClosedPipe)
	}
}
