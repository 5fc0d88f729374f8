package netfault

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

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
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

func newRelay(t *testing.T) *Relay {
	t.Helper()
	r, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// echo sends msg on c and reads it back within 5 s.
func echo(c net.Conn, msg []byte) error {
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return err
	}
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

func roundTrip(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return echo(c, msg)
}

func TestCountsBothDirections(t *testing.T) {
	r := newRelay(t)
	msg := bytes.Repeat([]byte("abc"), 100000)
	for i := 0; i < 2; i++ {
		if err := roundTrip(r.Addr(), msg); err != nil {
			t.Fatal(err)
		}
	}
	// The relay counts a write once it returned, which can be just after
	// the peer read the bytes: wait (bounded) for the count to settle.
	want := int64(2 * len(msg))
	for deadline := time.Now().Add(5 * time.Second); (r.Up() != want || r.Down() != want) && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if r.Up() != want || r.Down() != want {
		t.Fatalf("up %d down %d, want %d each", r.Up(), r.Down(), want)
	}
}

func TestCutClosesOpenConnectionsAndAcceptsNewOnes(t *testing.T) {
	r := newRelay(t)
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A full round trip proves the pair is registered before the cut.
	if err := echo(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if n := r.Cut(); n != 1 {
		t.Fatalf("Cut closed %d connections, want 1", n)
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a cut connection succeeded")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("a cut connection stayed open until the read deadline")
	}
	if err := roundTrip(r.Addr(), []byte("again")); err != nil {
		t.Fatalf("new connection after cut: %v", err)
	}
	if r.Cuts() != 1 {
		t.Fatalf("Cuts = %d, want 1", r.Cuts())
	}
}

func TestDownRefusesNewConnectionsOnly(t *testing.T) {
	r := newRelay(t)
	open, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echo(open, []byte("before")); err != nil {
		t.Fatal(err)
	}
	r.SetDown(true)
	if err := roundTrip(r.Addr(), []byte("refused")); err == nil {
		t.Fatal("a new connection was forwarded while the relay was down")
	}
	if r.Refused() != 1 {
		t.Fatalf("Refused = %d after one refused connection, want 1", r.Refused())
	}
	if err := echo(open, []byte("still open")); err != nil {
		t.Fatalf("an open connection failed while down without a cut: %v", err)
	}
	r.SetDown(false)
	if err := roundTrip(r.Addr(), []byte("back")); err != nil {
		t.Fatalf("new connection after the link came back: %v", err)
	}
}

func TestDelayHoldsEachDirection(t *testing.T) {
	r := newRelay(t)
	const d = 100 * time.Millisecond
	r.SetDelay(d)
	start := time.Now()
	if err := roundTrip(r.Addr(), []byte("slow")); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 2*d {
		t.Fatalf("round trip took %v, want at least %v (delay each way)", took, 2*d)
	}
	r.SetDelay(0)
}

func TestCloseEndsConnectionsAndGoroutines(t *testing.T) {
	r, err := New(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echo(c, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	// A pending delay must not hold Close up.
	r.SetDelay(time.Hour)
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- r.Close() }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5 s")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read on a connection of a closed relay succeeded")
	}
	if _, err := net.DialTimeout("tcp", r.Addr(), time.Second); err == nil {
		t.Fatal("a closed relay still accepts connections")
	}
}
