// Package netfault is a TCP relay that stands in for a network link in
// tests and benchmarks: it forwards every connection accepted on a
// loopback port to a target address, counts the bytes in each direction,
// and can fail the link on demand.
//
// Contract:
//   - Up and Down count the bytes written to the target and to clients;
//     they only grow.
//   - Cut closes every open connection at once, both ends, as a network
//     failure would; it returns how many client connections it closed.
//   - While SetDown(true) holds, a new connection is accepted and closed at
//     once without reaching the target, like an unreachable network, and
//     counted by Refused; a connection the target refuses is closed the
//     same way (not counted). SetDown does not touch open connections: call
//     Cut for that.
//   - SetDelay(d) holds every forwarded read for d before writing it, in
//     both directions, so a round trip takes at least 2d; reads are
//     forwarded one at a time, so a delay also bounds throughput.
//   - Close stops accepting, closes every connection and returns once
//     every goroutine of the relay has ended.
package netfault

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// bufSize is large enough that the relay's own syscalls stay far below the
// cost of the processes it sits between.
const bufSize = 256 << 10

// Relay is one simulated link. Its methods are safe for concurrent use.
type Relay struct {
	ln      net.Listener
	target  string
	up      atomic.Int64 // client to target
	down    atomic.Int64 // target to client
	cuts    atomic.Int64
	refused atomic.Int64
	refuse  atomic.Bool
	delay   atomic.Int64 // time.Duration
	closed  chan struct{}

	mu    sync.Mutex
	pairs map[*pair]struct{}
	wg    sync.WaitGroup
}

// pair is one forwarded connection: the client's and the relay's own to
// the target.
type pair struct{ client, server net.Conn }

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
}

// New listens on a free loopback port and forwards to target.
func New(target string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("relay to %s: listen: %w", target, err)
	}
	r := &Relay{ln: ln, target: target, pairs: map[*pair]struct{}{}, closed: make(chan struct{})}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the host:port clients connect to.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Up is the number of bytes forwarded from clients to the target so far.
func (r *Relay) Up() int64 { return r.up.Load() }

// Down is the number of bytes forwarded from the target to clients so far.
func (r *Relay) Down() int64 { return r.down.Load() }

// Cuts is how many connections Cut has closed in all.
func (r *Relay) Cuts() int64 { return r.cuts.Load() }

// Refused is how many connections were refused while down, in all: a test
// can wait for a client to have tried the link during an outage.
func (r *Relay) Refused() int64 { return r.refused.Load() }

// SetDown makes the relay refuse (true) or forward (false) new connections.
func (r *Relay) SetDown(down bool) { r.refuse.Store(down) }

// SetDelay holds every forwarded read for d before it is written (0: none).
func (r *Relay) SetDelay(d time.Duration) { r.delay.Store(int64(d)) }

// Cut closes every open connection in both directions and returns how
// many it closed.
func (r *Relay) Cut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.pairs)
	for p := range r.pairs {
		p.close()
		delete(r.pairs, p)
	}
	r.cuts.Add(int64(n))
	return n
}

// Close stops accepting, closes every connection and waits for the
// forwarding goroutines to end.
func (r *Relay) Close() error {
	r.mu.Lock()
	select {
	case <-r.closed:
	default:
		close(r.closed)
	}
	for p := range r.pairs {
		p.close()
		delete(r.pairs, p)
	}
	r.mu.Unlock()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return // listener closed
		}
		if r.refuse.Load() {
			r.refused.Add(1) // first: the client may look once it sees the close
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", r.target)
		if err != nil {
			// The client sees a refused service, as it would without the relay.
			client.Close()
			continue
		}
		p := &pair{client: client, server: server}
		r.mu.Lock()
		select {
		case <-r.closed:
			r.mu.Unlock()
			p.close()
			return
		default:
		}
		r.pairs[p] = struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pump(p, server, client, &r.up)
		go r.pump(p, client, server, &r.down)
	}
}

// pump copies one direction; when either direction ends, both connections
// are closed so the peer sees the failure at once instead of a half-open
// socket. A cut or a peer's close ends every pump, so the copy error is
// expected and carries no information.
func (r *Relay) pump(p *pair, dst io.Writer, src io.Reader, n *atomic.Int64) {
	defer r.wg.Done()
	buf := make([]byte, bufSize)
	for r.forward(dst, src, buf, n) {
	}
	r.mu.Lock()
	delete(r.pairs, p)
	r.mu.Unlock()
	p.close()
}

// forward moves one read from src to dst after the configured delay and
// reports whether the connection is still good.
func (r *Relay) forward(dst io.Writer, src io.Reader, buf []byte, n *atomic.Int64) bool {
	got, err := src.Read(buf)
	if got > 0 {
		if d := time.Duration(r.delay.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.closed:
				t.Stop()
				return false
			}
		}
		w, werr := dst.Write(buf[:got])
		n.Add(int64(w))
		if werr != nil || w != got {
			return false
		}
	}
	return err == nil
}
