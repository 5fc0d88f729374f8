package tests

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// tcpProxy forwards connections from a 127.0.0.1 port to upstream. It
// counts the bytes in each direction and can cut every open connection at
// once, which is what a network failure looks like to both ends. While it
// is down it drops new connections at once, like an unreachable network;
// otherwise clients can reconnect.
type tcpProxy struct {
	t           *testing.T
	ln          net.Listener
	upstream    string
	toClient    atomic.Int64 // bytes from upstream to the client
	toServer    atomic.Int64 // bytes from the client to upstream
	unreachable atomic.Bool  // drop new connections
	mu          sync.Mutex
	conns       map[net.Conn]struct{}
	wg          sync.WaitGroup
}

func startProxy(t *testing.T, upstream string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	p := &tcpProxy{t: t, ln: ln, upstream: upstream, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		if p.unreachable.Load() {
			client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.upstream)
		if err != nil {
			client.Close()
			continue
		}
		p.track(client, server)
		p.wg.Add(2)
		go p.pipe(server, client, &p.toServer)
		go p.pipe(client, server, &p.toClient)
	}
}

func (p *tcpProxy) track(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		p.conns[c] = struct{}{}
	}
}

// pipe copies src to dst until either side fails, then closes both so the
// other direction ends too.
func (p *tcpProxy) pipe(dst, src net.Conn, count *atomic.Int64) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			count.Add(int64(n))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				p.t.Logf("proxy: %v", err)
			}
			break
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range []net.Conn{src, dst} {
		c.Close()
		delete(p.conns, c)
	}
}

// setDown makes the proxy drop (true) or forward (false) new connections.
func (p *tcpProxy) setDown(down bool) { p.unreachable.Store(down) }

// cut closes every open connection and returns how many pairs it cut.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	n := len(p.conns) / 2
	clear(p.conns)
	return n
}
