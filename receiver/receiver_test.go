package receiver_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sys/unix"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/internal/treecmp"
	"github.com/snapjet/snapjet/receiver"
	"github.com/snapjet/snapjet/streams"
)

const (
	target    = "nas"
	chunkSize = 64 << 10
)

// env is one btrfs filesystem holding a source subvolume and a target
// directory, a JetStream server, a coordinator in the test (playing the
// sender's process) and a receiver for the target on its own connection.
type env struct {
	t      *testing.T
	ctx    context.Context
	src    string // source subvolume
	target string // target directory
	b      *broker.Broker
	coord  *coordinator.Coordinator
	codec  *streams.Codec
}

func newEnv(t *testing.T) *env { t.Helper(); return newEnvWith(t, receiver.Native, nil) }

// newEnvBefore runs before, if given, when the source and the target
// directory exist but the receiver has not started yet.
func newEnvBefore(t *testing.T, before func(*env)) *env {
	t.Helper()
	return newEnvWith(t, receiver.Native, before)
}

// newEnvWith is newEnvBefore with the receiver's applier chosen.
func newEnvWith(t *testing.T, applier string, before func(*env)) *env {
	t.Helper()
	fs := loopfs.New(t, 384<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e := &env{t: t, ctx: ctx, src: filepath.Join(fs.Dir, "src"), target: filepath.Join(fs.Dir, "target")}
	if err := btrfs.CreateSubvolume(ctx, e.src); err != nil {
		t.Fatal(err)
	}
	fillSource(t, e.src)
	if err := os.Mkdir(e.target, 0o755); err != nil {
		t.Fatal(err)
	}

	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: "sender", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.b = b
	if e.coord, err = coordinator.New(ctx, b.NC, b.JS, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.coord.Close() })
	if e.codec, err = streams.NewCodec(); err != nil {
		t.Fatal(err)
	}

	if before != nil {
		before(e)
	}
	nc, err := nats.Connect(b.URL(), nats.Name("receiver"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := receiver.New(ctx, nc, js, target, e.target, log, receiver.WithApplier(applier))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rc.Run(rctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("receiver: %v", err)
		}
	})
	return e
}

// fillSource writes what a user cares about: compressible and random
// content, modes, owners, an xattr, a symlink and a hard link.
func fillSource(t *testing.T, dir string) {
	t.Helper()
	rng := rand.New(rand.NewSource(42))
	random := make([]byte, 1<<20)
	rng.Read(random)
	var text bytes.Buffer
	for text.Len() < 1<<20 {
		text.WriteString("snapjet replicates btrfs snapshots over NATS JetStream; line ")
		text.WriteString(time.Duration(rng.Int63n(1e12)).String())
		text.WriteByte('\n')
	}
	write := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("text.log", text.Bytes(), 0o644)
	write("random.bin", random, 0o600)
	write("etc/secret.conf", []byte("key=value\n"), 0o640)
	if err := os.Chown(filepath.Join(dir, "etc/secret.conf"), 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(dir, "text.log"), "user.origin", []byte("test"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("etc/secret.conf", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "random.bin"), filepath.Join(dir, "random.hardlink")); err != nil {
		t.Fatal(err)
	}
}

// snapshot is one read-only source snapshot and its full send stream.
type snapshot struct {
	path   string
	name   string
	uuid   string
	stream []byte
}

func (e *env) snapshot(name string) snapshot {
	e.t.Helper()
	path := filepath.Join(filepath.Dir(e.src), "snaps", name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := btrfs.Snapshot(e.ctx, e.src, path, true); err != nil {
		e.t.Fatal(err)
	}
	info, err := btrfs.Inspect(path)
	if err != nil {
		e.t.Fatal(err)
	}
	out, proc, err := btrfs.Send(e.ctx, path, btrfs.SendOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	stream, rerr := io.ReadAll(out)
	if err := proc.Wait(); err != nil || rerr != nil {
		e.t.Fatalf("btrfs send %s: %v %v", path, err, rerr)
	}
	return snapshot{path: path, name: name, uuid: info.UUID.String(), stream: stream}
}

// plan creates the replication of s to the target and begins attempt 1,
// as the sender does before publishing.
func (e *env) plan(id string, s snapshot) {
	e.t.Helper()
	r := &coordinator.Replication{ID: id, Source: e.src, Snapshot: s.path, SnapshotName: s.name, SnapshotUUID: s.uuid,
		ChunkSize: chunkSize, Window: 256 << 20, Targets: map[string]*coordinator.Target{target: {State: coordinator.TPending}}}
	if err := e.coord.Create(e.ctx, r); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.coord.BeginAttempt(e.ctx, id); err != nil {
		e.t.Fatal(err)
	}
}

// chunks encodes the stream of s as the sender would.
func (e *env) chunks(id string, attempt int, s snapshot) []*nats.Msg {
	var out []*nats.Msg
	for off := 0; off < len(s.stream); off += chunkSize {
		raw := s.stream[off:min(off+chunkSize, len(s.stream))]
		out = append(out, e.codec.EncodeChunk(id, attempt, int64(len(out)), int64(off), raw, xxhash.Sum64(raw), streams.LevelDefault, nil))
	}
	return out
}

func (e *env) publish(msgs ...*nats.Msg) {
	e.t.Helper()
	for _, m := range msgs {
		if _, err := e.b.JS.PublishMsg(e.ctx, m); err != nil {
			e.t.Fatalf("publish: %v", err)
		}
	}
}

// end publishes the end marker of a correctly sent stream.
func (e *env) end(id string, attempt int, s snapshot, chunks []*nats.Msg) {
	e.t.Helper()
	e.publish(streams.EncodeEnd(id, attempt, int64(len(chunks)), int64(len(s.stream)), digest(s)))
}

// digestOf is the sender's digest of a stream.
func digestOf(stream []byte) string {
	d := streams.NewDigest()
	for off := 0; off < len(stream); off += chunkSize {
		raw := stream[off:min(off+chunkSize, len(stream))]
		d.Add(int64(off/chunkSize), len(raw), xxhash.Sum64(raw))
	}
	return d.String()
}

func digest(s snapshot) string { return digestOf(s.stream) }

// markSent records the stored end marker with the coordinator, the
// sender's step after publishing it. It fails when the attempt is over.
func (e *env) markSent(id string, attempt int, s snapshot, chunks []*nats.Msg) error {
	var wire int64
	for _, m := range chunks {
		wire += int64(len(m.Data))
	}
	return e.coord.MarkSent(e.ctx, id, attempt, int64(len(chunks)), int64(len(s.stream)), wire, digest(s))
}

// send publishes a whole attempt intact. It records the end with the
// coordinator before storing the end marker, the reverse of the sender's
// order, so that these tests do not hinge on the race that
// TestReceiveCommitsWhenMarkSentIsLate shows.
func (e *env) send(id string, attempt int, s snapshot) []*nats.Msg {
	e.t.Helper()
	chunks := e.chunks(id, attempt, s)
	e.publish(chunks...)
	if err := e.markSent(id, attempt, s, chunks); err != nil {
		e.t.Fatalf("MarkSent: %v", err)
	}
	e.end(id, attempt, s, chunks)
	return chunks
}

// wait polls the record until cond holds.
func (e *env) wait(id, what string, cond func(*coordinator.Replication) bool) *coordinator.Replication {
	e.t.Helper()
	deadline := time.Now().Add(12 * time.Second)
	for {
		r, _, err := e.coord.Store().Get(e.ctx, id)
		if err != nil {
			e.t.Fatal(err)
		}
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(r, "", "  ")
			e.t.Fatalf("waiting for %s; record is now:\n%s", what, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// watch collects every stored version of the replication from now on.
func (e *env) watch(id string) func() []coordinator.Replication {
	ctx, cancel := context.WithCancel(e.ctx)
	e.t.Cleanup(cancel)
	ch, err := e.coord.Store().Watch(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []coordinator.Replication
	go func() {
		for r := range ch {
			if r.ID == id {
				mu.Lock()
				seen = append(seen, *r)
				mu.Unlock()
			}
		}
	}()
	return func() []coordinator.Replication {
		mu.Lock()
		defer mu.Unlock()
		return append([]coordinator.Replication(nil), seen...)
	}
}

// assertNothingApplied checks that no snapshot was committed under name and
// that staging holds nothing.
func (e *env) assertNothingApplied(name string) {
	e.t.Helper()
	if _, err := os.Lstat(filepath.Join(e.target, name)); !errors.Is(err, os.ErrNotExist) {
		e.t.Errorf("%s exists in the target after a refused stream (%v)", name, err)
	}
	subs, err := btrfs.List(e.target)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, s := range subs {
		e.t.Errorf("subvolume %s in the target after a refused stream", s.Path)
	}
	e.assertStagingEmpty()
}

// assertStagingEmpty checks that no subvolume is left in staging (an empty
// directory may linger for a moment after a commit). The coordinator
// answers a refused stream only after it recorded its verdict, so the
// receiver may still be deleting its partial when the record moved on:
// this waits, up to 10 s, for staging to be clean.
func (e *env) assertStagingEmpty() {
	e.t.Helper()
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		left = e.staged()
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // polling the filesystem: no event to wait for
	}
	for _, p := range left {
		e.t.Errorf("staging holds %s", p)
	}
}

// staged lists the subvolumes (and staging dirs that are subvolumes) in
// the target's staging area.
func (e *env) staged() []string {
	e.t.Helper()
	incoming := filepath.Join(e.target, ".snapjet", "incoming")
	entries, err := os.ReadDir(incoming)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		p := filepath.Join(incoming, en.Name())
		subs, err := btrfs.List(p)
		if err != nil || btrfs.IsSubvolume(p) {
			out = append(out, fmt.Sprintf("%s (%v)", p, err))
		}
		for _, s := range subs {
			out = append(out, "subvolume "+s.Path)
		}
	}
	return out
}

// assertCommitted checks the committed copy of s the way a user would.
func (e *env) assertCommitted(r *coordinator.Replication, s snapshot) {
	e.t.Helper()
	final := filepath.Join(e.target, s.name)
	if got := r.Targets[target]; got.State != coordinator.TCommitted || got.Path != final {
		e.t.Errorf("target %s at %q, want committed at %s", got.State, got.Path, final)
	}
	info, err := btrfs.Inspect(final)
	if err != nil {
		e.t.Fatalf("committed snapshot: %v", err)
	}
	if !info.ReadOnly {
		e.t.Error("committed snapshot is writable")
	}
	if info.ReceivedUUID.String() != s.uuid {
		e.t.Errorf("received UUID %q, want the source snapshot's %s", info.ReceivedUUID, s.uuid)
	}
	diffs, err := treecmp.Compare(s.path, final, treecmp.Options{Times: true})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, d := range diffs {
		e.t.Errorf("committed tree differs: %s", d)
	}
	e.assertStagingEmpty()
}

func TestReceiveCommitsAVerifiedStream(t *testing.T) {
	e := newEnv(t)
	s := e.snapshot("src.1")
	e.plan("src-1", s)
	chunks := e.send("src-1", 1, s)
	if len(chunks) < 4 {
		t.Fatalf("the test stream has only %d chunks", len(chunks))
	}
	r := e.wait("src-1", "done", func(r *coordinator.Replication) bool { return r.State.Terminal() })
	if r.State != coordinator.Done || r.Attempt != 1 {
		t.Fatalf("replication %s after attempt %d: %s", r.State, r.Attempt, r.Error)
	}
	if got := r.Targets[target]; got.ChunksApplied != int64(len(chunks)) || got.BytesApplied != int64(len(s.stream)) {
		t.Errorf("applied %d chunks / %d bytes, sent %d / %d", got.ChunksApplied, got.BytesApplied, len(chunks), len(s.stream))
	}
	e.assertCommitted(r, s)
}

// Inventory lists what can serve as an incremental base: read-only
// subvolumes with a received UUID, and nothing else.
func TestInventoryListsOnlyCommittedSnapshots(t *testing.T) {
	e := newEnv(t)
	s1 := e.snapshot("src.1")
	e.plan("src-1", s1)
	e.send("src-1", 1, s1)
	e.wait("src-1", "done", func(r *coordinator.Replication) bool { return r.State == coordinator.Done })

	// What an interrupted plain `btrfs receive` leaves: a writable
	// subvolume at the next snapshot's name, without received UUID.
	s2 := e.snapshot("src.2")
	e.partialReceive(e.target, s2)
	// A read-only snapshot made on the target is not a received copy either.
	if err := btrfs.Snapshot(e.ctx, filepath.Join(e.target, "src.2"), filepath.Join(e.target, "src.3"), true); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(e.target, "src.4"), 0o755); err != nil {
		t.Fatal(err)
	}

	msg, err := e.b.NC.Request(streams.InventorySubject(target), nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var inv streams.Inventory
	if err := json.Unmarshal(msg.Data, &inv); err != nil {
		t.Fatal(err)
	}
	want := streams.Held{Name: "src.1", Path: filepath.Join(e.target, "src.1"), ReceivedUUID: s1.uuid}
	if inv.Target != target || inv.Dir != e.target || len(inv.Snapshots) != 1 || inv.Snapshots[0] != want {
		t.Errorf("inventory %+v, want only %+v", inv, want)
	}
}

// corrupt returns a copy of m whose payload has one byte flipped such that
// it no longer decodes to the sender's bytes. (Some bits of a zstd frame do
// not change its output; flipping those is no corruption.)
func (e *env) corrupt(m *nats.Msg) *nats.Msg {
	e.t.Helper()
	for i := len(m.Data) / 2; i < len(m.Data); i++ {
		c := nats.NewMsg(m.Subject)
		for k, v := range m.Header {
			c.Header[k] = append([]string(nil), v...)
		}
		c.Data = bytes.Clone(m.Data)
		c.Data[i] ^= 0x20
		if _, err := e.codec.Decode(c.Header, c.Data, nil); errors.Is(err, streams.ErrCorrupt) {
			return c
		}
	}
	e.t.Fatal("no byte flip of the chunk changes its content")
	return nil
}

// A chunk altered after the sender checksummed it is never applied: the
// attempt is discarded with a reason naming the chunk, staging is emptied,
// and a clean attempt then commits.
func TestReceiveRefusesCorruptChunk(t *testing.T) {
	tests := []struct {
		name string
		enc  string // payload encoding of the chunk to corrupt
	}{
		{"zstd payload", "zstd"},
		{"raw payload", "none"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			id := "src-" + tc.enc
			s := e.snapshot("src." + tc.enc)
			e.plan(id, s)
			history := e.watch(id)
			chunks := e.chunks(id, 1, s)
			bad := -1
			for k := 2; k < len(chunks); k++ {
				if chunks[k].Header.Get(streams.HdrEncoding) == tc.enc {
					bad = k
					break
				}
			}
			if bad < 0 {
				t.Fatalf("the test stream has no %s chunk past chunk 1", tc.enc)
			}
			e.publish(chunks[:bad]...)
			e.publish(e.corrupt(chunks[bad]))
			e.publish(chunks[bad+1:]...)
			if err := e.markSent(id, 1, s, chunks); err != nil {
				t.Logf("MarkSent refused: %v", err) // the receiver may have ended the attempt first
			}
			e.end(id, 1, s, chunks)

			r := e.wait(id, "the attempt to end", func(r *coordinator.Replication) bool {
				return r.Attempt > 1 || r.State.Terminal()
			})
			chunkName := "chunk " + strconv.Itoa(bad) + ":"
			if r.Attempt != 2 || r.State != coordinator.Planned || !strings.Contains(r.Error, chunkName) || !strings.Contains(r.Error, "corrupt") {
				t.Errorf("after the corrupt chunk: %s attempt %d, error %q; want a new attempt naming %q", r.State, r.Attempt, r.Error, chunkName)
			}
			// The stored history shows the target discarded in attempt 1
			// with exactly the chunks before the corrupt one applied.
			var discarded *coordinator.Target
			for _, v := range history() {
				if tg := v.Targets[target]; v.Attempt == 1 && tg.State == coordinator.TDiscarded {
					discarded = tg
				}
			}
			if discarded == nil {
				t.Errorf("the target was never discarded in attempt 1")
			} else if discarded.ChunksApplied != int64(bad) || !strings.Contains(discarded.Error, chunkName) {
				t.Errorf("discarded after %d chunks with %q; want %d chunks and a reason naming %q",
					discarded.ChunksApplied, discarded.Error, bad, chunkName)
			}
			e.assertNothingApplied(s.name)

			// The next attempt, sent intact, commits.
			if _, err := e.coord.BeginAttempt(e.ctx, id); err != nil {
				t.Fatal(err)
			}
			e.send(id, 2, s)
			r = e.wait(id, "done", func(r *coordinator.Replication) bool { return r.State.Terminal() })
			if r.State != coordinator.Done || r.Attempt != 2 {
				t.Fatalf("replication %s after attempt %d: %s", r.State, r.Attempt, r.Error)
			}
			e.assertCommitted(r, s)
		})
	}
}

// A message in a format this build does not know fails the target for good
// with advice to upgrade; nothing of it is applied.
func TestReceiveRefusesUnknownVersion(t *testing.T) {
	e := newEnv(t)
	s := e.snapshot("src.1")
	e.plan("src-1", s)
	chunks := e.chunks("src-1", 1, s)
	const bad = 3
	chunks[bad].Header.Set(streams.HdrVersion, "99")
	e.publish(chunks...)
	if err := e.markSent("src-1", 1, s, chunks); err != nil {
		t.Logf("MarkSent refused: %v", err) // the target may have failed first
	}
	e.end("src-1", 1, s, chunks)

	r := e.wait("src-1", "the target to fail", func(r *coordinator.Replication) bool {
		return r.State.Terminal() || r.Attempt > 1
	})
	got := r.Targets[target]
	if r.State != coordinator.Failed || r.Attempt != 1 || got.State != coordinator.TFailed {
		t.Fatalf("replication %s attempt %d, target %s; want failed in attempt 1", r.State, r.Attempt, got.State)
	}
	if !strings.Contains(got.Error, "upgrade") || !strings.Contains(got.Error, `"99"`) {
		t.Errorf("target error %q does not name the version and ask to upgrade", got.Error)
	}
	if !strings.Contains(r.Error, "upgrade") {
		t.Errorf("replication error %q does not ask to upgrade", r.Error)
	}
	if got.ChunksApplied != bad {
		t.Errorf("%d chunks applied; want the %d before the unknown one", got.ChunksApplied, bad)
	}
	e.assertNothingApplied(s.name)
}

// The receiver may see the end marker before the sender has recorded it
// with the coordinator: the sender stores the end marker first and calls
// MarkSent after. A complete, intact stream must then still be committed
// once MarkSent arrives, not thrown away for a resend.
func TestReceiveCommitsWhenMarkSentIsLate(t *testing.T) {
	e := newEnv(t)
	s := e.snapshot("src.1")
	e.plan("src-1", s)
	chunks := e.chunks("src-1", 1, s)
	e.publish(chunks...)
	e.end("src-1", 1, s, chunks)
	// The sender is slow between its two steps: MarkSent only once the
	// receiver has applied the whole stream and reported it.
	e.wait("src-1", "the receiver to report the whole stream applied", func(r *coordinator.Replication) bool {
		ts := r.Targets[target]
		return ts != nil && (ts.State == coordinator.TReceived || ts.State == coordinator.TCommitted)
	})
	if err := e.markSent("src-1", 1, s, chunks); err != nil {
		t.Errorf("MarkSent of the intact attempt 1: %v", err)
	}
	r := e.wait("src-1", "the attempt to end", func(r *coordinator.Replication) bool { return r.State.Terminal() || r.Attempt > 1 })
	if r.State != coordinator.Done || r.Attempt != 1 {
		t.Fatalf("replication %s in attempt %d: %q", r.State, r.Attempt, r.Error)
	}
	e.assertCommitted(r, s)
}

// forgeWrite returns a copy of a send stream with one byte of file data
// changed and the command's CRC fixed up, so that btrfs receive applies it
// without complaint: only the end-to-end digest can tell.
func forgeWrite(t *testing.T, stream []byte) []byte {
	t.Helper()
	forged := bytes.Clone(stream)
	var d sendstream.Decoder
	for pos := 0; pos < len(forged); {
		cmd, n, err := d.Decode(forged[pos:])
		if err != nil || n == 0 {
			t.Fatalf("decode send stream at %d: %v", pos, err)
		}
		if cmd != nil && cmd.Type == sendstream.CmdWrite && pos > 4*chunkSize {
			data, err := cmd.Bytes(sendstream.AttrData)
			if err != nil || len(data) < 2 {
				t.Fatalf("write command without data: %v", err)
			}
			// data aliases forged: its capacity tells where it starts.
			forged[cap(forged)-cap(data)+len(data)/2] ^= 0x01
			command := forged[pos : pos+n]
			binary.LittleEndian.PutUint32(command[6:10], 0)
			binary.LittleEndian.PutUint32(command[6:10], sendstream.Checksum(command))
			return forged
		}
		pos += n
	}
	t.Fatal("the send stream has no write command past chunk 4")
	return nil
}

// What reaches the stream besides the sender's clean sequence: the target
// must commit exactly when the complete, intact stream arrived.
func TestReceiveStreamAnomalies(t *testing.T) {
	const k = 5 // the chunk the anomaly is about
	tests := []struct {
		name   string
		build  func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg
		commit bool
		says   string // a refusal's reason names this
		// native names what the native receive says instead, where it
		// words a refusal differently from btrfs-progs.
		native string
		// redelivered is how many chunks a committing target must have
		// received again and skipped.
		redelivered int64
	}{
		{
			name: "forged chunk with a matching checksum",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				off := k * chunkSize
				forged := bytes.Clone(s.stream[off : off+chunkSize])
				for i := range forged {
					forged[i] ^= 0x55
				}
				out := append([]*nats.Msg(nil), chunks[:k]...)
				out = append(out, e.codec.EncodeChunk(id, 1, k, int64(off), forged, xxhash.Sum64(forged), streams.LevelDefault, nil))
				return append(out, chunks[k+1:]...)
			},
			says:   "crc32 mismatch",
			native: "malformed send stream: WRITE: crc",
		},
		{
			name: "forged file data that btrfs receive accepts",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				return e.chunks(id, 1, snapshot{stream: forgeWrite(e.t, s.stream)})
			},
			says: "digest",
		},
		{
			name: "chunk missing",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				return append(append([]*nats.Msg(nil), chunks[:k]...), chunks[k+1:]...)
			},
			says: "chunk 5",
		},
		{
			name: "chunk index far ahead",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				off := k * chunkSize
				ahead := e.codec.EncodeChunk(id, 1, 1<<40, int64(off), s.stream[off:off+chunkSize], xxhash.Sum64(s.stream[off:off+chunkSize]), streams.LevelDefault, nil)
				out := append([]*nats.Msg(nil), chunks[:k]...)
				out = append(out, ahead)
				return append(out, chunks[k+1:]...)
			},
			says: "chunk 5",
		},
		{
			name: "end marker counts more chunks than stored",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				end := streams.EncodeEnd(id, 1, int64(len(chunks)+100), int64(len(s.stream)), digest(s))
				return append(append([]*nats.Msg(nil), chunks...), end)
			},
			says: "chunk 33",
		},
		{
			name: "premature end marker",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				end := streams.EncodeEnd(id, 1, k, k*chunkSize, digestOf(s.stream[:k*chunkSize]))
				return append(append([]*nats.Msg(nil), chunks[:k]...), end)
			},
			says:   "short read",
			native: "stream ends inside a command",
		},
		{
			name: "chunks of another attempt in between are ignored",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				other := e.chunks(id, 7, s)
				out := append([]*nats.Msg(nil), chunks[:k]...)
				out = append(out, other[k], other[k+1])
				return append(out, chunks[k:]...)
			},
			commit: true,
		},
		{
			name: "a chunk stored twice is applied once",
			build: func(e *env, id string, s snapshot, chunks []*nats.Msg) []*nats.Msg {
				again := e.chunks(id, 1, s)[k-1]
				again.Header.Set(nats.MsgIdHdr, "republished-after-the-dedup-window")
				out := append([]*nats.Msg(nil), chunks[:k]...)
				out = append(out, again)
				return append(out, chunks[k:]...)
			},
			commit:      true,
			redelivered: 1,
		},
	}
	for _, tc := range tests {
		for _, applier := range []string{receiver.Native, receiver.BtrfsProgs} {
			t.Run(applier+"/"+tc.name, func(t *testing.T) {
				e := newEnvWith(t, applier, nil)
				s := e.snapshot("src.1")
				e.plan("src-1", s)
				chunks := e.chunks("src-1", 1, s)
				msgs := tc.build(e, "src-1", s, chunks)
				e.publish(msgs...)
				if err := e.markSent("src-1", 1, s, chunks); err != nil {
					t.Logf("MarkSent refused: %v", err)
				}
				if msgs[len(msgs)-1].Header.Get(streams.HdrKind) != string(streams.KindEnd) {
					e.end("src-1", 1, s, chunks)
				}
				r := e.wait("src-1", "the attempt to end", func(r *coordinator.Replication) bool {
					return r.State.Terminal() || r.Attempt > 1
				})
				if tc.commit {
					if r.State != coordinator.Done || r.Attempt != 1 {
						t.Fatalf("replication %s in attempt %d: %q", r.State, r.Attempt, r.Error)
					}
					e.assertCommitted(r, s)
					if got := r.Targets[target]; got.ChunksApplied != int64(len(chunks)) || got.RedeliveredChunks != tc.redelivered {
						t.Errorf("target applied %d chunks and skipped %d as seen before; want %d applied, %d skipped",
							got.ChunksApplied, got.RedeliveredChunks, len(chunks), tc.redelivered)
					}
					return
				}
				if r.State == coordinator.Done {
					t.Fatalf("committed a stream that was not the sender's")
				}
				says := tc.says
				if applier == receiver.Native && tc.native != "" {
					says = tc.native
				}
				if !strings.Contains(r.Error, says) {
					t.Errorf("refused with %q, want a reason naming %q", r.Error, says)
				}
				e.assertNothingApplied(s.name)
			})
		}
	}
}

// partialReceive leaves what an interrupted plain `btrfs receive` leaves in
// dir: a writable subvolume named like the snapshot, without received UUID.
func (e *env) partialReceive(dir string, s snapshot) {
	e.t.Helper()
	in, proc, err := btrfs.StartReceive(e.ctx, dir)
	if err != nil {
		e.t.Fatal(err)
	}
	_, _ = in.Write(s.stream[:len(s.stream)/2])
	in.Close()
	if err := proc.Wait(); err == nil {
		e.t.Fatal("btrfs receive of half a stream succeeded")
	}
	left, err := btrfs.Inspect(filepath.Join(dir, s.name))
	if err != nil || left.ReadOnly || !left.ReceivedUUID.IsZero() {
		e.t.Fatalf("the interrupted receive left %+v, %v; want a writable subvolume", left, err)
	}
}

// What sits at the snapshot's final name decides the commit: this
// snapshot's own copy, left writable by a commit interrupted between the
// rename and the read-only flag, is made read-only; anything else may be
// the user's (even a writable subvolume without received UUID, which is
// also what an interrupted plain receive leaves) and stays untouched while
// the target fails with a reason that names the fix.
func TestCommitOverWhatIsAtTheFinalName(t *testing.T) {
	tests := []struct {
		name   string
		put    func(e *env, final string, s snapshot)
		commit bool
		want   string // in the target's error when it does not commit
	}{
		{
			name: "this snapshot's copy left writable by an interrupted commit",
			put: func(e *env, final string, s snapshot) {
				elsewhere := filepath.Join(e.target, "elsewhere")
				if err := os.Mkdir(elsewhere, 0o755); err != nil {
					e.t.Fatal(err)
				}
				in, proc, err := btrfs.StartReceive(e.ctx, elsewhere)
				if err != nil {
					e.t.Fatal(err)
				}
				_, werr := in.Write(s.stream)
				in.Close()
				if err := proc.Wait(); err != nil || werr != nil {
					e.t.Fatalf("btrfs receive: %v %v", err, werr)
				}
				got := filepath.Join(elsewhere, s.name)
				if err := btrfs.SetReadOnlyFlag(got, false); err != nil {
					e.t.Fatal(err)
				}
				if err := os.Rename(got, final); err != nil {
					e.t.Fatal(err)
				}
			},
			commit: true,
		},
		{
			name: "partial of an interrupted receive",
			put:  func(e *env, final string, s snapshot) { e.partialReceive(e.target, s) },
			want: "move or rename it",
		},
		{
			name: "a writable subvolume with the user's files",
			put: func(e *env, final string, s snapshot) {
				if err := btrfs.CreateSubvolume(e.ctx, final); err != nil {
					e.t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(final, "mine.txt"), []byte("keep me"), 0o644); err != nil {
					e.t.Fatal(err)
				}
			},
			want: "move or rename it",
		},
		{
			name: "a directory with the user's files",
			put: func(e *env, final string, s snapshot) {
				if err := os.Mkdir(final, 0o755); err != nil {
					e.t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(final, "mine.txt"), []byte("keep me"), 0o644); err != nil {
					e.t.Fatal(err)
				}
			},
		},
		{
			name: "a read-only snapshot that was not received",
			put: func(e *env, final string, s snapshot) {
				sub := filepath.Join(e.target, "work")
				if err := btrfs.CreateSubvolume(e.ctx, sub); err != nil {
					e.t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(sub, "mine.txt"), []byte("keep me"), 0o644); err != nil {
					e.t.Fatal(err)
				}
				if err := btrfs.Snapshot(e.ctx, sub, final, true); err != nil {
					e.t.Fatal(err)
				}
			},
		},
		{
			name: "a file",
			put: func(e *env, final string, s snapshot) {
				if err := os.WriteFile(final, []byte("keep me"), 0o644); err != nil {
					e.t.Fatal(err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s snapshot
			var final string
			e := newEnvBefore(t, func(e *env) {
				s = e.snapshot("src.1")
				final = filepath.Join(e.target, s.name)
				tc.put(e, final, s)
			})
			before, _ := os.ReadFile(filepath.Join(final, "mine.txt"))
			beforeFile, _ := os.ReadFile(final)
			beforeSub, beforeErr := btrfs.Inspect(final)
			e.plan("src-1", s)
			e.send("src-1", 1, s)
			r := e.wait("src-1", "the attempt to end", func(r *coordinator.Replication) bool {
				return r.State.Terminal() || r.Attempt > 1
			})
			if tc.commit {
				if r.State != coordinator.Done {
					t.Fatalf("replication %s in attempt %d: %q", r.State, r.Attempt, r.Error)
				}
				e.assertCommitted(r, s)
				return
			}
			got := r.Targets[target]
			want := tc.want
			if want == "" {
				want = "already exists"
			}
			if r.State != coordinator.Failed || got.State != coordinator.TFailed || !strings.Contains(got.Error, final) || !strings.Contains(got.Error, want) {
				t.Errorf("replication %s, target %s %q; want the target failed naming %s and saying %q", r.State, got.State, got.Error, final, want)
			}
			if sub, err := btrfs.Inspect(final); beforeSub.UUID != sub.UUID || (err == nil) != (beforeErr == nil) {
				t.Errorf("the subvolume at %s was replaced: UUID %s (%v), was %s (%v)", final, sub.UUID, err, beforeSub.UUID, beforeErr)
			}
			after, _ := os.ReadFile(filepath.Join(final, "mine.txt"))
			afterFile, _ := os.ReadFile(final)
			if !bytes.Equal(before, after) || !bytes.Equal(beforeFile, afterFile) {
				t.Errorf("what was at %s changed: %q%q, now %q%q", final, before, beforeFile, after, afterFile)
			}
			e.assertStagingEmpty()
		})
	}
}

// Staging that a crashed receiver left for a replication it no longer
// serves is deleted when the receiver starts.
func TestStartupDiscardsStaleStaging(t *testing.T) {
	var stale string
	e := newEnvBefore(t, func(e *env) {
		s := e.snapshot("src.old")
		stale = filepath.Join(e.target, ".snapjet", "incoming", "src-old")
		if err := os.MkdirAll(stale, 0o700); err != nil {
			e.t.Fatal(err)
		}
		e.partialReceive(stale, s)
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(stale); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale staging %s is still there", stale)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.assertStagingEmpty()
}
