package dataset

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Changes counts what Mutate did.
type Changes struct {
	Files        int   `json:"files"`
	Bytes        int64 `json:"bytes"`
	Overwritten  int64 `json:"overwritten_bytes"`
	Renamed      int   `json:"renamed"`
	Deleted      int   `json:"deleted"`
	TouchedFiles int   `json:"touched_files"`
}

// Mutate turns a tree into its next version the way a working day does:
// it overwrites ranges of 4-64 KiB with new text until fraction of all
// bytes changed, then renames 1% of the files into other directories and
// deletes 0.5%. The same tree and seed give the same result.
func Mutate(ctx context.Context, dir string, fraction float64, seed uint64) (Changes, error) {
	var files []string
	var sizes []int64
	var ch Changes
	// WalkDir visits in lexical order, which makes the choices below reproducible.
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			files = append(files, p)
			sizes = append(sizes, info.Size())
			ch.Bytes += info.Size()
		}
		return nil
	})
	if err != nil {
		return ch, fmt.Errorf("mutate %s: %w", dir, err)
	}
	if len(files) == 0 {
		return ch, fmt.Errorf("mutate %s: no files", dir)
	}
	ch.Files = len(files)
	r := rand.New(rand.NewPCG(seed, 10))
	g := newTextGen(seed, 11)
	touched := map[int]bool{}
	var buf []byte
	for goal := int64(fraction * float64(ch.Bytes)); ch.Overwritten < goal; {
		if err := ctx.Err(); err != nil {
			return ch, err
		}
		i := r.IntN(len(files))
		if sizes[i] == 0 {
			continue
		}
		n := min(int64(4<<10+r.IntN(60<<10)), sizes[i], goal-ch.Overwritten)
		off := r.Int64N(sizes[i] - n + 1)
		buf = g.fill(buf[:0], int(n), true)
		if err := overwrite(files[i], off, buf); err != nil {
			return ch, err
		}
		ch.Overwritten += n
		touched[i] = true
	}
	ch.TouchedFiles = len(touched)
	perm := r.Perm(len(files))
	nRename, nDelete := max(1, len(files)/100), max(1, len(files)/200)
	for _, i := range perm[:nRename] {
		// Into the directory of another file, so the rename crosses directories.
		other := filepath.Dir(files[perm[len(perm)-1-ch.Renamed]])
		to := filepath.Join(other, "renamed-"+filepath.Base(files[i]))
		if err := os.Rename(files[i], to); err != nil {
			return ch, fmt.Errorf("mutate: %w", err)
		}
		ch.Renamed++
	}
	for _, i := range perm[nRename : nRename+nDelete] {
		if err := os.Remove(files[i]); err != nil {
			return ch, fmt.Errorf("mutate: %w", err)
		}
		ch.Deleted++
	}
	return ch, nil
}

func overwrite(name string, off int64, data []byte) error {
	f, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("mutate: %w", err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return fmt.Errorf("mutate %s: %w", name, err)
	}
	return f.Close()
}
