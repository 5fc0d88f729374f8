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
	redoBound int64 // sum over kills of (kill offset - checkpoint offset)
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
	r, err := New(ctx, dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { crash(r) }() // releases the mount when the test fails
	var cp Checkpoint           // the zero checkpoint restarts from the beginning
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
			redo := pos - cp.Offset
			st.redoBound += redo
			st.maxRedo = max(st.maxRedo, redo)
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
			if cp, err = r.Checkpoint(); err != nil {
				t.Fatal(err)
			}
			if cp.Fed() != pos {
				t.Fatalf("checkpoint says fed %d, fed %d", cp.Fed(), pos)
			}
		}
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

// commandOffsets lists the stream offset and type of every command.
func commandOffsets(t testing.TB, stream []byte) (offs []int64, types []sendstream.Cmd, data int64) {
	t.Helper()
	r := sendstream.NewReader(bytes.NewReader(stream), 0)
	for {
		c, err := r.Next()
		if err != nil {
			break
		}
		if c.Type == sendstream.CmdWrite {
			d, _ := c.Bytes(sendstream.AttrData)
			data += int64(len(d))
		}
		if c.Type == sendstream.CmdEncodedWrite {
			n, _ := c.U64(sendstream.AttrUnencodedFileLen)
			data += int64(n)
		}
		offs = append(offs, r.Offset()-int64(c.Len))
		types = append(types, c.Type)
	}
	return offs, types, data
}

// killsAt picks kill offsets at n commands of the given type spread over
// the stream: at the start of each and in its middle.
func killsAt(offs []int64, types []sendstream.Cmd, want sendstream.Cmd, n int) []int64 {
	var idx []int
	for i := 0; i+1 < len(types); i++ {
		if types[i] == want {
			idx = append(idx, i)
		}
	}
	var out []int64
	for k := 0; k < n && len(idx) > 0; k++ {
		i := idx[k*len(idx)/n]
		out = append(out, offs[i], (offs[i]+offs[i+1])/2)
	}
	return out
}

func checkResumeStats(t *testing.T, st resumeStats, baseline int64, wantKills int) {
	t.Helper()
	if st.kills < wantKills {
		t.Fatalf("only %d kills happened, want %d", st.kills, wantKills)
	}
	redundant := st.dataBytes - baseline
	t.Logf("%d kills; data written %d bytes for %d in the stream: %d written twice (bound %d, largest single redo %d); %d commands skipped by the journal",
		st.kills, st.dataBytes, baseline, redundant, st.redoBound, st.maxRedo, st.skipped)
	if redundant < 0 || redundant > st.redoBound {
		t.Errorf("data written twice: %d bytes, more than the %d bytes between checkpoints and kills", redundant, st.redoBound)
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
	offs, types, data := commandOffsets(t, stream)
	rng := rand.New(rand.NewSource(42))
	var kills []int64
	for i := 0; i < 16; i++ {
		kills = append(kills, 1+rng.Int63n(int64(len(stream))-1))
	}
	kills = append(kills, killsAt(offs, types, sendstream.CmdRename, 3)...)
	kills = append(kills, killsAt(offs, types, sendstream.CmdClone, 3)...)
	sort.Slice(kills, func(i, j int) bool { return kills[i] < kills[j] })

	nat, progs := join(fs.Dir, "nat"), join(fs.Dir, "progs")
	mkdirs(t, nat, progs)
	const chunk, every = 1 << 20, 4
	res, st := resumeRun(t, nat, stream, kills, chunk, every, Options{})
	checkResumeStats(t, st, data, 28)
	if st.maxRedo > 2*every*chunk {
		t.Errorf("a resume redid %d bytes of stream, more than a checkpoint interval", st.maxRedo)
	}
	receiveProgs(t, progs, stream)
	sameTree(t, snap1, res.Path)
	sameTree(t, join(progs, "snap1"), res.Path)
	sameSubvolume(t, res.Path, join(progs, "snap1"))
}

// TestResumeEveryCommand resumes an incremental stream full of renames,
// swaps, links, unlinks and clones after a kill at every command boundary
// and in the middle of every command, checkpointing after every chunk of
// 3 commands' worth of bytes.
func TestResumeEveryCommand(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	for _, sc := range scenarios {
		if sc.name == "renames" || sc.name == "hardlinks" || sc.name == "clones" || sc.name == "special" {
			mkdirs(t, join(src, sc.name))
			sc.setup(t, join(src, sc.name))
		}
	}
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	for _, sc := range scenarios {
		if sc.name == "renames" || sc.name == "hardlinks" || sc.name == "clones" || sc.name == "special" {
			sc.change(t, join(src, sc.name))
		}
	}
	snap2 := snapshot(t, src, join(fs.Dir, "snap2"))
	nat := join(fs.Dir, "nat")
	mkdirs(t, nat)
	for _, step := range []struct{ snap, parent string }{{snap1, ""}, {snap2, snap1}} {
		stream := sendStream(t, step.snap, btrfs.SendOptions{Proto: 2, Parent: step.parent})
		offs, _, data := commandOffsets(t, stream)
		var kills []int64
		for i, o := range offs {
			kills = append(kills, o)
			if i+1 < len(offs) {
				kills = append(kills, (o+offs[i+1])/2)
			}
		}
		res, st := resumeRun(t, nat, stream, kills[1:], 700, 1, Options{})
		checkResumeStats(t, st, data, len(kills)-1)
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
}
