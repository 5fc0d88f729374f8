package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// statusDoc is `snapjet status --json` as the CLI contract defines it; only
// the fields the checks need. The runner reads the CLI, not the packages,
// so it checks what an operator sees.
type statusDoc struct {
	Replications []replication `json:"replications"`
}

type replication struct {
	ID           string                  `json:"id"`
	Snapshot     string                  `json:"snapshot"`
	SnapshotName string                  `json:"snapshot_name"`
	SnapshotUUID string                  `json:"snapshot_uuid"`
	State        string                  `json:"state"`
	Attempt      int                     `json:"attempt"`
	Error        string                  `json:"error"`
	Targets      map[string]targetStatus `json:"targets"`
}

type targetStatus struct {
	State        string `json:"state"`
	BytesApplied int64  `json:"bytes_applied"`
	Path         string `json:"path"`
	Error        string `json:"error"`
}

func (r replication) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s attempt %d", r.SnapshotName, r.State, r.Attempt)
	if r.Error != "" {
		fmt.Fprintf(&b, " error %q", r.Error)
	}
	for name, t := range r.Targets {
		fmt.Fprintf(&b, "; %s %s", name, t.State)
		if t.Error != "" {
			fmt.Fprintf(&b, " (%s)", t.Error)
		}
	}
	return b.String()
}

// readStatus runs `snapjet status --json --server url`, bounded.
func readStatus(ctx context.Context, bin, url string) (statusDoc, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "status", "--json", "--server", url)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		return statusDoc{}, fmt.Errorf("snapjet status: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var doc statusDoc
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		return statusDoc{}, fmt.Errorf("snapjet status: decode: %w", err)
	}
	return doc, nil
}
