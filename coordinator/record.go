package coordinator

import (
	"fmt"
	"sort"
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
	// Origin is the record this one was split from (a target that needed a
	// stream of its own), empty for a planned one.
	Origin  string `json:"origin,omitempty"`
	State   State  `json:"state"`
	Attempt int    `json:"attempt"`
	// ChunkSize and Window are fixed for the record's life: a restarted
	// sender must cut the stream exactly as before.
	ChunkSize int   `json:"chunk_size"`
	Window    int64 `json:"window"`
	// Decodes is the optional chunk encodings every target announced it
	// reads when the record was planned (streams.CommonDecodes): the
	// sender uses no other. A split record keeps its origin's.
	Decodes []string `json:"decodes,omitempty"`
	// Progress of the current attempt's send.
	ChunksSent  int64  `json:"chunks_sent"`
	BytesSent   int64  `json:"bytes_sent"`
	WireBytes   int64  `json:"wire_bytes"`
	TotalBytes  int64  `json:"total_bytes"`
	TotalChunks int64  `json:"total_chunks"`
	Digest      string `json:"digest,omitempty"`
	// EstimatedBytes is what the send stream is expected to carry (see
	// btrfs.DataSizeOf), for a progress bar and an ETA; 0 when unknown.
	EstimatedBytes int64              `json:"estimated_bytes,omitempty"`
	Error          string             `json:"error"`
	Targets        map[string]*Target `json:"targets"`
	Created        time.Time          `json:"created"`
	Updated        time.Time          `json:"updated"`
}

// Target is one target's part of a replication.
type Target struct {
	State TargetState `json:"state"`
	// Attempts counts this target's attempts in the current run (replays
	// of the stream included); past the coordinator's budget it fails alone.
	Attempts int    `json:"attempts"`
	MovedTo  string `json:"moved_to,omitempty"`
	// Site is the JetStream domain of the site node the target's receiver
	// is at, when it is not the sender's: the target consumes the site's
	// copy of the stream. Empty for a target that consumes the stream.
	Site              string `json:"site,omitempty"`
	BytesApplied      int64  `json:"bytes_applied"`
	ChunksApplied     int64  `json:"chunks_applied"`
	RedeliveredChunks int64  `json:"redelivered_chunks"`
	// BusyMs and ElapsedMs are the latest report's (streams.Report): unlike
	// the counters above they start again with a new receiver process.
	BusyMs    int64  `json:"busy_ms,omitempty"`
	ElapsedMs int64  `json:"elapsed_ms,omitempty"`
	Path      string `json:"path,omitempty"`
	Error     string `json:"error"`
}

// resetCounters starts the target's counters again for a new attempt or a
// replay of the stream.
func (t *Target) resetCounters() {
	t.BytesApplied, t.ChunksApplied, t.RedeliveredChunks, t.BusyMs, t.ElapsedMs = 0, 0, 0, 0, 0
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
	if reason != "" || to == TPending || to == TCommitted || to == TMoved {
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

// Dests places names: each with the site its receiver reported.
func (r *Replication) Dests(names []string) []Dest {
	out := make([]Dest, 0, len(names))
	for _, n := range names {
		d := Dest{Target: n}
		if t := r.Targets[n]; t != nil {
			d.Site = t.Site
		}
		out = append(out, d)
	}
	return out
}

// dest places one target.
func (r *Replication) dest(name string) Dest { return r.Dests([]string{name})[0] }

// settle derives the replication's end state once every target is terminal.
// Moved targets are settled in their own record.
func (r *Replication) settle() error {
	if len(r.Active()) > 0 || r.State.Terminal() {
		return nil
	}
	for _, name := range SortedNames(r.Targets) {
		if t := r.Targets[name]; t.State == TFailed {
			r.Error = fmt.Sprintf("target %s failed: %s", name, t.Error)
			return r.setState(Failed)
		}
	}
	r.Error = ""
	return r.setState(Done)
}

// newAttempt discards the current attempt: every target that is still
// active starts again from the first chunk, and spends one of its attempts.
func (r *Replication) newAttempt(reason string) error {
	if err := r.setState(Planned); err != nil {
		return err
	}
	r.Attempt++
	r.ChunksSent, r.BytesSent, r.WireBytes, r.TotalBytes, r.TotalChunks, r.Digest = 0, 0, 0, 0, 0, ""
	r.Error = reason
	for _, name := range r.Active() {
		t := r.Targets[name]
		if err := r.setTarget(name, TPending, ""); err != nil {
			return err
		}
		t.Attempts++
		t.resetCounters()
	}
	return nil
}

// exhausted fails the active targets that spent their attempt budget, with
// reason. It reports whether any target is still active.
func (r *Replication) exhausted(budget int, reason string) (bool, error) {
	for _, name := range r.Active() {
		if t := r.Targets[name]; t.Attempts >= budget {
			if err := r.setTarget(name, TFailed, fmt.Sprintf("gave up after %d attempts: %s", t.Attempts, reason)); err != nil {
				return false, err
			}
		}
	}
	if len(r.Active()) > 0 {
		return true, nil
	}
	if err := r.settle(); err != nil {
		return false, err
	}
	return false, nil
}

// SortedNames returns target names in a stable order, for logs and output.
func SortedNames(m map[string]*Target) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
