package chaos

import (
	"net"
	"sync"
	"sync/atomic"
)

// relay forwards TCP connections from a loopback port to the NATS server,
// so a client's link can be cut: cut closes every open connection at once
// (what a failed network looks like to both ends), and while down new
// connections are closed as soon as they arrive, like an unreachable peer.
type relay struct {
	ln       net.Listener
	upstream string
	down     atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func startRelay(upstream string) (*relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &relay{ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

func (r *relay) url() string { return "nats://" + r.ln.Addr().String() }

func (r *relay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		if r.down.Load() {
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", r.upstream)
		if err != nil {
			client.Close() // the server is down: the client retries
			continue
		}
		r.mu.Lock()
		r.conns[client], r.conns[server] = struct{}{}, struct{}{}
		r.mu.Unlock()
		r.wg.Add(2)
		go r.pipe(server, client)
		go r.pipe(client, server)
	}
}

// pipe copies src to dst until either fails, then closes both so that the
// other direction ends too.
func (r *relay) pipe(dst, src net.Conn) {
	defer r.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			break
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range []net.Conn{src, dst} {
		c.Close()
		delete(r.conns, c)
	}
}

// setDown makes the relay refuse (true) or forward (false) new connections.
func (r *relay) setDown(down bool) { r.down.Store(down) }

// cut closes every open connection and returns how many pairs it cut.
func (r *relay) cut() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.conns) / 2
	for c := range r.conns {
		c.Close()
	}
	clear(r.conns)
	return n
}

// close stops the relay and waits for its goroutines.
func (r *relay) close() {
	r.ln.Close()
	r.cut()
	r.wg.Wait()
}
