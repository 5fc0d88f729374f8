// Package sender turns a btrfs subvolume into a replication: it takes the
// read-only snapshot, picks the incremental parent by UUID from what every
// target holds, and publishes the `btrfs send` stream as verified chunks
// with back-pressure, resuming after a crash where the stream left off.
package sender

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/internal/retry"
	"github.com/snapjet/snapjet/streams"
)

// CheckSource resolves SOURCE to an absolute path and explains, in terms an
// operator can act on, why it cannot be replicated.
func CheckSource(source string) (string, btrfs.Info, error) {
	abs, err := filepath.Abs(source)
	if err != nil {
		return "", btrfs.Info{}, driver.Permanent(fmt.Errorf("source %s: %w", source, err))
	}
	info, err := btrfs.Inspect(abs)
	switch {
	case errors.Is(err, btrfs.ErrNotFound):
		return "", info, driver.Permanent(fmt.Errorf("source %s does not exist: give the path of a btrfs subvolume", abs))
	case errors.Is(err, btrfs.ErrNotBtrfs):
		return "", info, driver.Permanent(fmt.Errorf("source %s is not on a btrfs filesystem: snapjet replicates btrfs subvolumes", abs))
	case errors.Is(err, btrfs.ErrNotSubvolume):
		return "", info, driver.Permanent(fmt.Errorf("source %s is not a btrfs subvolume: point at a subvolume, or make one with `btrfs subvolume create`", abs))
	case err != nil:
		return "", info, fmt.Errorf("source %s: %w", abs, err)
	}
	return abs, info, nil
}

// SnapshotDir is where the snapshots of source are kept by default: beside
// it on the same filesystem, so that snapshotting is instant.
func SnapshotDir(source string) string {
	return filepath.Join(filepath.Dir(source), ".snapjet", filepath.Base(source))
}

var unsafeID = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// replicationID derives a stream-safe id from the snapshot name and the
// source subvolume's UUID: two hosts replicating sources of the same name
// at the same second never share a record.
func replicationID(snapshotName, sourceUUID string) string {
	id := unsafeID.ReplaceAllString(snapshotName, "_")
	if len(id) > 100 {
		id = id[len(id)-100:]
	}
	if u := strings.ReplaceAll(sourceUUID, "-", ""); len(u) >= 8 {
		id += "_" + u[:8]
	}
	return id
}

// takeSnapshot creates the read-only snapshot <dir>/<base>.<UTC time>
// (with -N when that name exists or is recorded).
func takeSnapshot(ctx context.Context, source, dir string, now time.Time, recorded map[string]bool) (btrfs.Info, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return btrfs.Info{}, fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	if err := btrfs.IsBtrfs(dir); err != nil {
		return btrfs.Info{}, driver.Permanent(fmt.Errorf("snapshot directory %s must be on the source's btrfs filesystem: %w", dir, err))
	}
	name := filepath.Base(source) + "." + now.UTC().Format("20060102T150405Z")
	path := filepath.Join(dir, name)
	for i := 2; ; i++ {
		if _, err := os.Lstat(path); os.IsNotExist(err) && !recorded[filepath.Base(path)] {
			break
		}
		path = filepath.Join(dir, fmt.Sprintf("%s-%d", name, i))
	}
	if err := btrfs.Snapshot(ctx, source, path, true); err != nil {
		return btrfs.Info{}, fmt.Errorf("snapshot %s: %w", source, err)
	}
	return btrfs.Inspect(path)
}

// Inventories asks every target's receiver, concurrently, what it holds,
// waiting up to timeout for receivers that are still starting. Targets
// whose receiver does not answer, or answers with an error, are returned
// with the reason instead: they do not hold the others back.
func Inventories(ctx context.Context, nc *nats.Conn, targets []string, timeout time.Duration) (map[string]streams.Inventory, map[string]error) {
	var (
		mu          sync.Mutex
		wg          sync.WaitGroup
		inv         = map[string]streams.Inventory{}
		unreachable = map[string]error{}
	)
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in, err := inventory(ctx, nc, t, timeout)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				unreachable[t] = err
			} else {
				inv[t] = in
			}
		}()
	}
	wg.Wait()
	return inv, unreachable
}

// inventories is Inventories with one more check: a receiver that watches
// for its work in another JetStream domain than this sender's state (a
// receiver at a site node without --js-domain) would never see its work,
// and is reported unreachable with the fix instead.
func (s *Sender) inventories(ctx context.Context, targets []string, timeout time.Duration) (map[string]streams.Inventory, map[string]error) {
	inv, unreachable := Inventories(ctx, s.NC, targets, timeout)
	if len(inv) == 0 || s.JS == nil {
		return inv, unreachable
	}
	info, err := s.JS.AccountInfo(ctx)
	if err != nil {
		return inv, unreachable // the plan reads the state next and says why
	}
	for t, in := range inv {
		if err := sameState(t, in.StateDomain, info.Domain); err != nil {
			delete(inv, t)
			unreachable[t] = err
		}
	}
	return inv, unreachable
}

// sameState explains why the receiver of target, watching for its work in
// JetStream domain theirs, cannot see work from a sender whose state is in
// domain ours. A receiver that names no domain (one too old to say, or on a
// server without domains) is given the benefit of the doubt.
func sameState(target, theirs, ours string) error {
	switch {
	case theirs == "" || theirs == ours:
		return nil
	case ours == "":
		return fmt.Errorf("the receiver of target %s watches for its work in JetStream domain %q, and this sender's JetStream has no domain: give the hub one (`jetstream { domain: hub }` or `snapjet server --domain hub`) and start the receiver with --js-domain hub", target, theirs)
	}
	return fmt.Errorf("the receiver of target %s watches for its work in JetStream domain %q, and this sender's state is in %q: start it with --js-domain %s (or SNAPJET_JS_DOMAIN=%s)", target, theirs, ours, ours, ours)
}

// inventory asks one target's receiver, until it answers or timeout passes.
func inventory(ctx context.Context, nc *nats.Conn, target string, timeout time.Duration) (streams.Inventory, error) {
	deadline := time.Now().Add(timeout)
	b := retry.New(200*time.Millisecond, 2*time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, min(5*time.Second, max(time.Until(deadline), 100*time.Millisecond)))
		msg, err := nc.RequestWithContext(rctx, streams.InventorySubject(target), nil)
		cancel()
		if err == nil {
			// The error header first: a receiver's error reply is not an
			// inventory.
			if e := msg.Header.Get(micro.ErrorHeader); e != "" {
				return streams.Inventory{}, fmt.Errorf("the receiver of target %s answers with an error: %s", target, e)
			}
			var inv streams.Inventory
			if err := json.Unmarshal(msg.Data, &inv); err != nil {
				return streams.Inventory{}, fmt.Errorf("inventory of target %s: %w", target, err)
			}
			return inv, nil
		}
		if ctx.Err() != nil {
			return streams.Inventory{}, ctx.Err()
		}
		if time.Now().After(deadline) {
			return streams.Inventory{}, fmt.Errorf("no receiver answered for %v (%v): start `snapjet receive --target %s DIR` against this NATS server, or check the link to its site", timeout, err, target)
		}
		if err := b.Wait(ctx); err != nil {
			return streams.Inventory{}, err
		}
	}
}

// chooseParent returns the newest read-only snapshot in snaps whose UUID
// the target holds as a received UUID, or a zero Info for a full send.
// Names never count: a target's copy is recognised only by its UUID.
func chooseParent(snaps []btrfs.Info, inv streams.Inventory) btrfs.Info {
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		if !s.ReadOnly || s.UUID.IsZero() {
			continue
		}
		for _, h := range inv.Snapshots {
			if strings.EqualFold(h.ReceivedUUID, s.UUID.String()) {
				return s
			}
		}
	}
	return btrfs.Info{}
}

// groupByParent gives every target its own incremental parent (the newest
// snapshot it holds) and groups the targets that share one: each group is
// one stream and one btrfs send. Groups come in the order of their first
// target's name; targets within a group are sorted.
func groupByParent(snaps []btrfs.Info, inv map[string]streams.Inventory) []coordinator.Group {
	names := make([]string, 0, len(inv))
	for t := range inv {
		names = append(names, t)
	}
	sort.Strings(names)
	var groups []coordinator.Group
	index := map[string]int{}
	for _, t := range names {
		p := chooseParent(snaps, inv[t])
		key := p.UUID.String()
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			g := coordinator.Group{}
			if !p.UUID.IsZero() {
				g.Parent, g.ParentUUID = p.Path, p.UUID.String()
			}
			groups = append(groups, g)
		}
		groups[i].Targets = append(groups[i].Targets, t)
	}
	return groups
}

// plan asks the targets what they hold, takes the snapshot and stores one
// record per group of targets sharing a parent. Targets whose receiver does
// not answer are recorded as failed with the reason, in the first record,
// so that a later run retries them; the others go ahead.
func (s *Sender) plan(ctx context.Context, src string, srcInfo btrfs.Info, opt Options) ([]*coordinator.Replication, error) {
	chunk := opt.ChunkSize
	if chunk <= 0 {
		chunk = DefaultChunkSize
	}
	if limit := int(s.NC.MaxPayload()) - 8<<10; chunk > limit {
		s.Log.Info("chunk size lowered to the server's max payload", "chunk_size", limit)
		chunk = limit
	}
	chunk = min(chunk, streams.MaxChunk)
	window := opt.Window
	if window <= 0 {
		window = DefaultWindow
	}
	window = max(window, 8*int64(chunk))
	inv, unreachable := s.inventories(ctx, opt.Targets, opt.InventoryTimeout)
	if len(inv) == 0 {
		return nil, fmt.Errorf("no target can receive: %w", joinTargets(unreachable))
	}
	snaps, err := btrfs.List(opt.SnapshotDir)
	if err != nil {
		return nil, err
	}
	if err := s.catchUp(ctx, src, srcInfo, opt, snaps, btrfs.UUID{}, inv, chunk, window); err != nil {
		return nil, err
	}
	groups := groupByParent(snaps, inv)
	// A name whose snapshot retention deleted may still have a record
	// (same second, fast runs): reusing it would collide with its id.
	all, err := s.Coord.Store().List(ctx)
	if err != nil {
		return nil, err
	}
	recorded := map[string]bool{}
	for _, r := range all {
		if r.SourceUUID == srcInfo.UUID.String() {
			recorded[r.SnapshotName] = true
		}
	}
	now := time.Now
	if opt.Now != nil {
		now = opt.Now
	}
	snap, err := takeSnapshot(ctx, src, opt.SnapshotDir, now(), recorded)
	if err != nil {
		return nil, err
	}
	recs, err := s.createRecords(ctx, src, srcInfo, snap, replicationID(filepath.Base(snap.Path), srcInfo.UUID.String()), groups, inv, unreachable, chunk, window)
	if err != nil {
		return nil, err
	}
	for t, err := range unreachable {
		s.Log.Warn("target cannot receive now; the others go ahead and a later run retries it", "target", t, "error", err)
	}
	return recs, nil
}

// createRecords stores one record of snap per group of targets, the first
// with id base and the others split off it, each target at the site its
// inventory names; targets in unreachable are recorded failed in the first.
func (s *Sender) createRecords(ctx context.Context, src string, srcInfo, snap btrfs.Info, base string, groups []coordinator.Group,
	inv map[string]streams.Inventory, unreachable map[string]error, chunk int, window int64) ([]*coordinator.Replication, error) {
	var recs []*coordinator.Replication
	for i, g := range groups {
		r := &coordinator.Replication{
			ID:           base,
			Source:       src,
			SourceUUID:   srcInfo.UUID.String(),
			Snapshot:     snap.Path,
			SnapshotName: filepath.Base(snap.Path),
			SnapshotUUID: snap.UUID.String(),
			Parent:       g.Parent,
			ParentUUID:   g.ParentUUID,
			ChunkSize:    chunk,
			Window:       window,
			Decodes:      streams.CommonDecodes(inv, g.Targets),
			Targets:      map[string]*coordinator.Target{},
		}
		if i > 0 {
			r.ID = coordinator.SplitID(base, g.Targets[0])
		}
		r.EstimatedBytes = s.streamSize(ctx, snap.Path, g.Parent)
		for _, t := range g.Targets {
			r.Targets[t] = &coordinator.Target{State: coordinator.TPending, Site: inv[t].Site}
		}
		if i == 0 {
			for t, err := range unreachable {
				r.Targets[t] = &coordinator.Target{State: coordinator.TFailed, Error: err.Error()}
			}
		}
		if err := s.Coord.Create(ctx, r); err != nil {
			return nil, err
		}
		s.Log.Info("replication planned", "replication", r.ID, "snapshot", r.Snapshot, "snapshot_uuid", r.SnapshotUUID,
			"parent", r.Parent, "targets", g.Targets)
		recs = append(recs, r)
	}
	return recs, nil
}

// joinTargets is one error naming every target and its reason, in order.
func joinTargets(errs map[string]error) error {
	names := make([]string, 0, len(errs))
	for t := range errs {
		names = append(names, t)
	}
	sort.Strings(names)
	var all []error
	for _, t := range names {
		all = append(all, fmt.Errorf("target %s: %w", t, errs[t]))
	}
	return errors.Join(all...)
}
