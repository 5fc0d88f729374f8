// Package dataset writes the benchmark's data sets, reproducibly: the same
// seed and size give the same tree, byte for byte, on every machine, so
// figures from different runs compare the same work.
package dataset

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

const block = 1 << 20

// chacha returns a random byte stream determined by seed and stream alone.
func chacha(seed, stream uint64) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], stream)
	copy(key[16:], "snapjet-bench")
	return rand.NewChaCha8(key)
}

// Random writes total bytes of incompressible data into files equal files.
func Random(ctx context.Context, dir string, total int64, files int, seed uint64) error {
	per := total / int64(files)
	for i := 0; i < files; i++ {
		size := per
		if i == files-1 {
			size = total - per*int64(files-1)
		}
		name := filepath.Join(dir, fmt.Sprintf("random-%03d.bin", i))
		if err := writeFile(ctx, name, func(w io.Writer) error {
			_, err := io.CopyN(w, chacha(seed, uint64(i)), size)
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}

// Text writes total bytes of prose- and source-like files whose sizes
// spread from 4 KiB to 4 MiB, in 64 directories.
func Text(ctx context.Context, dir string, total int64, seed uint64) error {
	g := newTextGen(seed, 1)
	sizes := rand.New(rand.NewPCG(seed, 2))
	var buf []byte
	for i, written := 0, int64(0); written < total; i++ {
		size := min(logUniform(sizes, 4<<10, 4<<20), total-written)
		source := i%3 != 0
		ext := ".txt"
		if source {
			ext = ".go"
		}
		name := filepath.Join(dir, fmt.Sprintf("d%02d", i%64), fmt.Sprintf("f%05d%s", i, ext))
		buf = g.fill(buf[:0], int(size), source)
		if err := writeFile(ctx, name, func(w io.Writer) error {
			_, err := w.Write(buf)
			return err
		}); err != nil {
			return err
		}
		written += size
	}
	return nil
}

// SmallFiles writes count files of 0 to 32 KiB (most under 8 KiB), half
// text and half random, a thousand to a directory.
func SmallFiles(ctx context.Context, dir string, count int, seed uint64) error {
	g := newTextGen(seed, 3)
	r := rand.New(rand.NewPCG(seed, 4))
	random := chacha(seed, 5)
	var buf []byte
	for i := 0; i < count; i++ {
		if i%1000 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("d%03d", i/1000)), 0o755); err != nil {
				return err
			}
		}
		var size int
		switch p := r.IntN(10); {
		case p < 5:
			size = r.IntN(2 << 10)
		case p < 9:
			size = 2<<10 + r.IntN(6<<10)
		default:
			size = 8<<10 + r.IntN(24<<10)
		}
		if i%2 == 0 {
			buf = g.fill(buf[:0], size, i%4 == 0)
		} else {
			buf = append(buf[:0], make([]byte, size)...)
			random.Read(buf)
		}
		name := filepath.Join(dir, fmt.Sprintf("d%03d", i/1000), fmt.Sprintf("f%06d", i))
		if err := os.WriteFile(name, buf, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// Islands writes total bytes in files of at most 1 GiB where every 16 MiB
// hold 1 MiB of random data followed by 15 MiB of zeros. The zeros are
// written, not left as holes: a full btrfs send skips holes, and the point
// of this set is a long send stream. On a filesystem mounted with
// compression the zeros take almost no disk.
func Islands(ctx context.Context, dir string, total int64, seed uint64) error {
	const file, period, island = 1 << 30, 16 << 20, 1 << 20
	zeros := make([]byte, block)
	for i, written := 0, int64(0); written < total; i++ {
		size := min(int64(file), total-written)
		random := chacha(seed, 100+uint64(i))
		name := filepath.Join(dir, fmt.Sprintf("islands-%03d.bin", i))
		if err := writeFile(ctx, name, func(w io.Writer) error {
			for off := int64(0); off < size; off += block {
				n := min(block, size-off)
				var err error
				if off%period < island {
					_, err = io.CopyN(w, random, n)
				} else {
					_, err = w.Write(zeros[:n])
				}
				if err != nil {
					return err
				}
				if off%period == 0 {
					if err := ctx.Err(); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			return err
		}
		written += size
	}
	return nil
}

// logUniform draws a size between lo and hi whose logarithm is uniform, so
// small files are common and large ones hold most of the bytes.
func logUniform(r *rand.Rand, lo, hi int64) int64 {
	return int64(math.Exp(math.Log(float64(lo)) + r.Float64()*(math.Log(float64(hi))-math.Log(float64(lo)))))
}

func writeFile(ctx context.Context, name string, fill func(io.Writer) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, block)
	if err := fill(w); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
