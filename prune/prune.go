// Package prune applies a job's retention to its snapshots on the source
// (<dir of SOURCE>/.snapjet/<name>/) and in its local target directories:
// it gathers the facts (subvolumes matched by UUID, the replication
// records, the receivers' inventories), lets retention.Decide judge every
// snapshot, and deletes exactly what the plan lists, nothing else. On a
// target it only ever considers what snapjet received from this source.
// A remote target is planned here from its receiver's inventory and pruned
// by its receiver, which deletes only a committed snapshot with the
// received UUID the plan names.
package prune

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

// State is what prune needs from NATS: the replication records, and the
// inventories and deletions of remote targets.
type State interface {
	Records(ctx context.Context) ([]*coordinator.Replication, error)
	// Inventory returns the committed snapshots a remote target holds.
	Inventory(ctx context.Context, target string) (streams.Inventory, error)
	// DeleteRemote asks a remote target's receiver to delete one committed
	// snapshot; the receiver refuses anything else.
	DeleteRemote(ctx context.Context, target string, d streams.DeleteRequest) error
}

// Plan is what pruning a job would do, side by side.
type Plan struct {
	Job   string
	Sides []Side
	// Unknown lists the remote targets whose inventory could not be read:
	// nothing is pruned there this time (and nothing on the source).
	Unknown []string
}

// Side is the source or one target, and its verdicts newest first.
type Side struct {
	Kind   string // "source" or "target"
	Dir    string // on the target's host, for a remote target
	Target string // the target's name, for a target side
	Remote bool   // pruned by the target's receiver
	Items  []Item
}

// Item is one snapshot with its verdict.
type Item struct {
	retention.Decision
	Path string
	// UUID is the subvolume's own UUID, checked again before a local
	// delete; a remote receiver checks ReceivedUUID instead.
	UUID         btrfs.UUID
	ReceivedUUID btrfs.UUID
}

// facts are what the decisions of every side of one job depend on.
type facts struct {
	source  []btrfs.Info
	srcName map[btrfs.UUID]string // source snapshot UUID → its name
	ours    map[btrfs.UUID]bool   // UUIDs of every snapshot this source ever replicated
	needed  map[btrfs.UUID]string // UUID → unfinished replication that needs it
	failed  map[string]bool       // target name → its last replication failed
	// hold keeps everything on every side: the records are unreadable,
	// or what a remote target holds is unknown (so are its base and the
	// parent of the next replication).
	hold     string
	parent   btrfs.UUID // the next replication's parent; zero for none
	targets  []targetFacts
	location *time.Location
}

type targetFacts struct {
	name, dir string
	remote    bool
	known     bool                // the inventory of a remote target was read
	received  map[btrfs.UUID]bool // received UUIDs of this source's snapshots held
	subvols   []btrfs.Info        // those snapshots; a remote one has only Path and ReceivedUUID
}

// Build plans the pruning of job at now. Bucket boundaries follow loc.
func Build(ctx context.Context, job config.Job, st State, now time.Time, loc *time.Location) (*Plan, error) {
	f, err := gather(ctx, job, st)
	if err != nil {
		return nil, err
	}
	f.location = loc
	p := &Plan{Job: job.Name, Sides: []Side{f.sourceSide(job, now)}}
	for _, t := range f.targets {
		if t.remote && !t.known {
			p.Unknown = append(p.Unknown, t.name)
			continue
		}
		p.Sides = append(p.Sides, f.targetSide(job, t, now))
	}
	return p, nil
}

func gather(ctx context.Context, job config.Job, st State) (*facts, error) {
	dir := sender.SnapshotDir(job.Source)
	all, err := btrfs.List(dir)
	if err != nil {
		return nil, fmt.Errorf("job %s: list source snapshots: %w", job.Name, err)
	}
	f := &facts{srcName: map[btrfs.UUID]string{}, ours: map[btrfs.UUID]bool{}, needed: map[btrfs.UUID]string{}, failed: map[string]bool{}}
	for _, s := range all {
		// A writable subvolume here is no snapshot of snapjet's (an
		// operator's experiment, say): never ours to delete.
		if s.ReadOnly {
			f.source = append(f.source, s)
			f.srcName[s.UUID] = filepath.Base(s.Path)
			f.ours[s.UUID] = true
		}
	}
	if recs, err := st.Records(ctx); err != nil {
		f.hold = fmt.Sprintf("replication records unreadable (%v)", err)
	} else {
		f.fromRecords(job, recs)
	}
	for _, t := range job.Targets {
		tf, err := f.target(ctx, t, st)
		if err != nil {
			return nil, fmt.Errorf("job %s: %w", job.Name, err)
		}
		f.targets = append(f.targets, tf)
	}
	f.parent = f.nextParent()
	return f, nil
}

// nextParent is the snapshot the sender will choose as the incremental
// parent of the next replication: the newest source snapshot that every
// target holds (as sender's chooseParent does).
func (f *facts) nextParent() btrfs.UUID {
	for i := len(f.source) - 1; i >= 0 && len(f.targets) > 0; i-- {
		u := f.source[i].UUID
		everywhere := true
		for _, t := range f.targets {
			everywhere = everywhere && t.received[u]
		}
		if everywhere {
			return u
		}
	}
	return btrfs.UUID{}
}

// fromRecords learns from this source's replication records which UUIDs
// snapjet sent, which snapshots unfinished replications need, and which
// targets failed their last replication.
func (f *facts) fromRecords(job config.Job, recs []*coordinator.Replication) {
	latest := map[string]*coordinator.Replication{}
	var newest *coordinator.Replication
	for _, r := range recs {
		if filepath.Clean(r.Source) == job.Source && (newest == nil || r.Created.After(newest.Created)) {
			newest = r
		}
	}
	for _, r := range recs {
		if filepath.Clean(r.Source) != job.Source {
			continue
		}
		snap, _ := btrfs.ParseUUID(r.SnapshotUUID)
		f.ours[snap] = true
		// A replication under way needs its snapshot and parent; so does a
		// failed one of the newest snapshot, which the next run retries
		// first (an older failed one is never retried: its targets get
		// newer snapshots).
		if !r.State.Terminal() || (r.State == coordinator.Failed && r.SnapshotUUID == newest.SnapshotUUID) {
			f.needed[snap] = r.ID
			if parent, _ := btrfs.ParseUUID(r.ParentUUID); !parent.IsZero() {
				f.needed[parent] = r.ID
			}
		}
		for name := range r.Targets {
			if l, ok := latest[name]; !ok || r.Created.After(l.Created) {
				latest[name] = r
			}
		}
	}
	delete(f.ours, btrfs.UUID{})
	delete(f.needed, btrfs.UUID{})
	for name, r := range latest {
		f.failed[name] = r.Targets[name].State == coordinator.TFailed
	}
}

func (f *facts) target(ctx context.Context, t config.Target, st State) (targetFacts, error) {
	if t.Remote != "" {
		tf := targetFacts{name: t.Remote, remote: true, received: map[btrfs.UUID]bool{}}
		inv, err := st.Inventory(ctx, t.Remote)
		if err != nil {
			// Without its inventory the remote base is unknown, so the
			// source must keep everything.
			f.hold = firstOf(f.hold, fmt.Sprintf("what target %s holds is unknown (%v)", t.Remote, err))
			return tf, nil
		}
		tf.known, tf.dir = true, inv.Dir
		for _, h := range inv.Snapshots {
			u, err := btrfs.ParseUUID(h.ReceivedUUID)
			if err != nil {
				return tf, fmt.Errorf("inventory of %s: %w", t.Remote, err)
			}
			// A remote target may hold other sources' snapshots: only
			// this source's are ours to judge.
			if f.ours[u] {
				tf.received[u] = true
				tf.subvols = append(tf.subvols, btrfs.Info{Path: h.Path, ReceivedUUID: u, ReadOnly: true})
			}
		}
		return tf, nil
	}
	tf := targetFacts{name: LocalTargetName(t.Dir), dir: t.Dir, received: map[btrfs.UUID]bool{}}
	subs, err := btrfs.List(t.Dir)
	if err != nil {
		return tf, fmt.Errorf("list target %s: %w", t.Dir, err)
	}
	for _, s := range subs {
		// Only a read-only subvolume with a received UUID is a committed
		// copy (see the commit rule); only one of this source's is ours.
		if s.ReadOnly && !s.ReceivedUUID.IsZero() && f.ours[s.ReceivedUUID] {
			tf.received[s.ReceivedUUID] = true
			tf.subvols = append(tf.subvols, s)
		}
	}
	return tf, nil
}

func (f *facts) sourceSide(job config.Job, now time.Time) Side {
	in := retention.Input{Now: now, Policy: job.Retain.Source, Location: f.location, Hold: f.hold, Needed: map[string]string{}}
	byName := map[string]btrfs.Info{}
	for _, s := range f.source {
		name := filepath.Base(s.Path)
		byName[name] = s
		in.Snapshots = append(in.Snapshots, retention.Snapshot{Name: name, Created: Created(s)})
		if id, ok := f.needed[s.UUID]; ok {
			in.Needed[name] = id
		}
		if s.UUID == f.parent && !f.parent.IsZero() {
			in.Parent = name
		}
	}
	for _, t := range f.targets {
		holds := map[string]bool{}
		for _, s := range f.source {
			if t.received[s.UUID] {
				holds[filepath.Base(s.Path)] = true
			}
		}
		in.Targets = append(in.Targets, retention.Target{Name: t.name, Holds: holds, Failed: f.failed[t.name]})
	}
	return side("source", sender.SnapshotDir(job.Source), "", retention.Decide(in), byName)
}

func (f *facts) targetSide(job config.Job, t targetFacts, now time.Time) Side {
	in := retention.Input{Now: now, Policy: job.Retain.Target, Location: f.location, Hold: f.hold, Needed: map[string]string{}}
	byName := map[string]btrfs.Info{}
	holds := map[string]bool{}
	for _, s := range t.subvols {
		name := filepath.Base(s.Path)
		byName[name] = s
		// A received copy's own creation time is when it arrived; the
		// snapshot's time is in its name (or its source's).
		in.Snapshots = append(in.Snapshots, retention.Snapshot{Name: name, Created: Created(s)})
		if _, ok := f.srcName[s.ReceivedUUID]; ok {
			holds[name] = true
		}
		if id, ok := f.needed[s.ReceivedUUID]; ok {
			in.Needed[name] = id
		}
		if s.ReceivedUUID == f.parent && !f.parent.IsZero() {
			in.Parent = name
		}
	}
	in.Targets = []retention.Target{{Name: t.name, Holds: holds, Failed: f.failed[t.name]}}
	s := side("target", t.dir, t.name, retention.Decide(in), byName)
	s.Remote = t.remote
	return s
}

func side(kind, dir, target string, ds []retention.Decision, byName map[string]btrfs.Info) Side {
	s := Side{Kind: kind, Dir: dir, Target: target}
	for _, d := range ds {
		info := byName[d.Name]
		s.Items = append(s.Items, Item{Decision: d, Path: info.Path, UUID: info.UUID, ReceivedUUID: info.ReceivedUUID})
	}
	return s
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// stamp is the UTC time the sender puts in a snapshot's name
// (<name>.20261130T140000Z, or with -N when two fell in one second).
var stamp = regexp.MustCompile(`\.(\d{8}T\d{6}Z)(-\d+)?$`)

// Created is when the snapshot was taken: the time in its name, which a
// received copy keeps, or else the subvolume's creation time.
func Created(s btrfs.Info) time.Time {
	if m := stamp.FindStringSubmatch(filepath.Base(s.Path)); m != nil {
		if t, err := time.Parse("20060102T150405Z", m[1]); err == nil {
			return t
		}
	}
	return s.Created
}

// Deletions counts the snapshots the plan deletes.
func (p *Plan) Deletions() int {
	n := 0
	for _, s := range p.Sides {
		for _, it := range s.Items {
			if !it.Keep {
				n++
			}
		}
	}
	return n
}

// Apply deletes what the plan says to delete, and only that: each local
// subvolume is inspected again first, and one that is no longer the
// planned one (same path, other UUID) is left alone and reported; a remote
// one is deleted by its receiver through st, which checks its received
// UUID. It goes on after a failure and returns every error.
func (p *Plan) Apply(ctx context.Context, del func(ctx context.Context, path string) error, st State) (deleted []string, err error) {
	var errs []error
	for _, s := range p.Sides {
		for _, it := range s.Items {
			if it.Keep {
				continue
			}
			if s.Remote {
				d := streams.DeleteRequest{Name: it.Name, ReceivedUUID: it.ReceivedUUID.String()}
				if derr := st.DeleteRemote(ctx, s.Target, d); derr != nil {
					errs = append(errs, fmt.Errorf("delete %s on target %s: %w", it.Name, s.Target, derr))
					continue
				}
				deleted = append(deleted, it.Path)
				continue
			}
			info, ierr := btrfs.Inspect(it.Path)
			if ierr != nil || info.UUID != it.UUID {
				errs = append(errs, fmt.Errorf("%s changed since the plan was made; not deleted (run prune again)", it.Path))
				continue
			}
			if derr := del(ctx, it.Path); derr != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", it.Path, derr))
				continue
			}
			deleted = append(deleted, it.Path)
		}
	}
	return deleted, errors.Join(errs...)
}

// LocalTargetName is the target name of a local target directory: its
// base name plus six hex digits of a hash of its absolute path, as
// `snapjet replicate` names it, so records match across commands.
func LocalTargetName(dir string) string {
	abs, _ := filepath.Abs(dir)
	sum := sha256.Sum256([]byte(abs))
	base := unsafeName.ReplaceAllString(filepath.Base(abs), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	return base + "-" + hex.EncodeToString(sum[:3])
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)
