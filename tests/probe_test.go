package tests

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/streams"
)

// jsProbe reads a replication's progress straight from JetStream. snapjet's
// status is refreshed about once a second, which at 100 MB/s is too coarse
// to stop a transfer at a chosen point; the stream and consumer state are
// exact at any moment.
type jsProbe struct {
	t  *testing.T
	nc *nats.Conn
	js jetstream.JetStream
}

func newProbe(t *testing.T, url string) *jsProbe {
	t.Helper()
	// The server may be restarted or killed along with replicate: keep
	// reconnecting rather than give up.
	nc, err := nats.Connect(url, nats.Name("e2e-probe"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("probe connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("probe JetStream: %v", err)
	}
	return &jsProbe{t: t, nc: nc, js: js}
}

// attemptStart returns the stream sequence of chunk 0 of rep's current
// attempt and how many of its chunks are stored. Chunks of one attempt sit
// on consecutive sequences and the stream always keeps its last message,
// so that message places the attempt even after purges; sequences alone
// are no count, they keep growing across attempts and purges.
func (p *jsProbe) attemptStart(ctx context.Context, rep replication) (first uint64, stored int64, err error) {
	s, err := p.js.Stream(ctx, streams.StreamName(rep.ID))
	if err != nil {
		return 0, 0, err
	}
	last, err := s.GetLastMsgForSubject(ctx, streams.Subject(rep.ID))
	if err != nil {
		return 0, 0, err
	}
	h, err := streams.DecodeHeader(last.Header)
	if err != nil {
		return 0, 0, err
	}
	if h.Attempt != rep.Attempt {
		return 0, 0, fmt.Errorf("the stream holds attempt %d, the status says %d", h.Attempt, rep.Attempt)
	}
	if h.Kind == streams.KindEnd {
		return last.Sequence - uint64(h.Chunks), h.Chunks, nil
	}
	return last.Sequence - uint64(h.Index), h.Index + 1, nil
}

// published is how many chunks of rep's current attempt are stored.
func (p *jsProbe) published(ctx context.Context, rep replication) (int64, error) {
	_, n, err := p.attemptStart(ctx, rep)
	return n, err
}

// acked is how many chunks of rep's current attempt the target in dir has
// acknowledged.
func (p *jsProbe) acked(ctx context.Context, rep replication, dir string) (int64, error) {
	name, _, ok := rep.target(dir)
	if !ok {
		return 0, nil
	}
	first, stored, err := p.attemptStart(ctx, rep)
	if err != nil {
		return 0, err
	}
	c, err := p.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
	if err != nil {
		return 0, err
	}
	floor := c.CachedInfo().AckFloor.Stream
	if floor < first {
		return 0, nil // nothing of this attempt yet
	}
	return min(int64(floor-first)+1, stored), nil
}

// sentAtLeast holds once chunks of chunkSize bytes covering percent of size
// are stored for the newest replication other than skip.
func (p *jsProbe) sentAtLeast(percent int, size, chunkSize int64, skip string) func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		if rep.SnapshotName == skip {
			return false
		}
		n, err := p.published(ctx, rep)
		return p.reached(err, "stored", n, chunkSize, size, percent)
	}
}

// appliedAtLeast holds once the target in dir has acknowledged chunks of
// chunkSize bytes covering percent of size.
func (p *jsProbe) appliedAtLeast(percent int, size, chunkSize int64, dir string) func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		n, err := p.acked(ctx, rep, dir)
		return p.reached(err, "acknowledged by "+dir, n, chunkSize, size, percent)
	}
}

func (p *jsProbe) reached(err error, what string, chunks, chunkSize, size int64, percent int) bool {
	if err != nil || chunks*chunkSize < size*int64(percent)/100 {
		return false
	}
	p.t.Logf("JetStream: %d chunks (%d MiB, %d%% of %d MiB) %s", chunks, chunks*chunkSize/mib, 100*chunks*chunkSize/size, size/mib, what)
	return true
}

// deliveredTo holds once the consumer of the target in dir has been
// handed a message: its pull is open at the server.
func (p *jsProbe) deliveredTo(dir string) func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		name, _, ok := rep.target(dir)
		if !ok {
			return false
		}
		c, err := p.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
		if err != nil || c.CachedInfo().Delivered.Stream == 0 {
			return false
		}
		p.t.Logf("JetStream: %s has been handed %d messages", name, c.CachedInfo().Delivered.Stream)
		return true
	}
}

// holdsTail holds once the whole stream, end marker included, is stored
// and has been delivered to the target in dir, which has not acknowledged
// all of it yet. A receiver killed now leaves its successor nothing that
// was never delivered: no new message to notice the gap by.
func (p *jsProbe) holdsTail(dir string) func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		name, _, ok := rep.target(dir)
		if !ok {
			return false
		}
		last, _, ok := p.storedEnd(ctx, rep)
		if !ok {
			return false
		}
		c, err := p.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
		if err != nil {
			return false
		}
		info := c.CachedInfo()
		if info.Delivered.Stream < last || info.AckFloor.Stream >= last {
			return false
		}
		p.t.Logf("JetStream: all %d messages stored and delivered to %s, acknowledged up to %d", last, name, info.AckFloor.Stream)
		return true
	}
}

// storedEnd reports whether the last message stored in rep's stream is an
// end marker, with its sequence and attempt.
func (p *jsProbe) storedEnd(ctx context.Context, rep replication) (seq uint64, attempt int, ok bool) {
	s, err := p.js.Stream(ctx, streams.StreamName(rep.ID))
	if err != nil {
		return 0, 0, false
	}
	last, err := s.GetLastMsgForSubject(ctx, streams.Subject(rep.ID))
	if err != nil {
		return 0, 0, false
	}
	h, err := streams.DecodeHeader(last.Header)
	if err != nil || h.Kind != streams.KindEnd {
		return 0, 0, false
	}
	return last.Sequence, h.Attempt, true
}

// publishLog counts every chunk published for any replication from its
// creation on, per attempt and index, duplicates included: JetStream drops
// a republished chunk by its message id, but a plain subscription on the
// subject sees each publish.
type publishLog struct {
	mu sync.Mutex
	n  map[publishKey]int
}

type publishKey struct {
	repl    string
	attempt int
	index   int64
}

// countPublishes starts a publishLog; call it before the sender starts.
func (p *jsProbe) countPublishes() *publishLog {
	p.t.Helper()
	l := &publishLog{n: map[publishKey]int{}}
	sub, err := p.nc.Subscribe(streams.Subject(">"), func(m *nats.Msg) {
		h, err := streams.DecodeHeader(m.Header)
		if err != nil || h.Kind != streams.KindChunk {
			return
		}
		l.mu.Lock()
		l.n[publishKey{h.Repl, h.Attempt, h.Index}]++
		l.mu.Unlock()
	})
	if err != nil {
		p.t.Fatalf("subscribe to chunk publishes: %v", err)
	}
	// Chunks arrive faster than a test goroutine may count them: never
	// drop one for a slow consumer, which would look like a missing chunk.
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		p.t.Fatal(err)
	}
	if err := p.nc.Flush(); err != nil {
		p.t.Fatalf("subscribe to chunk publishes: %v", err)
	}
	p.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return l
}

// assertEachSentOnce fails the test unless the source published every
// chunk of rep's final attempt exactly once: no chunk sent again.
func (l *publishLog) assertEachSentOnce(t *testing.T, rep replication) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var missing, twice []int64
	for i := int64(0); i < rep.TotalChunks; i++ {
		switch n := l.n[publishKey{rep.ID, rep.Attempt, i}]; {
		case n == 0:
			missing = append(missing, i)
		case n > 1:
			twice = append(twice, i)
		}
	}
	if rep.TotalChunks == 0 || len(missing) > 0 || len(twice) > 0 {
		t.Errorf("attempt %d of %s, %d chunks: published more than once %v, never seen published %v; the source must send each chunk once",
			rep.Attempt, rep.ID, rep.TotalChunks, twice, missing)
	}
}
