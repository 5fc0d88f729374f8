package coordinator

import (
	"fmt"
	"time"
)

// Replication is the stored state of one replication: one read-only source
// snapshot sent to a set of targets. Its JSON is what `snapjet status
// --json` prints.
type Replication struct {
	ID           string `json:"id"`
	Source       string `json:"source"`
	SourceUUID   string `json:"source_uuid"`
	Snapshot     string `json:"snapshot"`
	SnapshotName string `json:"snapshot_name"`
	SnapshotUUID string `json:"snapshot_uuid"`
	Parent       string `json:"parent,omitempty"`
	ParentUUID   string `json:"parent_uuid"`
	State        State  `json:"state"`
	Attempt      int    `json:"attempt"`
	// RunStart is the first attempt of the current run; a retry of a failed
	// replication starts a new run with a fresh attempt budget.
	RunStart  int   `json:"run_start"`
	ChunkSize int   `json:"chunk_size"`
	Window    int64 `json:"window"`
	// Progress of the current attempt's send.
	ChunksSent  int64  `json:"chunks_sent"`
	BytesSent   int64  `json:"bytes_sent"`
	WireBytes   int64  `json:"wire_bytes"`
	TotalBytes  int64  `json:"total_bytes"`
	TotalChunks int64  `json:"total_chunks"`
	Digest      string `json:"digest,omitempty"`
	// EstimatedBytes is the apparent size of the snapshot, for an ETA.
	EstimatedBytes int64              `json:"estimated_bytes,omitempty"`
	Error          string             `json:"error"`
	Targets        map[string]*Target `json:"targets"`
	Created        time.Time          `json:"created"`
	Updated        time.Time          `json:"updated"`
}

// Target is one target's part of a replication.
type Target struct {
	State             TargetState `json:"state"`
	BytesApplied      int64       `json:"bytes_applied"`
	ChunksApplied     int64       `json:"chunks_applied"`
	RedeliveredChunks int64       `json:"redelivered_chunks"`
	Path              string      `json:"path,omitempty"`
	Error             string      `json:"error"`
}

// setState moves the replication, refusing what the state machine forbids.
func (r *Replication) setState(to State) error {
	if !allowed(replTransitions, r.State, to) {
		return &ErrTransition{What: "replication " + r.ID, From: string(r.State), To: string(to)}
	}
	r.State = to
	return nil
}

// setTarget moves one target, refusing what the state machine forbids.
func (r *Replication) setTarget(name string, to TargetState, reason string) error {
	t, ok := r.Targets[name]
	if !ok {
		return fmt.Errorf("replication %s has no target %q", r.ID, name)
	}
	if !allowed(targetTransitions, t.State, to) {
		return &ErrTransition{What: "target " + name + " of " + r.ID, From: string(t.State), To: string(to)}
	}
	t.State = to
	if reason != "" || to == TPending || to == TCommitted {
		t.Error = reason
	}
	return nil
}

// Active lists the targets that still take part in the current attempt.
func (r *Replication) Active() []string {
	var out []string
	for name, t := range r.Targets {
		if !t.State.Terminal() {
			out = append(out, name)
		}
	}
	return out
}

// settle derives the replication's end state once every target is terminal.
func (r *Replication) settle() error {
	if len(r.Active()) > 0 || r.State.Terminal() {
		return nil
	}
	for name, t := range r.Targets {
		if t.State == TFailed {
			r.Error = fmt.Sprintf("target %s failed: %s", name, t.Error)
			return r.setState(Failed)
		}
	}
	r.Error = ""
	return r.setState(Done)
}

// newAttempt discards the current attempt: every target that has not
// committed or failed starts again from the first chunk.
func (r *Replication) newAttempt(reason string) error {
	if err := r.setState(Planned); err != nil {
		return err
	}
	r.Attempt++
	r.ChunksSent, r.BytesSent, r.WireBytes, r.TotalBytes, r.TotalChunks, r.Digest = 0, 0, 0, 0, 0, ""
	r.Error = reason
	for name, t := range r.Targets {
		if t.State == TCommitted || t.State == TFailed {
			continue
		}
		if err := r.setTarget(name, TPending, ""); err != nil {
			return err
		}
		t.BytesApplied, t.ChunksApplied, t.RedeliveredChunks = 0, 0, 0
	}
	return nil
}
