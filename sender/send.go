package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// errStreamChanged means a regenerated send stream does not match what was
// already published, so the attempt cannot be continued.
var errStreamChanged = errors.New("the regenerated send stream differs from the chunks already stored")

type job struct {
	idx, off int64
	rawLen   int
	sum      uint64 // xxh64 of the raw bytes
	raw      []byte // nil once compressed: msg.Data holds the chunk
	msg      *nats.Msg
	done     chan struct{}
}

// resumePoint is where an attempt continues: the first chunk not stored yet.
type resumePoint struct {
	idx, off int64
	seq      uint64 // the stream's last sequence: chunk idx follows it
	lastSum  uint64 // checksum of chunk idx-1, to prove the regenerated prefix
	ended    bool   // the end marker is stored already
	chunks   int64
	total    int64
	digest   string
}

func findResume(ctx context.Context, st jetstream.Stream, r *coordinator.Replication) (resumePoint, error) {
	m, err := st.GetLastMsgForSubject(ctx, streams.Subject(r.ID))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Purged to nothing: the stream still counts on from its last sequence.
		info, err := st.Info(ctx)
		if err != nil {
			return resumePoint{}, fmt.Errorf("find where the stream of %s left off: %w", r.ID, err)
		}
		return resumePoint{seq: info.State.LastSeq}, nil
	}
	if err != nil {
		return resumePoint{}, fmt.Errorf("find where the stream of %s left off: %w", r.ID, err)
	}
	h, err := streams.DecodeHeader(m.Header)
	if err != nil || h.Attempt != r.Attempt {
		// Left from another attempt (the coordinator purges those); the
		// stream holds one subject, so m is its last message.
		return resumePoint{seq: m.Sequence}, nil
	}
	if h.Kind == streams.KindEnd {
		return resumePoint{ended: true, chunks: h.Chunks, total: h.TotalBytes, digest: h.Digest}, nil
	}
	rawLen, _ := strconv.ParseInt(m.Header.Get(streams.HdrRawLen), 10, 64)
	return resumePoint{idx: h.Index + 1, off: h.Offset + rawLen, seq: m.Sequence, lastSum: h.Sum}, nil
}

// sendAttempt publishes the current attempt of r from where the stream
// left off, then the end marker. It returns when the end marker is stored.
func (s *Sender) sendAttempt(ctx context.Context, r *coordinator.Replication, st jetstream.Stream) error {
	log := s.Log.With("replication", r.ID, "attempt", r.Attempt)
	rp, err := findResume(ctx, st, r)
	if err != nil {
		return err
	}
	if rp.ended {
		return s.Coord.MarkSent(ctx, r.ID, r.Attempt, rp.chunks, rp.total, r.WireBytes, rp.digest)
	}
	parent := ""
	if r.ParentUUID != "" {
		pinfo, err := btrfs.Inspect(r.Parent)
		if err != nil || pinfo.UUID.String() != r.ParentUUID {
			_, err := s.Coord.Restart(ctx, r.ID, r.Attempt, fmt.Sprintf("incremental parent %s is gone from the source", r.Parent), true)
			if err == nil {
				err = errAttemptOver
			}
			return err
		}
		parent = r.Parent
	}
	if rp.idx > 0 {
		log.Info("resuming send", "chunk", rp.idx, "offset", rp.off)
		s.Metrics.Resumed(s.Job, "sender")
	} else {
		log.Info("sending", "snapshot", r.Snapshot, "parent", r.Parent)
	}

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out, err := s.Streams.Open(sctx, r.Snapshot, parent)
	if err != nil {
		return err
	}
	comp, err := newCompression(s.compress, s.local, slices.Contains(r.Decodes, streams.EncS2), func(from, to streams.Level, w waits, idleCores float64, p pace) {
		log.Debug("compression level", "from", from, "to", to, "read_wait", w.read, "compress_wait", w.compress, "link_wait", w.link, "idle_cores", idleCores, "pace", p)
	})
	if err != nil {
		return err
	}
	if comp.s2Refused {
		log.Warn("compression s2 was asked for, but not every target announced it reads S2 (a receiver older than S2); compressing at fastest instead: upgrade snapjet on the receiving side", "decodes", r.Decodes)
	}
	digest := streams.NewDigest()
	order := make(chan *job, 2*s.workers()+2)
	work := make(chan *job, 2*s.workers()+2)
	var readErr error
	go func() {
		defer close(order)
		defer close(work)
		readErr = s.readChunks(sctx, out, r, rp, digest, order, work)
	}()
	var wg sync.WaitGroup
	for i := 0; i < s.workers(); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				s.encode(r, comp, j)
			}
		}()
	}
	p := &publisher{s: s, r: r, st: st, log: log, comp: comp, chunks: rp.idx, bytes: rp.off, wire: r.WireBytes, recoveredAt: -1, after: seqAt{rp.idx, rp.seq}}
	pubErr := p.run(sctx, order)
	if pubErr != nil {
		// Only a failure stops the producer early: cancelling a send that
		// already exited 0 would make Close report "context canceled".
		cancel()
		for range order { // let the reader finish
		}
	}
	wg.Wait()
	if readErr != nil {
		cancel() // the reader stopped reading: the producer may block on the pipe
	}
	closeErr := out.Close()
	switch {
	case pubErr != nil:
		return pubErr
	case readErr != nil && !errors.Is(readErr, context.Canceled):
		return readErr
	case closeErr != nil:
		return closeErr
	}
	sum := digest.String()
	end := streams.EncodeEnd(r.ID, r.Attempt, p.chunks, p.bytes, sum)
	if _, err := s.JS.PublishMsg(ctx, end, publishOpts(r, p.after.last(p.chunks))...); err != nil {
		return fmt.Errorf("publish end marker of %s: %w", r.ID, err)
	}
	log.Info("send stream stored", "chunks", p.chunks, "bytes", p.bytes, "wire_bytes", p.wire, "compression", comp.String(), "digest", sum)
	return s.Coord.MarkSent(ctx, r.ID, r.Attempt, p.chunks, p.bytes, p.wire, sum)
}

// readChunks cuts the send stream into fixed-size chunks (the same cut on
// every run, so a restarted sender finds the same boundaries), adds every
// chunk to the stream's digest, skips what is stored already and proves
// the skipped prefix matches.
func (s *Sender) readChunks(ctx context.Context, out io.Reader, r *coordinator.Replication, rp resumePoint, digest *streams.Digest, order, work chan<- *job) error {
	var off int64
	for idx := int64(0); ; idx++ {
		raw := s.bufs.get(r.ChunkSize)
		n, err := io.ReadFull(out, raw)
		if n == 0 && (err == io.EOF || err == io.ErrUnexpectedEOF) {
			s.bufs.put(raw)
			if idx < rp.idx {
				return fmt.Errorf("%w: it ends at %d bytes, %d were stored", errStreamChanged, off, rp.off)
			}
			return nil
		}
		if err != nil && err != io.ErrUnexpectedEOF {
			return fmt.Errorf("read the send stream: %w", err)
		}
		raw = raw[:n]
		sum := xxhash.Sum64(raw)
		digest.Add(idx, n, sum)
		if idx < rp.idx {
			if idx == rp.idx-1 && sum != rp.lastSum {
				return fmt.Errorf("%w: chunk %d", errStreamChanged, idx)
			}
			off += int64(n)
			s.bufs.put(raw)
			continue
		}
		j := &job{idx: idx, off: off, rawLen: n, sum: sum, raw: raw, done: make(chan struct{})}
		off += int64(n)
		select {
		case order <- j:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case work <- j:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// encode compresses j into its message. Until the server confirms it a
// chunk keeps one buffer, its compressed payload or, when compression did
// not help, its raw bytes; the other goes back to the pool at once, which
// halves what the chunks in flight hold on text.
func (s *Sender) encode(r *coordinator.Replication, comp *compression, j *job) {
	defer close(j.done)
	level := comp.next()
	if level == streams.LevelNone {
		j.msg = s.codec.EncodeChunk(r.ID, r.Attempt, j.idx, j.off, j.raw, j.sum, level, nil)
		return
	}
	dst := s.bufs.get(streams.MaxWire(level, r.ChunkSize))
	j.msg = s.codec.EncodeChunk(r.ID, r.Attempt, j.idx, j.off, j.raw, j.sum, level, dst)
	comp.gate.observe(len(j.msg.Data), j.rawLen)
	if &j.msg.Data[0] == &dst[:1][0] {
		s.bufs.put(j.raw)
		j.raw = nil
	} else {
		s.bufs.put(dst)
	}
}

// bufPool recycles chunk buffers once the server confirmed them: a fresh
// 1 MiB allocation per chunk costs page faults and GC work at 1 GB/s.
type bufPool struct{ p sync.Pool }

func (b *bufPool) get(size int) []byte {
	if v, ok := b.p.Get().(*[]byte); ok && cap(*v) >= size {
		return (*v)[:size]
	}
	return make([]byte, size)
}

func (b *bufPool) put(buf []byte) {
	if cap(buf) > 0 {
		buf = buf[:cap(buf)]
		b.p.Put(&buf)
	}
}
