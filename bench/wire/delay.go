package wire

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// DelayRelay forwards TCP connections like Relay, but holds every byte
// for a fixed one-way delay in each direction, so a path through it has a
// round-trip time of twice that delay. The kernel this runs on has no
// sch_netem, so the delay is added here; the rate is shaped separately
// (tbf on the link the relay writes into).
//
// Each direction is a delay line: a reader takes bytes as they arrive and
// stamps them with the time they are due, a writer sends them when due.
// The line holds at most limit bytes; when it is full the reader stops,
// so a source that outruns the link is held back by TCP as on a real
// path. limit must be at least the rate times the delay or the line
// itself, not the link, becomes the bottleneck.
type DelayRelay struct {
	ln     net.Listener
	target string
	delay  time.Duration
	limit  int
	up     atomic.Int64 // client to target
	down   atomic.Int64 // target to client

	mu     sync.Mutex
	pairs  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewDelayRelay listens on listen (host:port, port 0 for any) and forwards
// to target, delaying each direction by oneWay, with at most limit bytes
// held per direction.
func NewDelayRelay(listen, target string, oneWay time.Duration, limit int) (*DelayRelay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("delay relay to %s: listen: %w", target, err)
	}
	r := &DelayRelay{ln: ln, target: target, delay: oneWay, limit: max(limit, bufSize), pairs: map[*pair]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the host:port clients connect to.
func (r *DelayRelay) Addr() string { return r.ln.Addr().String() }

// Up is the number of bytes forwarded from clients to the target so far.
func (r *DelayRelay) Up() int64 { return r.up.Load() }

// Down is the number of bytes forwarded from the target to clients so far.
func (r *DelayRelay) Down() int64 { return r.down.Load() }

// Close stops accepting, closes every connection and waits for every
// goroutine of the relay to end.
func (r *DelayRelay) Close() error {
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

func (r *DelayRelay) accept() {
	defer r.wg.Done()
	for {
		client, err := r.ln.Accept()
		if err != nil {
			return // listener closed
		}
		server, err := net.DialTimeout("tcp", r.target, 10*time.Second)
		if err != nil {
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
		var both sync.WaitGroup
		both.Add(2)
		r.wg.Add(3)
		go r.direction(p, server, client, &r.up, &both)
		go r.direction(p, client, server, &r.down, &both)
		go func() {
			// The pair is done when both directions are: a half-closed
			// connection (ssh's client after its last byte) still carries
			// the other direction.
			defer r.wg.Done()
			both.Wait()
			r.mu.Lock()
			delete(r.pairs, p)
			r.mu.Unlock()
			p.close()
		}()
	}
}

type chunk struct {
	data []byte
	due  time.Time
}

// line is one direction's delay line, bounded in bytes.
type line struct {
	mu     sync.Mutex
	cond   *sync.Cond
	q      []chunk
	bytes  int
	limit  int
	closed bool // no more pushes (source ended) or abort
	abort  bool // drop what is queued (the connection failed)
}

func newLine(limit int) *line {
	l := &line{limit: limit}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// push queues c, waiting while the line is full; false if aborted.
func (l *line) push(c chunk) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.bytes > 0 && l.bytes+len(c.data) > l.limit && !l.abort {
		l.cond.Wait()
	}
	if l.abort {
		return false
	}
	l.q = append(l.q, c)
	l.bytes += len(c.data)
	l.cond.Broadcast()
	return true
}

// pop takes the oldest chunk, waiting for one; false when the line is
// closed and empty, or aborted.
func (l *line) pop() (chunk, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.q) == 0 && !l.closed && !l.abort {
		l.cond.Wait()
	}
	if l.abort || len(l.q) == 0 {
		return chunk{}, false
	}
	c := l.q[0]
	l.q[0] = chunk{}
	l.q = l.q[1:]
	return c, true
}

// done releases the bytes of a chunk the writer has sent.
func (l *line) done(n int) {
	l.mu.Lock()
	l.bytes -= n
	l.cond.Broadcast()
	l.mu.Unlock()
}

func (l *line) close(abort bool) {
	l.mu.Lock()
	l.closed = true
	l.abort = l.abort || abort
	l.cond.Broadcast()
	l.mu.Unlock()
}

// direction moves src to dst through a delay line. At src's EOF what is
// queued is still delivered, then dst is half-closed; on any other error
// both connections close, which ends the other direction too.
func (r *DelayRelay) direction(p *pair, dst, src net.Conn, n *atomic.Int64, both *sync.WaitGroup) {
	defer r.wg.Done()
	defer both.Done()
	l := newLine(r.limit)
	wrote := make(chan error, 1)
	go func() {
		wrote <- r.deliver(p, l, dst, n)
	}()
	var readErr error
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		data := buf[:k]
		if k > 0 && k < 16<<10 {
			// Small reads (protocol messages, acks) get a buffer of their
			// size, so the line's byte bound also bounds its memory.
			data = append([]byte(nil), data...)
		} else if k > 0 {
			buf = make([]byte, 64<<10) // the line owns data now
		}
		if k > 0 && !l.push(chunk{data: data, due: time.Now().Add(r.delay)}) {
			readErr = io.ErrClosedPipe
			break
		}
		if err != nil {
			if err != io.EOF {
				readErr = err
			}
			break
		}
	}
	l.close(readErr != nil)
	if readErr != nil {
		p.close()
	}
	if err := <-wrote; err != nil {
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok && readErr == nil {
		_ = tc.CloseWrite()
	}
}

// deliver writes each chunk of l to dst once it is due.
func (r *DelayRelay) deliver(p *pair, l *line, dst net.Conn, n *atomic.Int64) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		c, ok := l.pop()
		if !ok {
			return nil
		}
		// Waiting here is the emulated propagation delay, not
		// synchronisation: the chunk may not arrive before its time.
		if d := time.Until(c.due); d > 0 {
			timer.Reset(d)
			<-timer.C
		}
		w, err := dst.Write(c.data)
		n.Add(int64(w))
		l.done(len(c.data))
		if err != nil {
			// Unblock the reader, whether it waits for room in the line
			// or for bytes from its connection.
			l.close(true)
			p.close()
			return err
		}
	}
}

// pair is one forwarded connection: the client's and the relay's own to
// the target.
type pair struct{ client, server net.Conn }

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
}
