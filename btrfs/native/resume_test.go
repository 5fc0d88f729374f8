package native

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// writeRandom writes size bytes of seeded pseudo-random data to path.
func writeRandom(t testing.TB, path string, size int, seed int64) {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	buf := make([]byte, size)
	rng.Read(buf)
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// crash simulates kill -9 of the receiving process: the kernel closes its
// file descriptors and nothing else happens (no Abort, no Finish).
func crash(r *Receiver) { r.closeAll() }

type resumeStats struct {
	kills     int
	dataBytes int64 // data written by all receivers together
	redoBound int64 // sum over kills of the data between checkpoint and kill
	maxRedo   int64
	skipped   int64
}

// resumeRun feeds stream into dir in chunks, checkpointing every `every`
// chunks. At each offset in kills it crashes the receiver, resumes from
// the last checkpoint (after a JSON round trip) and feeds on from there.
func resumeRun(t *testing.T, dir string, stream []byte, kills []int64, chunk, every int, opt Options) (Result, resumeStats) {
	t.Helper()
	ctx := context.Background()
	var st resumeStats
	ix := indexStream(t, stream)
	r, err := New(ctx, dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { crash(r) }() // releases the mount when the test fails
	var cp Checkpoint           // the zero checkpoint restarts from the beginning
	// As the receiver does, a checkpoint is marked and synced in the
	// background while feeding goes on; it is the one to resume from only
	// once its sync returned, which is seen at the next mark.
	var marked Checkpoint
	var syncing chan error
	synced := func() error {
		if syncing == nil {
			return nil
		}
		err := <-syncing
		syncing = nil
		return err
	}
	pos, chunks := int64(0), 0
	for pos < int64(len(stream)) {
		end := min(pos+int64(chunk), int64(len(stream)))
		killing := len(kills) > 0 && kills[0] > pos && kills[0] <= end
		if killing {
			end = kills[0]
		}
		if _, err := r.Write(stream[pos:end]); err != nil {
			t.Fatalf("write at %d: %v", pos, err)
		}
		pos = end
		if killing {
			kills = kills[1:]
			st.kills++
			s := r.Stats()
			st.dataBytes += s.DataBytes
			st.skipped += s.Skipped
			st.redoBound += ix.dataBetween(cp.Offset, pos)
			st.maxRedo = max(st.maxRedo, pos-cp.Offset)
			// Killed before the sync in flight was seen to end: its mark
			// was never saved.
			if err := synced(); err != nil {
				t.Fatal(err)
			}
			crash(r)
			b, err := cp.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			saved, err := UnmarshalCheckpoint(b)
			if err != nil {
				t.Fatal(err)
			}
			if r, err = Resume(ctx, dir, saved, opt); err != nil {
				t.Fatalf("resume at %d after kill at %d: %v", saved.Offset, pos, err)
			}
			pos = saved.Fed()
			continue
		}
		if chunks++; chunks%every == 0 {
			if syncing != nil {
				if err := synced(); err != nil {
					t.Fatal(err)
				}
				cp = marked
			}
			if marked, err = r.Mark(); err != nil {
				t.Fatal(err)
			}
			if marked.Fed() != pos {
				t.Fatalf("checkpoint says fed %d, fed %d", marked.Fed(), pos)
			}
			syncing = make(chan error, 1)
			go func(done chan<- error) { done <- r.Sync() }(syncing)
		}
	}
	if err := synced(); err != nil {
		t.Fatal(err)
	}
	res, err := r.Finish()
	if err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	st.dataBytes += s.DataBytes
	st.skipped += s.Skipped
	return res, st
}

// streamIndex locates every command of a stream and the file data it
// carries (WRITE bytes, ENCODED_WRITE decoded length).
type streamIndex struct {
	offs  []int64 // command start offsets
	ends  []int64
	types []sendstream.Cmd
	cum   []int64 // cum[i]: data of commands before i
	data  int64   // data of the whole stream
}

func indexStream(t testing.TB, stream []byte) *streamIndex {
	t.Helper()
	ix := &streamIndex{}
	r := sendstream.NewReader(bytes.NewReader(stream), 0)
	for {
		c, err := r.Next()
		if err != nil {
			break
		}
		ix.offs = append(ix.offs, r.Offset()-int64(c.Len))
		ix.ends = append(ix.ends, r.Offset())
		ix.types = append(ix.types, c.Type)
		ix.cum = append(ix.cum, ix.data)
		switch c.Type {
		case sendstream.CmdWrite:
			d, _ := c.Bytes(sendstream.AttrData)
			ix.data += int64(len(d))
		case sendstream.CmdEncodedWrite:
			n, _ := c.U64(sendstream.AttrUnencodedFileLen)
			ix.data += int64(n)
		}
	}
	return ix
}

// dataBetween is the data of the commands lying wholly in [from, to): what
// a receiver fed up to to may have applied again after resuming at from.
func (ix *streamIndex) dataBetween(from, to int64) int64 {
	first := sort.Search(len(ix.offs), func(i int) bool { return ix.offs[i] >= from })
	last := sort.Search(len(ix.ends), func(i int) bool { return ix.ends[i] > to }) // first not wholly before to
	if last <= first {
		return 0
	}
	end := ix.data
	if last < len(ix.cum) {
		end = ix.cum[last]
	}
	return end - ix.cum[first]
}

// killsAt picks kill offsets at n commands of the given type spread over
// the stream: at the start of each and in its middle.
func killsAt(ix *streamIndex, want sendstream.Cmd, n int) []int64 {
	var idx []int
	for i, c := range ix.types {
		if c == want {
			idx = append(idx, i)
		}
	}
	var out []int64
	for k := 0; k < n && len(idx) > 0; k++ {
		i := idx[k*len(idx)/n]
		out = append(out, ix.offs[i], (ix.offs[i]+ix.ends[i])/2)
	}
	return out
}

func checkResumeStats(t *testing.T, st resumeStats, baseline int64, wantKills int) {
	t.Helper()
	if st.kills < wantKills {
		t.Fatalf("only %d kills happened, want %d", st.kills, wantKills)
	}
	redundant := st.dataBytes - baseline
	t.Logf("%d kills; data written %d bytes for %d in the stream: %d written twice (bound %d, largest stream redo %d bytes); %d commands skipped by the journal",
		st.kills, st.dataBytes, baseline, redundant, st.redoBound, st.maxRedo, st.skipped)
	if redundant < 0 || redundant > st.redoBound {
		t.Errorf("data written twice: %d bytes, more than the %d data bytes between checkpoints and kills", redundant, st.redoBound)
	}
}

// TestResumeLargeStream kills the receiver at 28 points of a >512 MiB
// stream (random ones plus points at and inside renames and clones),
// resumes each time from the last checkpoint, and checks that the result
// equals the source and btrfs receive's, with no more than one checkpoint
// interval of data written twice per kill.
func TestResumeLargeStream(t *testing.T) {
	fs := loopfs.New(t, 4<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	mkdirs(t, join(src, "big"), join(src, "small"))
	for i := 0; i < 66; i++ {
		writeRandom(t, join(src, "big", "f"+strconv.Itoa(i)), 8<<20, int64(i))
	}
	for i := 0; i < 3000; i++ {
		writeRandom(t, join(src, "small", "s"+strconv.Itoa(i)), 100+i%4000, int64(1000+i))
	}
	for i := 0; i < 8; i++ {
		sh(t, "cp --reflink=always "+join(src, "big", "f"+strconv.Itoa(i))+" "+join(src, "small", "clone"+strconv.Itoa(i)))
		cloneRange(t, join(src, "big", "f"+strconv.Itoa(i+8)), 1<<20, 2<<20, join(src, "big", "f"+strconv.Itoa(i+16)), 4<<20)
	}
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	stream := sendStream(t, snap1, btrfs.SendOptions{Proto: 2})
	if len(stream) < 512<<20 {
		t.Fatalf("stream is %d bytes, want at least 512 MiB", len(stream))
	}
	ix := indexStream(t, stream)
	rng := rand.New(rand.NewSource(42))
	var kills []int64
	for i := 0; i < 16; i++ {
		kills = append(kills, 1+rng.Int63n(int64(len(stream))-1))
	}
	kills = append(kills, killsAt(ix, sendstream.CmdRename, 3)...)
	kills = append(kills, killsAt(ix, sendstream.CmdClone, 3)...)
	sort.Slice(kills, func(i, j int) bool { return kills[i] < kills[j] })

	nat, progs := join(fs.Dir, "nat"), join(fs.Dir, "progs")
	mkdirs(t, nat, progs)
	const chunk, every = 1 << 20, 4
	res, st := resumeRun(t, nat, stream, kills, chunk, every, Options{})
	checkResumeStats(t, st, ix.data, 28)
	// The checkpoint to resume from is the last one whose sync ended: up
	// to two intervals back, plus the command the kill cut.
	if st.maxRedo > 3*every*chunk {
		t.Errorf("a resume redid %d bytes of stream, more than two checkpoint intervals", st.maxRedo)
	}
	receiveProgs(t, progs, stream)
	sameTree(t, snap1, res.Path)
	sameTree(t, join(progs, "snap1"), res.Path)
	sameSubvolume(t, res.Path, join(progs, "snap1"))
}

// TestResumeEveryCommand resumes a full and an incremental stream full of
// renames, swaps, links, unlinks, clones and compressed extents after a
// kill at every command boundary and in the middle of every command,
// checkpointing after every 700 bytes: plain, with encoded writes handed
// to the kernel, and with encoded writes decompressed.
func TestResumeEveryCommand(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	sh(t, "mount -o remount,compress=zstd "+fs.Dir)
	src := subvolume(t, join(fs.Dir, "src"))
	use := map[string]bool{"renames": true, "hardlinks": true, "clones": true, "special": true, "compression": true}
	for _, sc := range scenarios {
		if use[sc.name] {
			mkdirs(t, join(src, sc.name))
			sc.setup(t, join(src, sc.name))
		}
	}
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	for _, sc := range scenarios {
		if use[sc.name] {
			sc.change(t, join(src, sc.name))
		}
	}
	snap2 := snapshot(t, src, join(fs.Dir, "snap2"))
	for _, v := range []struct {
		name string
		send btrfs.SendOptions
		opt  Options
	}{
		{"proto2", btrfs.SendOptions{Proto: 2}, Options{}},
		{"compressed", btrfs.SendOptions{CompressedData: true}, Options{}},
		{"decompressed", btrfs.SendOptions{CompressedData: true}, Options{ForceDecompress: true}},
	} {
		t.Run(v.name, func(t *testing.T) {
			nat := join(fs.Dir, v.name)
			mkdirs(t, nat)
			for _, step := range []struct{ snap, parent string }{{snap1, ""}, {snap2, snap1}} {
				so := v.send
				so.Parent = step.parent
				stream := sendStream(t, step.snap, so)
				ix := indexStream(t, stream)
				var kills []int64
				for i, o := range ix.offs[1:] {
					kills = append(kills, o, (o+ix.ends[i+1])/2)
				}
				res, st := resumeRun(t, nat, stream, kills, 700, 1, v.opt)
				checkResumeStats(t, st, ix.data, len(kills))
				sameTree(t, step.snap, res.Path)
				info, err := btrfs.Inspect(res.Path)
				if err != nil {
					t.Fatal(err)
				}
				if !info.ReadOnly || info.ReceivedUUID.IsZero() {
					t.Errorf("%s: read-only %v, received UUID %s", res.Path, info.ReadOnly, info.ReceivedUUID)
				}
				if _, err := unix.Lgetxattr(res.Path, journalXattr, nil); !errors.Is(err, unix.ENODATA) {
					t.Errorf("journal xattr left on %s: %v", res.Path, err)
				}
			}
		})
	}
}
