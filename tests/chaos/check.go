package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/treecmp"
)

// target is one target directory of a trial and the name it goes by in
// `snapjet send --to` (empty for `replicate`, which derives it).
type target struct {
	name string
	dir  string
}

// snapshotDir is where snapjet keeps the source's snapshots by default.
func snapshotDir(source string) string {
	return filepath.Join(filepath.Dir(source), ".snapjet", filepath.Base(source))
}

// checkReplicas checks the disks: at every target, each entry at a final
// name is a committed replica (a read-only subvolume whose received UUID is
// the source snapshot's UUID) with the same tree as its source snapshot,
// and every snapshot in want is there. It returns one line per problem.
func checkReplicas(source string, targets []target, want []string) []string {
	var problems []string
	snaps, err := btrfs.List(snapshotDir(source))
	if err != nil {
		return []string{fmt.Sprintf("list source snapshots: %v", err)}
	}
	byName := map[string]btrfs.Info{}
	for _, s := range snaps {
		byName[s.Name] = s
	}
	for _, t := range targets {
		entries, err := os.ReadDir(t.dir)
		if err != nil {
			problems = append(problems, fmt.Sprintf("read target %s: %v", t.dir, err))
			continue
		}
		have := map[string]bool{}
		for _, e := range entries {
			if e.Name() == ".snapjet" {
				continue
			}
			p := filepath.Join(t.dir, e.Name())
			src, ok := byName[e.Name()]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: an entry that is no source snapshot", p))
				continue
			}
			info, err := btrfs.Inspect(p)
			switch {
			case err != nil:
				problems = append(problems, fmt.Sprintf("%s: not a subvolume at a final name: %v", p, err))
				continue
			case !info.ReadOnly || info.ReceivedUUID != src.UUID:
				problems = append(problems, fmt.Sprintf("%s: partial at a final name (read-only %v, received uuid %s, source uuid %s)", p, info.ReadOnly, info.ReceivedUUID, src.UUID))
				continue
			}
			diffs, err := treecmp.Compare(src.Path, p, treecmp.Options{Times: true, MaxDiffs: 3})
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: compare with %s: %v", p, src.Path, err))
				continue
			}
			for _, d := range diffs {
				problems = append(problems, fmt.Sprintf("%s differs from its source snapshot: %s", p, d))
			}
			have[e.Name()] = true
		}
		for _, name := range want {
			if !have[name] {
				problems = append(problems, fmt.Sprintf("%s: snapshot %s was not committed", t.dir, name))
			}
		}
	}
	return problems
}

// stagingEntries lists what is left in TARGET/.snapjet/incoming.
func stagingEntries(dir string) []string {
	incoming := filepath.Join(dir, ".snapjet", "incoming")
	entries, err := os.ReadDir(incoming)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return []string{err.Error()}
	}
	var out []string
	for _, e := range entries {
		// Name the files too: a checkpoint.json says what was left.
		sub, _ := os.ReadDir(filepath.Join(incoming, e.Name()))
		var names []string
		for _, s := range sub {
			names = append(names, s.Name())
		}
		out = append(out, fmt.Sprintf("%s%v", e.Name(), names))
	}
	sort.Strings(out)
	return out
}

// checkStatus checks `snapjet status --json` against the disks: every
// replication is done with every target committed (the runner checks after
// a round that succeeded), each committed target's path holds a committed
// replica of that snapshot, and each replica on disk is committed in status.
func checkStatus(doc statusDoc, targets []target) []string {
	var problems []string
	recorded := map[string]bool{} // target dir + snapshot name
	for _, r := range doc.Replications {
		if r.State != "done" {
			problems = append(problems, fmt.Sprintf("status: replication %v is not done", r))
		}
		// No count of targets per record: targets with different parents
		// may get records of their own. Coverage is checked from the disks
		// below: every replica has a committed record.
		for name, ts := range r.Targets {
			if ts.State != "committed" {
				problems = append(problems, fmt.Sprintf("status: %s target %s is %s (%s) in a finished run", r.SnapshotName, name, ts.State, ts.Error))
				continue
			}
			if ts.Path == "" {
				problems = append(problems, fmt.Sprintf("status: %s target %s committed without a path", r.SnapshotName, name))
				continue
			}
			info, err := btrfs.Inspect(ts.Path)
			if err != nil || !info.ReadOnly || info.ReceivedUUID.String() != r.SnapshotUUID {
				problems = append(problems, fmt.Sprintf("status: %s target %s committed at %s, but the disk has no committed replica there (%v)", r.SnapshotName, name, ts.Path, err))
				continue
			}
			recorded[filepath.Dir(ts.Path)+"|"+r.SnapshotName] = true
		}
	}
	for _, t := range targets {
		subs, err := btrfs.List(t.dir)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		for _, s := range subs {
			if !s.ReceivedUUID.IsZero() && !recorded[t.dir+"|"+s.Name] {
				problems = append(problems, fmt.Sprintf("status: no committed record for the replica %s on disk", s.Path))
			}
		}
	}
	return problems
}

// waitStagingEmpty waits (bounded) until no target has anything in its
// staging area: a receiver removes its staging right after the commit,
// which can be a moment after the sender exited.
func waitStagingEmpty(ctx context.Context, targets []target, bound time.Duration) []string {
	var left []string
	err := poll(ctx, bound, 100*time.Millisecond, func() bool {
		left = nil
		for _, t := range targets {
			for _, e := range stagingEntries(t.dir) {
				left = append(left, fmt.Sprintf("%s/.snapjet/incoming/%s", t.dir, e))
			}
		}
		return len(left) == 0
	})
	if err != nil {
		return []string{fmt.Sprintf("staging not empty %v after the run succeeded: %v", bound, left)}
	}
	return nil
}

// poll calls cond every interval until it holds; it returns an error when
// bound passes or ctx ends first. It is how the runner waits for an event
// it cannot subscribe to: bounded, and never a bare sleep.
func poll(ctx context.Context, bound, interval time.Duration, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
