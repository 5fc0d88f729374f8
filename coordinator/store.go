package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
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
	kv  jetstream.KeyValue
	nc  *nats.Conn
	log *slog.Logger

	mu      sync.Mutex
	written map[string][]byte // the work views last written, by key
}

func key(id string) string { return "repl." + id }

// stateBucket is the configuration of the state bucket.
var stateBucket = jetstream.KeyValueConfig{
	Bucket:      streams.StateBucket,
	Description: "snapjet replication state: repl.<id> (records), work.<target>.<id> (what each receiver needs), lease.<source uuid>",
	History:     5,
	Storage:     jetstream.FileStorage,
}

// OpenStore binds the state bucket for its writer, the coordinator,
// creating it on first use and bringing its configuration up to date.
func OpenStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, stateBucket)
	if err != nil {
		return nil, fmt.Errorf("open state bucket %s: %w", streams.StateBucket, err)
	}
	return newStore(kv, js), nil
}

// ErrNoState: the state bucket is missing and cannot be made here.
var ErrNoState = errors.New("no snapjet state")

// BindStore binds the state bucket for a reader. It creates the bucket
// when no sender has yet, but never changes its configuration: a reader's
// credentials need not allow that.
func BindStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, streams.StateBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, stateBucket)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, streams.StateBucket)
		}
		if err != nil {
			// A site's permissions do not let it make the shared state.
			return nil, fmt.Errorf("%w: state bucket %s does not exist yet, and this user cannot create it (%v): run `snapjet send` against the hub once first", ErrNoState, streams.StateBucket, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("open state bucket %s: %w", streams.StateBucket, err)
	}
	return newStore(kv, js), nil
}

func newStore(kv jetstream.KeyValue, js jetstream.JetStream) *Store {
	return &Store{kv: kv, nc: js.Conn(), log: slog.Default(), written: map[string][]byte{}}
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
	s.workWritten(ctx, r)
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
		s.workWritten(ctx, r)
		return nrev, nil
	case errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence:
		if _, _, gerr := s.Get(ctx, r.ID); errors.Is(gerr, ErrNotFound) {
			return 0, gerr
		}
		return 0, fmt.Errorf("store replication %s: %w", r.ID, ErrConflict)
	}
	return 0, fmt.Errorf("store replication %s: %w", r.ID, err)
}

// workWritten publishes the work views of a record just written. A failure
// is logged, not returned: the record changed, and the views follow at the
// next SyncWork.
func (s *Store) workWritten(ctx context.Context, r *Replication) {
	if err := s.publishWork(ctx, r); err != nil {
		s.log.Warn("work views lag behind the record; retried within seconds", "replication", r.ID, "error", err)
	}
}

// Delete removes a record and its work views.
func (s *Store) Delete(ctx context.Context, id string) error {
	r, _, err := s.Get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete replication %s: %w", id, err)
	}
	if err := s.deleteWork(ctx, r); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, key(id)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("delete replication %s: %w", id, err)
	}
	return nil
}

// List returns every replication, oldest first.
func (s *Store) List(ctx context.Context) ([]*Replication, error) {
	keys, err := s.kv.ListKeysFiltered(ctx, "repl.>")
	if err != nil {
		return nil, fmt.Errorf("list replications: %w", err)
	}
	var out []*Replication
	for k := range keys.Keys() {
		r, _, err := s.Get(ctx, strings.TrimPrefix(k, "repl."))
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
// ones. The channel closes when ctx ends.
func (s *Store) Watch(ctx context.Context) (<-chan *Replication, error) {
	return watchKeys(ctx, s, "repl.>", decode)
}

// watchKeys delivers the decoded values of the keys matching pattern as they
// are put, starting with the current ones, until ctx ends; then the channel
// closes. After a reconnect the watch is rebuilt at once, delivering the
// current values again: the client would otherwise notice a watch lost in a
// server restart only after two missed heartbeats (10–18 s), and receivers
// would start late.
func watchKeys[T any](ctx context.Context, s *Store, pattern string, decode func([]byte) (T, error)) (<-chan T, error) {
	w, err := s.kv.Watch(ctx, pattern)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", pattern, err)
	}
	reconnected := s.nc.StatusChanged(nats.CONNECTED)
	out := make(chan T, 16)
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
				w, updates = s.rewatch(ctx, w, pattern)
			case e, ok := <-updates:
				if !ok {
					w, updates = s.rewatch(ctx, w, pattern)
					continue
				}
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				v, err := decode(e.Value())
				if err != nil {
					continue
				}
				select {
				case out <- v:
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
func (s *Store) rewatch(ctx context.Context, w jetstream.KeyWatcher, pattern string) (jetstream.KeyWatcher, <-chan jetstream.KeyValueEntry) {
	if w != nil {
		_ = w.Stop()
	}
	b := retry.New(250*time.Millisecond, 5*time.Second)
	for {
		nw, err := s.kv.Watch(ctx, pattern)
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
