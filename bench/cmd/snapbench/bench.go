package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snapjet/snapjet/bench/dataset"
	"github.com/snapjet/snapjet/bench/proctree"
	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/bench/sshloop"
	"github.com/snapjet/snapjet/bench/wire"
	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/internal/treecmp"
)

type bench struct {
	cfg      config
	size     sizes
	work     string
	src, tgt *loopfs.FS
	ssh      *sshloop.Server
	res      *report.Results
	sets     map[string]*dataSet
	order    []*dataSet
	baseline *baseline // uninterrupted three-process run of set a, for the resume costs
	profiles []profileFile
}

// dataSet is one generated data set on the source filesystem.
type dataSet struct {
	*report.Dataset
	subvol string // writable subvolume: the SOURCE snapjet snapshots
	snap   string // read-only snapshot of subvol that the pipes send
	parent string // for an incremental set: the snapshot snap is sent against
	// mutation makes an incremental set's next version from its parent
	// again, for the snapjet rows that take their own snapshots.
	mutation func(ctx context.Context, dir string) error
}

func (b *bench) runSections(ctx context.Context) error {
	s := b.size
	steps := []struct {
		key string
		run func(ctx context.Context) error
	}{
		{"a", func(ctx context.Context) error {
			return b.fullSet(ctx, "a", fmt.Sprintf("random, incompressible, %d large files", s.randomFiles), func(ctx context.Context, dir string) error {
				return dataset.Random(ctx, dir, s.random, s.randomFiles, b.cfg.seed)
			})
		}},
		{"b", func(ctx context.Context) error { return b.fullSet(ctx, "b", textDesc, b.genText) }},
		{"d", b.incrementalSet},
		{"c", func(ctx context.Context) error {
			return b.fullSet(ctx, "c", fmt.Sprintf("%d small files of 0-32 KiB, half text, half random", s.smallFiles), func(ctx context.Context, dir string) error {
				return dataset.SmallFiles(ctx, dir, s.smallFiles, b.cfg.seed)
			})
		}},
		{"f", b.compressedSet},
		{"resume", b.resumeSection},
		{"memory", b.memorySection},
		{wanSectionName, b.wanSection},
	}
	for _, step := range steps {
		if !b.cfg.sections[step.key] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		slog.Info("section", "name", step.key)
		if err := step.run(ctx); err != nil {
			return fmt.Errorf("section %s: %w", step.key, err)
		}
	}
	return ctx.Err()
}

const textDesc = "text and source-like files of 4 KiB-4 MiB"

func (b *bench) genText(ctx context.Context, dir string) error {
	return dataset.Text(ctx, dir, b.size.text, b.cfg.seed)
}

// fullSet generates a data set and runs every method on it.
func (b *bench) fullSet(ctx context.Context, key, desc string, gen func(context.Context, string) error) error {
	ds, err := b.prepare(ctx, key, desc, gen)
	if err != nil {
		return err
	}
	b.methods(ctx, ds)
	return nil
}

// compressedSet is the text of set b on a subvolume that btrfs stores
// compressed (zstd): snapjet sends its extents as they are, the pipes and
// replicate --compressed-data never decompress them and compress again.
func (b *bench) compressedSet(ctx context.Context) error {
	ds, err := b.prepare(ctx, "f", textDesc+", stored compressed by btrfs (zstd)", func(ctx context.Context, dir string) error {
		if out, err := exec.CommandContext(ctx, "btrfs", "property", "set", dir, "compression", "zstd").CombinedOutput(); err != nil {
			return fmt.Errorf("btrfs property set %s compression zstd: %w: %s", dir, err, out)
		}
		return b.genText(ctx, dir)
	})
	if err != nil {
		return err
	}
	b.methods(ctx, ds, b.rawRow, b.sshRow, b.replicateRow, b.replicateDecompressedRow)
	return nil
}

// methods runs rows on ds, by default every method.
func (b *bench) methods(ctx context.Context, ds *dataSet, rows ...func(context.Context, *dataSet) report.Row) {
	if len(rows) == 0 {
		rows = []func(context.Context, *dataSet) report.Row{b.rawRow, b.sshRow, b.replicateRow, b.replicateProgsRow, b.threeRow}
	}
	for _, m := range rows {
		if ctx.Err() != nil {
			return
		}
		row := m(ctx, ds)
		b.res.Rows = append(b.res.Rows, row)
		slog.Info("row done", "set", row.Dataset, "method", row.Method, "wall", row.WallSeconds, "MB/s", int(row.MBps),
			"wire", row.WireBytes, "cpu", row.CPUSeconds, "verified", row.Verified, "err", row.Error)
	}
}

// prepare creates the set's subvolume, generates its files, takes the
// read-only snapshot the pipes send and measures its send stream. A set
// prepared before (b is d's base) is returned as is.
func (b *bench) prepare(ctx context.Context, key, desc string, gen func(context.Context, string) error) (*dataSet, error) {
	if ds := b.sets[key]; ds != nil {
		return ds, nil
	}
	ds := &dataSet{
		Dataset: &report.Dataset{Key: key, Description: desc},
		subvol:  filepath.Join(b.src.Dir, key),
		snap:    filepath.Join(b.src.Dir, "snaps", key+".snap"),
	}
	if err := os.MkdirAll(filepath.Dir(ds.snap), 0o755); err != nil {
		return nil, err
	}
	if err := btrfs.CreateSubvolume(ctx, ds.subvol); err != nil {
		return nil, err
	}
	slog.Info("generating", "set", key)
	t0 := time.Now()
	if err := gen(ctx, ds.subvol); err != nil {
		return nil, fmt.Errorf("generate %s: %w", key, err)
	}
	if err := btrfs.Sync(ds.subvol); err != nil {
		return nil, err
	}
	ds.GenSeconds = time.Since(t0).Seconds()
	if err := btrfs.Snapshot(ctx, ds.subvol, ds.snap, true); err != nil {
		return nil, err
	}
	if err := b.measureStream(ctx, ds); err != nil {
		return nil, err
	}
	b.sets[key] = ds
	b.order = append(b.order, ds)
	slog.Info("data set ready", "set", key, "files", ds.Files, "bytes", ds.FileBytes, "stream", ds.StreamBytes, "seconds", ds.GenSeconds)
	return ds, nil
}

// measureStream counts the set's files and the bytes of its send stream,
// the `btrfs send ... | wc -c` every row's throughput is computed from.
func (b *bench) measureStream(ctx context.Context, ds *dataSet) error {
	ds.Files, ds.FileBytes = 0, 0
	err := filepath.Walk(ds.snap, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			ds.Files++
			ds.FileBytes += info.Size()
		}
		return err
	})
	if err != nil {
		return err
	}
	out, p, err := btrfs.Send(ctx, ds.snap, btrfs.SendOptions{Parent: ds.parent})
	if err != nil {
		return err
	}
	var n atomic.Int64
	_, copyErr := wire.Copy(io.Discard, out, &n)
	if err := p.Wait(); err != nil {
		return err
	}
	if copyErr != nil {
		return fmt.Errorf("measure send stream of %s: %w", ds.snap, copyErr)
	}
	ds.StreamBytes = n.Load()
	return nil
}

// emptyTarget deletes every subvolume on the target filesystem (received
// ones and partial receives) and everything else, and waits until btrfs
// has really freed them, so no row pays for the previous row's cleanup.
func (b *bench) emptyTarget(ctx context.Context) error {
	var del func(dir string) error
	del = func(dir string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			switch {
			case e.IsDir() && btrfs.IsSubvolume(p):
				if err := btrfs.DeleteSubvolume(ctx, p); err != nil {
					return err
				}
			case e.IsDir():
				if err := del(p); err != nil {
					return err
				}
				if err := os.Remove(p); err != nil {
					return err
				}
			default:
				if err := os.Remove(p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := del(b.tgt.Dir); err != nil {
		return fmt.Errorf("empty target: %w", err)
	}
	return settle(ctx, b.tgt.Dir)
}

// settle waits until btrfs has freed the subvolumes deleted on the
// filesystem holding dir. Deleted subvolumes are cleaned up in the
// background after a transaction commit, up to 30 s later, and would
// otherwise compete with the next measurement. `filesystem sync` commits
// and wakes the cleaner; `subvolume sync` waits for it. The btrfs package
// wraps neither: only the benchmark needs them.
func settle(ctx context.Context, dir string) error {
	for _, args := range [][]string{{"filesystem", "sync", dir}, {"subvolume", "sync", dir}} {
		if out, err := exec.CommandContext(ctx, "btrfs", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("btrfs %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// timed runs fn as the measured part of a row: dirty data from the setup
// is flushed before the clock starts, and the clock stops only once the
// target has committed what was received to disk (syncfs), which snapjet
// promises on commit and a bare btrfs receive does not.
func (b *bench) timed(fn func() error) (time.Duration, error) {
	if err := errors.Join(btrfs.Sync(b.src.Dir), btrfs.Sync(b.tgt.Dir)); err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := fn(); err != nil {
		return time.Since(t0), err
	}
	err := btrfs.Sync(b.tgt.Dir)
	return time.Since(t0), err
}

// row runs one method on one set with a fresh target and process group,
// and fills in what every row reports. fn does the method's work and
// returns the wall time and the source snapshot the target should now
// hold.
func (b *bench) row(ctx context.Context, ds *dataSet, method string, fn func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error)) report.Row {
	r := report.Row{Dataset: ds.Key, Method: method, StreamBytes: ds.StreamBytes}
	slog.Info("row", "set", ds.Key, "method", method)
	t0 := time.Now()
	defer func() {
		slog.Info("row finished", "set", ds.Key, "method", method, "took", time.Since(t0).Round(time.Millisecond))
	}()
	if err := b.emptyTarget(ctx); err != nil {
		r.Error = err.Error()
		return r
	}
	rctx, cancel := context.WithTimeout(ctx, b.cfg.rowTimeout)
	defer cancel()
	g := proctree.New()
	defer g.Close()
	// A row that hangs or is interrupted must not leave processes behind.
	finished := make(chan struct{})
	go func() {
		select {
		case <-rctx.Done():
			g.KillAll()
		case <-finished:
		}
	}()
	wall, snap, err := fn(rctx, g, &r)
	close(finished)
	if err != nil {
		g.KillAll()
		if rctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, rctx.Err())
		}
		r.Error = err.Error()
	}
	g.Close()
	r.WallSeconds = wall.Seconds()
	r.CPUSeconds = g.CPU().Seconds()
	r.Procs = g.Procs()
	if wall > 0 {
		r.MBps = float64(r.StreamBytes) / 1e6 / wall.Seconds()
	}
	for _, o := range b.res.Rows {
		if o.Dataset == r.Dataset && o.Method == methodRaw && o.Error == "" && o.MBps > 0 {
			r.VsRaw = r.MBps / o.MBps
		}
	}
	if r.Method == methodRaw {
		r.VsRaw = 1
	}
	if err == nil {
		r.Verified = b.verify(ctx, snap)
	}
	return r
}

// verify checks that the target holds snap as a read-only received
// subvolume with snap's UUID as its received UUID and the same tree.
func (b *bench) verify(ctx context.Context, snap string) string {
	if !b.cfg.verify {
		return "not checked"
	}
	info, err := btrfs.Inspect(snap)
	if err != nil {
		return "FAILED: " + err.Error()
	}
	subs, err := btrfs.List(b.tgt.Dir)
	if err != nil {
		return "FAILED: " + err.Error()
	}
	for _, s := range subs {
		if s.ReceivedUUID != info.UUID {
			continue
		}
		if !s.ReadOnly {
			return "FAILED: " + s.Path + " is writable"
		}
		diffs, err := treecmp.Compare(snap, s.Path, treecmp.Options{Times: true})
		if err != nil {
			return "FAILED: compare: " + err.Error()
		}
		if len(diffs) > 0 {
			return fmt.Sprintf("FAILED: %d differences, first: %s", len(diffs), diffs[0])
		}
		if ctx.Err() != nil {
			return "not checked"
		}
		return "ok"
	}
	return fmt.Sprintf("FAILED: no read-only subvolume with received UUID %s in the target", info.UUID)
}
