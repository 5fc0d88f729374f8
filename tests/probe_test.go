package tests

import (
	"context"
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

// published is how many chunks of rep's current attempt are stored.
func (p *jsProbe) published(ctx context.Context, rep replication) (int64, error) {
	s, err := p.js.Stream(ctx, streams.StreamName(rep.ID))
	if err != nil {
		return 0, err
	}
	return int64(s.CachedInfo().State.LastSeq), nil
}

// acked is how many chunks the target in dir has acknowledged.
func (p *jsProbe) acked(ctx context.Context, rep replication, dir string) (int64, error) {
	name, _, ok := rep.target(dir)
	if !ok {
		return 0, nil
	}
	c, err := p.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
	if err != nil {
		return 0, err
	}
	return int64(c.CachedInfo().AckFloor.Stream), nil
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
		s, err := p.js.Stream(ctx, streams.StreamName(rep.ID))
		if err != nil {
			return false
		}
		last, err := s.GetLastMsgForSubject(ctx, streams.Subject(rep.ID))
		if err != nil {
			return false
		}
		if h, err := streams.DecodeHeader(last.Header); err != nil || h.Kind != streams.KindEnd {
			return false
		}
		c, err := s.Consumer(ctx, streams.ConsumerName(name))
		if err != nil {
			return false
		}
		info := c.CachedInfo()
		if info.Delivered.Stream < last.Sequence || info.AckFloor.Stream >= last.Sequence {
			return false
		}
		p.t.Logf("JetStream: all %d messages stored and delivered to %s, acknowledged up to %d", last.Sequence, name, info.AckFloor.Stream)
		return true
	}
}
