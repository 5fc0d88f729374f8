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
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// CheckSource resolves SOURCE to an absolute path and explains, in terms an
// operator can act on, why it cannot be replicated.
func CheckSource(source string) (string, btrfs.Info, error) {
	abs, err := filepath.Abs(source)
	if err != nil {
		return "", btrfs.Info{}, coordinator.Permanent(fmt.Errorf("source %s: %w", source, err))
	}
	info, err := btrfs.Inspect(abs)
	switch {
	case errors.Is(err, btrfs.ErrNotFound):
		return "", info, coordinator.Permanent(fmt.Errorf("source %s does not exist: give the path of a btrfs subvolume", abs))
	case errors.Is(err, btrfs.ErrNotBtrfs):
		return "", info, coordinator.Permanent(fmt.Errorf("source %s is not on a btrfs filesystem: snapjet replicates btrfs subvolumes", abs))
	case errors.Is(err, btrfs.ErrNotSubvolume):
		return "", info, coordinator.Permanent(fmt.Errorf("source %s is not a btrfs subvolume: point at a subvolume, or make one with `btrfs subvolume create`", abs))
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

// replicationID derives a stream-safe id from the snapshot name.
func replicationID(snapshotName string) string {
	id := unsafeID.ReplaceAllString(snapshotName, "_")
	if len(id) > 120 {
		id = id[len(id)-120:]
	}
	return id
}

// takeSnapshot creates the read-only snapshot <dir>/<base>.<UTC time>.
func takeSnapshot(ctx context.Context, source, dir string) (btrfs.Info, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return btrfs.Info{}, fmt.Errorf("snapshot directory %s: %w", dir, err)
	}
	if err := btrfs.IsBtrfs(dir); err != nil {
		return btrfs.Info{}, coordinator.Permanent(fmt.Errorf("snapshot directory %s must be on the source's btrfs filesystem: %w", dir, err))
	}
	name := filepath.Base(source) + "." + time.Now().UTC().Format("20060102T150405Z")
	path := filepath.Join(dir, name)
	for i := 2; ; i++ {
		if _, err := os.Lstat(path); os.IsNotExist(err) {
			break
		}
		path = filepath.Join(dir, fmt.Sprintf("%s-%d", name, i))
	}
	if err := btrfs.Snapshot(ctx, source, path, true); err != nil {
		return btrfs.Info{}, fmt.Errorf("snapshot %s: %w", source, err)
	}
	return btrfs.Inspect(path)
}

// Inventories asks every target's receiver what it holds, waiting up to
// timeout for receivers that are still starting.
func Inventories(ctx context.Context, nc *nats.Conn, targets []string, timeout time.Duration) (map[string]streams.Inventory, error) {
	out := map[string]streams.Inventory{}
	deadline := time.Now().Add(timeout)
	for _, t := range targets {
		for {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			msg, err := nc.RequestWithContext(rctx, streams.InventorySubject(t), nil)
			cancel()
			if err == nil {
				var inv streams.Inventory
				if err := json.Unmarshal(msg.Data, &inv); err != nil {
					return nil, fmt.Errorf("inventory of target %s: %w", t, err)
				}
				if msg.Header.Get("Nats-Service-Error") != "" {
					return nil, coordinator.Permanent(fmt.Errorf("target %s: %s", t, msg.Header.Get("Nats-Service-Error")))
				}
				out[t] = inv
				break
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if time.Now().After(deadline) {
				return nil, coordinator.Permanent(fmt.Errorf("no receiver answers for target %s (%v): start `snapjet receive --target %s DIR` against this NATS server", t, err, t))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return out, nil
}

// chooseParent returns the newest read-only snapshot in snaps whose UUID
// every target holds as a received UUID, or a zero Info for a full send.
// Names never count: a target's copy is recognised only by its UUID.
func chooseParent(snaps []btrfs.Info, inv map[string]streams.Inventory) btrfs.Info {
	for i := len(snaps) - 1; i >= 0; i-- {
		s := snaps[i]
		if !s.ReadOnly || s.UUID.IsZero() {
			continue
		}
		everywhere := len(inv) > 0
		for _, in := range inv {
			held := false
			for _, h := range in.Snapshots {
				if strings.EqualFold(h.ReceivedUUID, s.UUID.String()) {
					held = true
					break
				}
			}
			everywhere = everywhere && held
		}
		if everywhere {
			return s
		}
	}
	return btrfs.Info{}
}
