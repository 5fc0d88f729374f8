package wire

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
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

// echoServer answers every connection by writing back what it reads.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, addr string, msg []byte) error {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo returned different bytes")
	}
	return nil
}

func TestRelayCountsBothDirections(t *testing.T) {
	r, err := NewRelay(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	msg := bytes.Repeat([]byte("abc"), 100000)
	for i := 0; i < 2; i++ {
		if err := roundTrip(t, r.Addr(), msg); err != nil {
			t.Fatal(err)
		}
	}
	want := int64(2 * len(msg))
	if r.Up() != want || r.Down() != want {
		t.Fatalf("up %d down %d, want %d each", r.Up(), r.Down(), want)
	}
}

func TestRelayCutClosesOpenConnectionsAndAcceptsNewOnes(t *testing.T) {
	r, err := NewRelay(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A full round trip proves the pair is registered before the cut.
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if n := r.Cut(); n != 1 {
		t.Fatalf("Cut closed %d connections, want 1", n)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a cut connection succeeded")
	}
	if err := roundTrip(t, r.Addr(), []byte("again")); err != nil {
		t.Fatalf("new connection after cut: %v", err)
	}
	if r.Cuts() != 1 {
		t.Fatalf("Cuts = %d, want 1", r.Cuts())
	}
}
