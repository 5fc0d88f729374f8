package wire

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// TestDelayRelay checks that bytes arrive intact and in order, that a
// request and its answer take about twice the one-way delay, and that a
// half-close passes through while the other direction still flows.
func TestDelayRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := make([]byte, 3<<20)
	rand.Read(payload)
	served := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- nil
			return
		}
		defer c.Close()
		// Echo one byte (the round trip), then read everything up to the
		// client's half-close and answer with its length.
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil {
			served <- nil
			return
		}
		c.Write(b)
		got, _ := io.ReadAll(c)
		c.Write([]byte("done"))
		served <- got
	}()
	const oneWay = 30 * time.Millisecond
	r, err := NewDelayRelay("127.0.0.1:0", ln.Addr().String(), oneWay, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	c.Write([]byte{7})
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	if rtt := time.Since(t0); rtt < 2*oneWay || rtt > 2*oneWay+200*time.Millisecond {
		t.Errorf("round trip %v, want about %v", rtt, 2*oneWay)
	}
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	ans, err := io.ReadAll(c)
	if err != nil || string(ans) != "done" {
		t.Fatalf("answer %q, %v", ans, err)
	}
	select {
	case got := <-served:
		if !bytes.Equal(got, payload) {
			t.Fatalf("server got %d bytes, not the %d sent", len(got), len(payload))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not finish")
	}
	if r.Up() != int64(len(payload))+1 || r.Down() != 5 {
		t.Errorf("counted up %d down %d", r.Up(), r.Down())
	}
}
