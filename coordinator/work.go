package coordinator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Work is what a receiver needs to know of one replication addressed to its
// target. The coordinator keeps one per target under work.<target>.<id>,
// next to the record, so that a receiver reads and watches only its own
// keys: a site's credentials need no access to other targets' records, and
// a receiver is not woken by every other target's progress.
type Work struct {
	ID           string      `json:"id"`
	Target       string      `json:"target"`
	Source       string      `json:"source"` // the source path on the sending host, for labels
	State        State       `json:"state"`
	Attempt      int         `json:"attempt"`
	TargetState  TargetState `json:"target_state"`
	SnapshotName string      `json:"snapshot_name"`
	SnapshotUUID string      `json:"snapshot_uuid"`
	ChunkSize    int         `json:"chunk_size"`
	Window       int64       `json:"window"`
	// Site is the JetStream domain whose copy of the stream the target
	// consumes; empty for the stream itself, in the state's domain.
	Site string `json:"site,omitempty"`
	// Error is why the target failed or was last sent back, and only the
	// target's own reason: the replication's may name another target,
	// which a site must not learn.
	Error string `json:"error,omitempty"`
}

// Wanted reports whether w asks its target to receive now.
func (w *Work) Wanted() bool {
	return !w.TargetState.Terminal() && (w.State == Sending || w.State == Sent)
}

// Over reports whether w shows an attempt over for its target: the
// replication or the target finished, or another attempt began.
func (w *Work) Over(attempt int) bool {
	return w.State.Terminal() || w.TargetState.Terminal() || w.Attempt != attempt
}

// workOf is target's view of r.
func workOf(r *Replication, target string) *Work {
	return &Work{ID: r.ID, Target: target, Source: r.Source, State: r.State, Attempt: r.Attempt, TargetState: r.Targets[target].State,
		SnapshotName: r.SnapshotName, SnapshotUUID: r.SnapshotUUID, ChunkSize: r.ChunkSize, Window: r.Window,
		Site: r.Targets[target].Site, Error: r.Targets[target].Error}
}

func workKey(target, id string) string { return "work." + target + "." + id }

// publishWork writes the views of r whose content changed since this store
// last wrote them. A view that cannot be written now stays unwritten in the
// cache and is written by the next call (the watchdog calls SyncWork every
// few seconds), so a failure here never fails the record's update, which
// has already happened and must not be applied twice.
func (s *Store) publishWork(ctx context.Context, r *Replication) error {
	var errs []error
	for _, name := range SortedNames(r.Targets) {
		k := workKey(name, r.ID)
		b, err := json.Marshal(workOf(r, name))
		if err != nil {
			return err
		}
		s.mu.Lock()
		same := bytes.Equal(s.written[k], b)
		s.mu.Unlock()
		if same {
			continue
		}
		if _, err := s.kv.Put(ctx, k, b); err != nil {
			errs = append(errs, fmt.Errorf("publish work of %s for %s: %w", r.ID, name, err))
			continue
		}
		s.mu.Lock()
		if r.State.Terminal() {
			delete(s.written, k) // final: nothing more to compare with
		} else {
			s.written[k] = b
		}
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// workSyncer is a Records store that keeps work views (the JetStream one).
type workSyncer interface {
	SyncWork(ctx context.Context, r *Replication) error
}

// SyncWork writes what publishWork could not write before. The coordinator
// calls it with every record it re-reads, so a lost write is repaired
// within seconds.
func (s *Store) SyncWork(ctx context.Context, r *Replication) error {
	return s.publishWork(ctx, r)
}

// deleteWork removes the views of r.
func (s *Store) deleteWork(ctx context.Context, r *Replication) error {
	for name := range r.Targets {
		k := workKey(name, r.ID)
		if err := s.kv.Delete(ctx, k); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("delete work of %s for %s: %w", r.ID, name, err)
		}
		s.mu.Lock()
		delete(s.written, k)
		s.mu.Unlock()
	}
	return nil
}

// Work returns target's view of replication id; ErrNotFound when there is
// none.
func (s *Store) Work(ctx context.Context, target, id string) (*Work, error) {
	e, err := s.kv.Get(ctx, workKey(target, id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("work of %s for %s: %w", id, target, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read work of %s for %s: %w", id, target, err)
	}
	return decodeWork(e.Value())
}

// Listed is a target's view of one replication and when the coordinator
// last changed it.
type Listed struct {
	*Work
	Updated time.Time `json:"updated"`
}

// ListWork returns target's views, the least recently changed first. It
// reads only target's own keys, which is all a client at an isolated site
// may read of the state.
func (s *Store) ListWork(ctx context.Context, target string) ([]Listed, error) {
	keys, err := s.kv.ListKeysFiltered(ctx, "work."+target+".>")
	if err != nil {
		return nil, fmt.Errorf("list work of %s: %w", target, err)
	}
	var out []Listed
	for k := range keys.Keys() {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", k, err)
		}
		w, err := decodeWork(e.Value())
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		out = append(out, Listed{Work: w, Updated: e.Created()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Updated.Before(out[j].Updated) })
	return out, nil
}

// WatchWork delivers target's views as they change, starting with the
// current ones, until ctx ends; like Watch, it is rebuilt on a reconnect.
func (s *Store) WatchWork(ctx context.Context, target string) (<-chan *Work, error) {
	return watchKeys(ctx, s, "work."+target+".>", decodeWork)
}

func decodeWork(b []byte) (*Work, error) {
	var w Work
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("decode work: %w", err)
	}
	if w.ID == "" || strings.ContainsAny(w.ID, ".*> ") {
		return nil, fmt.Errorf("decode work: bad replication id %q", w.ID)
	}
	return &w, nil
}
