package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/retry"
	"github.com/snapjet/snapjet/streams"
)

// Errors of a Records store, matched with errors.Is.
var (
	// ErrNotFound is returned for an unknown replication id.
	ErrNotFound = errors.New("no such replication")
	// ErrExists is returned by Create for an id that is taken.
	ErrExists = errors.New("replication exists")
	// ErrConflict is returned by Update when the record changed since the
	// revision the caller read: read it again and decide again.
	ErrConflict = errors.New("replication record changed meanwhile")
)

// Records is where replication records live. The contract, which
// records_test.go checks against every implementation (the JetStream KV
// store and the in-memory one of coordtest):
//   - Get returns a record and its revision; ErrNotFound for an unknown id.
//   - Create stores a new record and returns its revision; ErrExists when
//     the id is taken.
//   - Update replaces a record only if rev is still its revision, and
//     returns the new one; ErrConflict otherwise, ErrNotFound when gone.
//   - Delete removes a record; deleting an unknown id is no error.
//   - List returns every record, oldest (by Created) first.
//   - Watch delivers the current records, then every record as it is
//     created or updated (not deletions), until ctx ends; then the channel
//     closes. A consumer may see a record more than once.
//
// Only a Coordinator writes; anyone may read.
type Records interface {
	Get(ctx context.Context, id string) (*Replication, uint64, error)
	Create(ctx context.Context, r *Replication) (uint64, error)
	Update(ctx context.Context, r *Replication, rev uint64) (uint64, error)
	Delete(ctx context.Context, id string) error
	List(ctx context.Context) ([]*Replication, error)
	Watch(ctx context.Context) (<-chan *Replication, error)
}

// Store keeps replication records in the JetStream KV bucket: the
// Records adapter for JetStream.
type Store struct {
	kv jetstream.KeyValue
	nc *nats.Conn
}

func key(id string) string { return "repl." + id }

// OpenStore binds the state bucket, creating it on first use.
func OpenStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      streams.StateBucket,
		Description: "snapjet replication state (one key per replication: repl.<id>)",
		History:     5,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("open state bucket %s: %w", streams.StateBucket, err)
	}
	return &Store{kv: kv, nc: js.Conn()}, nil
}

// Get returns a replication and its KV revision.
func (s *Store) Get(ctx context.Context, id string) (*Replication, uint64, error) {
	e, err := s.kv.Get(ctx, key(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("replication %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read replication %s: %w", id, err)
	}
	r, err := decode(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("read replication %s: %w", id, err)
	}
	return r, e.Revision(), nil
}

// Create stores a new record.
func (s *Store) Create(ctx context.Context, r *Replication) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Create(ctx, key(r.ID), b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("create replication %s: %w", r.ID, ErrExists)
	}
	if err != nil {
		return 0, fmt.Errorf("create replication %s: %w", r.ID, err)
	}
	return rev, nil
}

// Update replaces a record with compare-and-set on its revision.
func (s *Store) Update(ctx context.Context, r *Replication, rev uint64) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	nrev, err := s.kv.Update(ctx, key(r.ID), b, rev)
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return nrev, nil
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
		if _, _, gerr := s.Get(ctx, r.ID); errors.Is(gerr, ErrNotFound) {
			return 0, gerr
		}
		return 0, fmt.Errorf("store replication %s: %w", r.ID, ErrConflict)
	}
	return 0, fmt.Errorf("store replication %s: %w", r.ID, err)
}

// Delete removes a record.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := s.kv.Delete(ctx, key(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete replication %s: %w", id, err)
	}
	return nil
}

// List returns every replication, oldest first.
func (s *Store) List(ctx context.Context) ([]*Replication, error) {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list replications: %w", err)
	}
	var out []*Replication
	for k := range keys.Keys() {
		if len(k) < 6 || k[:5] != "repl." {
			continue
		}
		r, _, err := s.Get(ctx, k[5:])
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Watch delivers every replication as it changes, starting with the current
// ones. The channel closes when ctx ends. After a reconnect the watch is
// rebuilt at once, delivering the current records again: the client would
// otherwise notice a watch lost in a server restart only after two missed
// heartbeats (10–18 s), and receivers would start late.
func (s *Store) Watch(ctx context.Context) (<-chan *Replication, error) {
	w, err := s.kv.Watch(ctx, "repl.>")
	if err != nil {
		return nil, fmt.Errorf("watch replications: %w", err)
	}
	reconnected := s.nc.StatusChanged(nats.CONNECTED)
	out := make(chan *Replication, 16)
	go func() {
		defer close(out)
		defer s.nc.RemoveStatusListener(reconnected)
		defer func() {
			if w != nil {
				w.Stop()
			}
		}()
		updates := w.Updates()
		for {
			select {
			case <-ctx.Done():
				return
			case <-reconnected:
				w, updates = s.rewatch(ctx, w)
			case e, ok := <-updates:
				if !ok {
					w, updates = s.rewatch(ctx, w)
					continue
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				r, err := decode(e.Value())
				if err != nil {
					continue
				}
				select {
				case out <- r:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// rewatch replaces w with a new watch, trying until it succeeds or ctx
// ends (then both results are nil; the caller returns on ctx).
func (s *Store) rewatch(ctx context.Context, w jetstream.KeyWatcher) (jetstream.KeyWatcher, <-chan jetstream.KeyValueEntry) {
	if w != nil {
		_ = w.Stop()
	}
	b := retry.New(250*time.Millisecond, 5*time.Second)
	for {
		nw, err := s.kv.Watch(ctx, "repl.>")
		if err == nil {
			return nw, nw.Updates()
		}
		if b.Wait(ctx) != nil {
			return nil, nil
		}
	}
}

func decode(b []byte) (*Replication, error) {
	var r Replication
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	if r.Targets == nil {
		r.Targets = map[string]*Target{}
	}
	return &r, nil
}
