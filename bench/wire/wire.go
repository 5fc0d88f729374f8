// Package wire counts the bytes that cross the connections between
// benchmarked processes: a pipe relay for shell-style pipelines and a TCP
// relay that can also cut its connections on demand, to measure what an
// interruption costs.
package wire

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// bufSize is large enough that the relay's own syscalls stay far below the
// cost of the processes it sits between.
const bufSize = 256 << 10

// Copy copies src to dst like io.Copy and adds every byte written to n as
// it goes, so a watcher can read progress while the copy runs.
func Copy(dst io.Writer, src io.Reader, n *atomic.Int64) (int64, error) {
	buf := make([]byte, bufSize)
	var total int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			total += int64(w)
			n.Add(int64(w))
			if werr != nil {
				return total, werr
			}
			if w != r {
				return total, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// Relay forwards every TCP connection accepted on a loopback port to a
// target address and counts the bytes in each direction.
type Relay struct {
	ln     net.Listener
	target string
	up     atomic.Int64 // client to target
	down   atomic.Int64 // target to client
	cuts   atomic.Int64

	mu     sync.Mutex
	pairs  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

// pair is one forwarded connection: the client's and the relay's own to the target.
type pair struct{ client, server net.Conn }

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
}

// NewRelay listens on a free loopback port and forwards to target.
func NewRelay(target string) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("relay to %s: listen: %w", target, err)
	}
	r := &Relay{ln: ln, target: target, pairs: map[*pair]struct{}{}}
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

// Cuts is how many connections Cut has closed.
func (r *Relay) Cuts() int64 { return r.cuts.Load() }

// Cut closes every open connection in both directions, as a network
// failure would; new connections are still accepted, so clients can
// reconnect.
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
	r.closed = true
	for p := range r.pairs {
		p.close()
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
		server, err := net.Dial("tcp", r.target)
		if err != nil {
			// The client sees a refused service, as it would without the relay.
			client.Close()
			continue
		}
		p := &pair{client: client, server: server}
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			p.close()
			return
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
	_, _ = Copy(dst, src, n)
	r.mu.Lock()
	delete(r.pairs, p)
	r.mu.Unlock()
	p.close()
}

// FreePort returns a loopback TCP port that was free a moment ago, for a
// server that must be told its port up front.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
