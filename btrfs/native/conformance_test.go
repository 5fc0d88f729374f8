package native

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
	"unsafe"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// scenario builds a source tree (setup), then changes it (change) for the
// incremental send. Both run inside the source subvolume.
type scenario struct {
	name   string
	setup  func(t *testing.T, dir string)
	change func(t *testing.T, dir string)
	// variants limits the send variants (nil: all); the 4 GiB file is
	// too slow to compare in every one.
	variants []string
	// huge marks trees too big to hash often: only the incremental
	// result (a snapshot of the full one plus the changes) is compared
	// with treecmp against the source, and against btrfs receive's with
	// a comparison that reads only the data extents.
	huge bool
	// check runs extra assertions on a native result against its source.
	check func(t *testing.T, native, src string)
	// wantCmds lists, by "snap/variant", commands the stream must carry
	// for the scenario to test what it is about.
	wantCmds map[string][]string
}

type variant struct {
	name       string
	opt        btrfs.SendOptions
	decompress bool
	// wantCmds must each appear in at least one of the variant's streams
	// over all scenarios, proving the variant exercises what it claims
	// to (a single scenario may not need them: small files have no
	// compressed extents, most trees no holes).
	wantCmds []sendstream.Cmd
}

var variants = []variant{
	{name: "proto1", opt: btrfs.SendOptions{Proto: 1}, wantCmds: []sendstream.Cmd{sendstream.CmdWrite}},
	// Commands only protocol 2 has that need no --compressed-data.
	{name: "proto2", opt: btrfs.SendOptions{Proto: 2}, wantCmds: []sendstream.Cmd{sendstream.CmdFallocate, sendstream.CmdFileattr}},
	{name: "compressed", opt: btrfs.SendOptions{CompressedData: true}, wantCmds: []sendstream.Cmd{sendstream.CmdEncodedWrite}},
	{name: "decompressed", opt: btrfs.SendOptions{CompressedData: true}, decompress: true, wantCmds: []sendstream.Cmd{sendstream.CmdEncodedWrite}},
}

func cloneRange(t *testing.T, src string, srcOff, n uint64, dst string, dstOff uint64) {
	t.Helper()
	s, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := unix.IoctlFileCloneRange(int(d.Fd()), &unix.FileCloneRange{
		Src_fd: int64(s.Fd()), Src_offset: srcOff, Src_length: n, Dest_offset: dstOff,
	}); err != nil {
		t.Fatalf("clone %s -> %s: %v", src, dst, err)
	}
}

func setxattr(t *testing.T, path, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(path, name, []byte(value), 0); err != nil {
		t.Fatalf("setxattr %s %s: %v", path, name, err)
	}
}

var scenarios = []scenario{
	{
		name:     "renames",
		wantCmds: map[string][]string{"snap2/proto1": {"RENAME"}},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && mkdir -p a/b/c x y/z && echo one > x/f1 && echo two > y/f2 && echo A > a/b/c/deep &&
				echo s1 > swap1 && echo s2 > swap2 && mkdir dswap1 dswap2 && echo in1 > dswap1/i && echo in2 > dswap2/i &&
				for i in $(seq 1 30); do echo $i > y/z/n$i; done`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` &&
				mv swap1 tmp && mv swap2 swap1 && mv tmp swap2 &&
				mv dswap1 dtmp && mv dswap2 dswap1 && mv dtmp dswap2 &&
				mv a/b top && mv a top/c/a_under_former_child &&
				mv x y/z/x_moved && mv y/f2 f2 && rm y/z/n1 && mv y/z/n2 y/z/n1 &&
				mkdir newdir && mv y/z newdir/z && echo new > newdir/z/newfile`)
		},
	},
	{
		name:     "hardlinks",
		wantCmds: map[string][]string{"snap1/proto1": {"LINK"}, "snap2/proto2": {"LINK", "UNLINK", "RMDIR"}},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && mkdir -p p/q r tree/s/t && echo data > p/q/f && ln p/q/f r/f_link && ln p/q/f tree/s/t/f3 &&
				echo other > tree/s/g && ln tree/s/g r/g_link && for i in $(seq 1 20); do echo $i > tree/s/t/k$i; done`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && rm -rf tree && ln r/f_link r/f_link2 && rm p/q/f && mkdir p/n && ln r/g_link p/n/g_again && mv r/f_link p/f_moved`)
		},
	},
	{
		name: "sparse",
		// This kernel sends the punched hole as FALLOCATE in proto 2.
		wantCmds: map[string][]string{"snap2/proto2": {"FALLOCATE"}},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && truncate -s 10M empty_sparse && head -c 70000 /dev/urandom > holes &&
				dd if=/dev/urandom of=holes bs=4096 seek=300 count=3 conv=notrunc 2>/dev/null && truncate -s 8M holes &&
				dd if=/dev/urandom of=tailhole bs=4096 count=2 2>/dev/null && truncate -s 1M tailhole`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && fallocate -p -o 8192 -l 16384 holes && truncate -s 20000 tailhole &&
				dd if=/dev/urandom of=empty_sparse bs=4096 seek=1000 count=1 conv=notrunc 2>/dev/null`)
		},
	},
	{
		name:     "big_sparse",
		variants: []string{"proto2"},
		huge:     true,
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && head -c 5000 /dev/urandom > big && dd if=/dev/urandom of=big bs=4096 seek=1048580 count=2 conv=notrunc 2>/dev/null`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && dd if=/dev/urandom of=big bs=4096 seek=1048581 count=1 conv=notrunc 2>/dev/null && truncate -s 4295100000 big && dd if=/dev/urandom of=big bs=4096 seek=1048590 count=3 conv=notrunc 2>/dev/null`)
		},
	},
	{
		name: "clones",
		wantCmds: map[string][]string{
			"snap1/proto1": {"CLONE"}, "snap2/proto1": {"CLONE_EXTERNAL"},
			"snap2/proto2": {"CLONE_EXTERNAL"}, "snap1/decompressed": {"ENCODED_WRITE"},
		},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && head -c 1048576 /dev/urandom > base && yes compressible | head -c 600000 > text`)
			cloneRange(t, join(d, "base"), 0, 256<<10, join(d, "base"), 512<<10) // within one file
			cloneRange(t, join(d, "base"), 128<<10, 128<<10, join(d, "other"), 64<<10)
			cloneRange(t, join(d, "text"), 0, 0, join(d, "textcopy"), 0)
			sh(t, `cd `+d+` && cp --reflink=always base whole_copy`)
		},
		change: func(t *testing.T, d string) {
			cloneRange(t, join(d, "other"), 64<<10, 64<<10, join(d, "base"), 0)
			cloneRange(t, join(d, "base"), 0, 128<<10, join(d, "newclone"), 4096)
			sh(t, `cd `+d+` && dd if=/dev/urandom of=whole_copy bs=4096 seek=10 count=2 conv=notrunc 2>/dev/null && cp --reflink=always text text2`)
		},
	},
	{
		name: "special",
		wantCmds: map[string][]string{
			"snap1/proto1": {"MKNOD", "MKFIFO", "MKSOCK", "SYMLINK", "SET_XATTR"},
			"snap2/proto2": {"REMOVE_XATTR"},
		},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && echo x > f && ln -s f link && ln -s /etc/passwd abs_link && ln -s ../../outside up_link &&
				mkfifo fifo && mknod chr c 1 3 && mknod blk b 7 200 && mkdir dir`)
			if err := unix.Mknod(join(d, "sock"), unix.S_IFSOCK|0o644, 0); err != nil {
				t.Fatal(err)
			}
			setxattr(t, join(d, "f"), "user.a", "1")
			setxattr(t, join(d, "f"), "user.b", string(make([]byte, 3000)))
			setxattr(t, join(d, "dir"), "user.dir", "d")
			setxattr(t, join(d, "link"), "trusted.onlink", "l")
			setxattr(t, d, "user.root", "r")
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && rm link && ln -s dir link && rm chr && mknod chr c 1 5 && rm fifo && mkdir fifo`)
			if err := unix.Removexattr(join(d, "f"), "user.a"); err != nil {
				t.Fatal(err)
			}
			setxattr(t, join(d, "f"), "user.b", "changed")
			setxattr(t, d, "user.root", "r2")
		},
	},
	{
		name: "many_files",
		// Small files hold no compressed extents worth decompressing.
		variants: []string{"proto1", "proto2", "compressed"},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && for i in $(seq 0 99); do mkdir d$i; done && seq 0 9999 | sed 's|\(.*\)|d\1|' >/dev/null &&
				i=0; while [ $i -lt 10000 ]; do echo "file $i" > d$((i % 100))/f$i; i=$((i+1)); done`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && i=0; while [ $i -lt 500 ]; do rm d$((i % 100))/f$i; echo changed >> d$(((i+1) % 100))/f$((i+1)); echo n > d$((i % 100))/new$i; i=$((i+3)); done`)
		},
	},
	{
		name:     "attributes",
		wantCmds: map[string][]string{"snap2/proto2": {"FILEATTR", "CHMOD", "CHOWN", "UTIMES"}},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && mkdir sub && echo a > a && echo b > sub/b && ln -s a la && touch -d '2001-02-03 04:05:06.123456789' a sub/b`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && chmod 4755 a && chown 1000:2000 sub/b && chown -h 7:8 la && chmod 0700 sub &&
				touch -d '1999-12-31 23:59:59.5' sub/b && touch -m -d '2030-01-01 00:00:00' a && chattr +A a && chattr +d sub`)
		},
		// FILEATTR (proto 2 only) is applied, which btrfs receive does not.
		check: func(t *testing.T, native, src string) {
			for _, p := range []string{"a", "sub"} {
				if got, want := inodeFlags(t, join(native, p)), inodeFlags(t, join(src, p)); got != want {
					t.Errorf("%s: inode flags %#x, source %#x", p, got, want)
				}
			}
		},
	},
	{
		name: "compression",
		wantCmds: map[string][]string{
			"snap1/compressed": {"ENCODED_WRITE"}, "snap2/decompressed": {"ENCODED_WRITE"},
		},
		setup: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && mkdir zlib lzo zstd && btrfs property set zlib compression zlib && btrfs property set lzo compression lzo &&
				btrfs property set zstd compression zstd &&
				for a in zlib lzo zstd; do yes "$a compresses well $a" | head -c 300000 > $a/f; seq 1 50000 > $a/g; done`)
		},
		change: func(t *testing.T, d string) {
			sh(t, `cd `+d+` && for a in zlib lzo zstd; do seq 1 20000 >> $a/f; dd if=$a/g of=$a/f bs=4096 seek=3 count=5 conv=notrunc 2>/dev/null; done`)
		},
	},
}

// TestConformance sends every scenario full and incremental in every
// variant and receives it both natively and with btrfs receive: the
// native tree must equal the source and btrfs receive's, with the same
// read-only flag and received UUID.
func TestConformance(t *testing.T) {
	fs := loopfs.New(t, 12<<30)
	// Compressed extents make --compressed-data send ENCODED_WRITE.
	sh(t, "mount -o remount,compress=zstd "+fs.Dir)
	// Per variant: the commands seen in all its streams, and in how many
	// scenarios it ran to the end (a -run filter or a failure skips some).
	seen := map[string]map[string]int{}
	ran := map[string]int{}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			base := join(fs.Dir, sc.name)
			mkdirs(t, base)
			src := subvolume(t, join(base, "src"))
			sc.setup(t, src)
			snap1 := snapshot(t, src, join(base, "snap1"))
			sc.change(t, src)
			snap2 := snapshot(t, src, join(base, "snap2"))
			for _, v := range variants {
				if sc.variants != nil && !contains(sc.variants, v.name) {
					continue
				}
				t.Run(v.name, func(t *testing.T) {
					start := time.Now()
					nat, progs := join(base, v.name, "nat"), join(base, v.name, "progs")
					mkdirs(t, nat, progs)
					opt := Options{ForceDecompress: v.decompress}
					for _, step := range []struct{ snap, parent string }{{snap1, ""}, {snap2, snap1}} {
						so := v.opt
						so.Parent = step.parent
						stream := sendStream(t, step.snap, so)
						res := receiveNative(t, nat, stream, opt)
						receiveProgs(t, progs, stream)
						name := filepath.Base(step.snap)
						switch {
						case !sc.huge:
							sameTree(t, step.snap, res.Path)
							sameTree(t, join(progs, name), res.Path)
						case step.parent != "":
							sameTree(t, step.snap, res.Path)
							sameSparseFiles(t, join(progs, name), res.Path)
						}
						sameSubvolume(t, res.Path, join(progs, name))
						if sc.check != nil && (v.opt.Proto == 2 || v.opt.CompressedData) {
							sc.check(t, res.Path, step.snap)
						}
						summary, counts := commandCounts(t, stream)
						t.Logf("%s: %d bytes, %s", name, len(stream), summary)
						if seen[v.name] == nil {
							seen[v.name] = map[string]int{}
						}
						for c, n := range counts {
							seen[v.name][c] += n
						}
						for _, want := range sc.wantCmds[name+"/"+v.name] {
							if counts[want] == 0 {
								t.Errorf("%s: the stream has no %s, so the scenario does not test it", name, want)
							}
						}
					}
					t.Logf("took %v", time.Since(start).Round(time.Millisecond))
					ran[v.name]++
				})
			}
		})
	}
	for _, v := range variants {
		want := 0
		for _, sc := range scenarios {
			if sc.variants == nil || contains(sc.variants, v.name) {
				want++
			}
		}
		if ran[v.name] < want {
			t.Logf("%s: ran in %d of %d scenarios; its command check needs them all", v.name, ran[v.name], want)
			continue
		}
		for _, c := range v.wantCmds {
			if seen[v.name][c.String()] == 0 {
				t.Errorf("%s: no stream of any scenario has %s, so the variant does not test it", v.name, c)
			}
		}
	}
}

func inodeFlags(t *testing.T, path string) uint64 {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var flags uint64
	if err := ioctl(fd, unix.FS_IOC_GETFLAGS, unsafe.Pointer(&flags)); err != nil {
		t.Fatal(err)
	}
	return flags
}

// sameSparseFiles compares the regular files of two flat directories by
// size, mode, mtime and the bytes of every data extent either has, without
// reading holes.
func sameSparseFiles(t *testing.T, a, b string) {
	t.Helper()
	entries, err := os.ReadDir(a)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		fa, err := os.Open(join(a, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		defer fa.Close()
		fb, err := os.Open(join(b, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		defer fb.Close()
		sa, _ := fa.Stat()
		sb, _ := fb.Stat()
		if sa.Size() != sb.Size() || sa.Mode() != sb.Mode() || !sa.ModTime().Equal(sb.ModTime()) {
			t.Errorf("%s: size/mode/mtime %d %v %v != %d %v %v", e.Name(), sa.Size(), sa.Mode(), sa.ModTime(), sb.Size(), sb.Mode(), sb.ModTime())
			continue
		}
		for _, f := range []*os.File{fa, fb} {
			for off := int64(0); off < sa.Size(); {
				start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
				if err != nil {
					break // ENXIO: no data after off
				}
				end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
				if err != nil {
					t.Fatal(err)
				}
				ba, bb := make([]byte, end-start), make([]byte, end-start)
				if _, err := fa.ReadAt(ba, start); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if _, err := fb.ReadAt(bb, start); err != nil && err != io.EOF {
					t.Fatal(err)
				}
				if !bytes.Equal(ba, bb) {
					t.Errorf("%s: content differs in %d..%d", e.Name(), start, end)
				}
				off = end
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// commandCounts summarises a stream, so the log shows what each variant
// exercised; clones from another subvolume than the one being received
// are counted as CLONE_EXTERNAL.
func commandCounts(t *testing.T, stream []byte) (string, map[string]int) {
	t.Helper()
	counts := map[string]int{}
	r := sendstream.NewReader(bytes.NewReader(stream), 0)
	var self [16]byte
	for {
		c, err := r.Next()
		if err != nil {
			break
		}
		counts[c.Type.String()]++
		switch c.Type {
		case sendstream.CmdSubvol, sendstream.CmdSnapshot:
			self, _ = c.UUID(sendstream.AttrUUID)
		case sendstream.CmdClone:
			if u, _ := c.UUID(sendstream.AttrCloneUUID); u != self {
				counts["CLONE_EXTERNAL"]++
			}
		}
	}
	s := ""
	for c := sendstream.CmdSubvol; c <= sendstream.CmdEncodedWrite; c++ {
		if n := counts[c.String()]; n > 0 {
			s += fmt.Sprintf("%s=%d ", c, n)
		}
	}
	return s + fmt.Sprintf("CLONE_EXTERNAL=%d", counts["CLONE_EXTERNAL"]), counts
}
