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

// ErrNotFound is returned for an unknown replication id.
var ErrNotFound = errors.New("no such replication")

// Store reads replication records from the KV bucket. Anyone may read;
// only a Coordinator writes.
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
