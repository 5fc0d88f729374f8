package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// statusDoc is `snapjet status --json` as the CLI contract defines it.
type statusDoc struct {
	Replications []replication `json:"replications"`
}

type replication struct {
	ID           string                  `json:"id"`
	Source       string                  `json:"source"`
	SourceUUID   string                  `json:"source_uuid"`
	Snapshot     string                  `json:"snapshot"`
	SnapshotName string                  `json:"snapshot_name"`
	SnapshotUUID string                  `json:"snapshot_uuid"`
	ParentUUID   string                  `json:"parent_uuid"`
	Origin       string                  `json:"origin"`
	State        string                  `json:"state"`
	Attempt      int                     `json:"attempt"`
	ChunksSent   int64                   `json:"chunks_sent"`
	BytesSent    int64                   `json:"bytes_sent"`
	WireBytes    int64                   `json:"wire_bytes"`
	TotalBytes   int64                   `json:"total_bytes"`
	TotalChunks  int64                   `json:"total_chunks"`
	Estimated    int64                   `json:"estimated_bytes"`
	Decodes      []string                `json:"decodes"`
	Error        string                  `json:"error"`
	Targets      map[string]targetStatus `json:"targets"`
}

type targetStatus struct {
	State             string `json:"state"`
	BytesApplied      int64  `json:"bytes_applied"`
	ChunksApplied     int64  `json:"chunks_applied"`
	RedeliveredChunks int64  `json:"redelivered_chunks"`
	BusyMs            int64  `json:"busy_ms"`
	ElapsedMs         int64  `json:"elapsed_ms"`
	Path              string `json:"path"`
	Error             string `json:"error"`
	Attempts          int    `json:"attempts"`
	MovedTo           string `json:"moved_to"`
}

func (r replication) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s state=%s attempt=%d parent=%q sent=%d chunks/%d bytes wire=%d total=%d chunks/%d bytes",
		r.ID, r.State, r.Attempt, r.ParentUUID, r.ChunksSent, r.BytesSent, r.WireBytes, r.TotalChunks, r.TotalBytes)
	if r.Error != "" {
		fmt.Fprintf(&b, " error=%q", r.Error)
	}
	for name, ts := range r.Targets {
		fmt.Fprintf(&b, "; %s: %s applied=%d chunks/%d bytes redelivered=%d", name, ts.State, ts.ChunksApplied, ts.BytesApplied, ts.RedeliveredChunks)
		if ts.Error != "" {
			fmt.Fprintf(&b, " error=%q", ts.Error)
		}
	}
	return b.String()
}

// target finds the name and state of the target whose directory is dir.
// replicate derives target names from paths (the directory's name and a
// suffix), and only a committed target has a path, so this matches the
// path first, then the name; a lone target is the one.
func (r replication) target(dir string) (string, targetStatus, bool) {
	base := filepath.Base(dir)
	for name, ts := range r.Targets {
		if ts.Path != "" && filepath.Dir(ts.Path) == dir {
			return name, ts, true
		}
	}
	if ts, ok := r.Targets[base]; ok {
		return base, ts, true
	}
	var derived []string
	for name := range r.Targets {
		if strings.HasPrefix(name, base+"-") {
			derived = append(derived, name)
		}
	}
	if len(derived) == 1 {
		return derived[0], r.Targets[derived[0]], true
	}
	if len(r.Targets) == 1 {
		for name, ts := range r.Targets {
			return name, ts, true
		}
	}
	return "", targetStatus{}, false
}

// bySnapshot returns the replication of the source snapshot named name.
func (d statusDoc) bySnapshot(name string) (replication, bool) {
	for _, r := range d.Replications {
		if r.SnapshotName == name {
			return r, true
		}
	}
	return replication{}, false
}

// outcome finds where target ended for snapshot name: the record of that
// snapshot it did not move out of.
func (d statusDoc) outcome(name, target string) (replication, targetStatus, bool) {
	for _, r := range d.Replications {
		if ts, ok := r.Targets[target]; ok && r.SnapshotName == name && ts.State != "moved" {
			return r, ts, true
		}
	}
	return replication{}, targetStatus{}, false
}

// newest returns the replication whose snapshot name sorts last; snapshot
// names end in a UTC timestamp, so that is the newest one.
func (d statusDoc) newest() (replication, bool) {
	var best replication
	for _, r := range d.Replications {
		if r.SnapshotName > best.SnapshotName {
			best = r
		}
	}
	return best, best.ID != ""
}

// readStatus runs `snapjet status --json` with the given server selection
// (--server URL, or --store DIR). It does not log: it is polled often.
func readStatus(ctx context.Context, selection ...string) (statusDoc, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	args := append([]string{"status", "--json"}, selection...)
	cmd := exec.CommandContext(ctx, snapjetBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return statusDoc{}, fmt.Errorf("snapjet %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	var doc statusDoc
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		return statusDoc{}, fmt.Errorf("snapjet %s: decode %q: %w", strings.Join(args, " "), stdout.String(), err)
	}
	return doc, nil
}

// mustStatus is readStatus for a point where status must work.
func mustStatus(t *testing.T, selection ...string) statusDoc {
	t.Helper()
	doc, err := readStatus(t.Context(), selection...)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	for _, r := range doc.Replications {
		t.Logf("status: %v", r)
	}
	return doc
}

// waitForReplication polls until reached holds for the newest replication
// and returns that replication. Status comes from a subprocess, so once a
// replication is under way it is refreshed only once a second (as often as
// snapjet updates it); reached runs every poll, which lets a JetStream
// probe stop a transfer at an exact point. It fails the test if p exits first: then the moment the scenario
// needs was never observed.
func waitForReplication(t *testing.T, p *proc, live func(context.Context) (statusDoc, error), what string, reached func(context.Context, replication) bool) replication {
	t.Helper()
	var last replication
	var refreshed, logged time.Time
	waitUntil(t, p, transferTimeout, what, func(ctx context.Context) bool {
		// Until a replication is under way every poll looks for it; after
		// that the view only needs its progress now and then.
		active := last.ID != "" && last.State != "done" && last.State != "failed"
		if !active || time.Since(refreshed) >= time.Second {
			refreshed = time.Now()
			// The server may be starting or restarting: keep the last view.
			if doc, err := live(ctx); err == nil {
				if rep, ok := doc.newest(); ok {
					last = rep
				}
			}
		}
		if last.ID == "" {
			return false
		}
		if time.Since(logged) > 3*time.Second {
			t.Logf("progress: %v", last)
			logged = time.Now()
		}
		return reached(ctx, last)
	})
	t.Logf("reached %s: %v", what, last)
	return last
}
