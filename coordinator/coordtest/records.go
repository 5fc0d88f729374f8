// Package coordtest holds in-memory implementations of the coordinator's
// interfaces for unit tests, held to the same contract as the JetStream
// adapters by the coordinator's conformance suites.
package coordtest

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"

	"github.com/snapjet/snapjet/coordinator"
)

// Records is a coordinator.Records in memory.
type Records struct {
	mu       sync.Mutex
	rev      uint64
	recs     map[string]stored
	watchers []chan *coordinator.Replication
}

type stored struct {
	data []byte // JSON, so that callers never share a record
	rev  uint64
}

var _ coordinator.Records = (*Records)(nil)

// NewRecords returns an empty store.
func NewRecords() *Records { return &Records{recs: map[string]stored{}} }

func decode(b []byte) *coordinator.Replication {
	var r coordinator.Replication
	_ = json.Unmarshal(b, &r)
	if r.Targets == nil {
		r.Targets = map[string]*coordinator.Target{}
	}
	return &r
}

// Get implements coordinator.Records.
func (m *Records) Get(_ context.Context, id string) (*coordinator.Replication, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.recs[id]
	if !ok {
		return nil, 0, fmt.Errorf("replication %s: %w", id, coordinator.ErrNotFound)
	}
	return decode(s.data), s.rev, nil
}

// Create implements coordinator.Records.
func (m *Records) Create(_ context.Context, r *coordinator.Replication) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.recs[r.ID]; ok {
		return 0, fmt.Errorf("create replication %s: %w", r.ID, coordinator.ErrExists)
	}
	return m.put(r), nil
}

// Update implements coordinator.Records.
func (m *Records) Update(_ context.Context, r *coordinator.Replication, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.recs[r.ID]
	switch {
	case !ok:
		return 0, fmt.Errorf("store replication %s: %w", r.ID, coordinator.ErrNotFound)
	case s.rev != rev:
		return 0, fmt.Errorf("store replication %s: %w", r.ID, coordinator.ErrConflict)
	}
	return m.put(r), nil
}

// put stores r under a new revision and tells the watchers; m.mu is held.
func (m *Records) put(r *coordinator.Replication) uint64 {
	b, _ := json.Marshal(r)
	m.rev++
	m.recs[r.ID] = stored{data: b, rev: m.rev}
	for _, w := range m.watchers {
		select {
		case w <- decode(b):
		default: // a watcher that does not read loses updates, as a slow KV watch would lag
		}
	}
	return m.rev
}

// Delete implements coordinator.Records.
func (m *Records) Delete(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.recs, id)
	return nil
}

// List implements coordinator.Records.
func (m *Records) List(context.Context) ([]*coordinator.Replication, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*coordinator.Replication, 0, len(m.recs))
	for _, s := range m.recs {
		out = append(out, decode(s.data))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// Watch implements coordinator.Records.
func (m *Records) Watch(ctx context.Context) (<-chan *coordinator.Replication, error) {
	m.mu.Lock()
	in := make(chan *coordinator.Replication, 1024)
	for _, s := range m.recs {
		in <- decode(s.data)
	}
	m.watchers = append(m.watchers, in)
	m.mu.Unlock()
	out := make(chan *coordinator.Replication)
	go func() {
		defer close(out)
		defer m.unwatch(in)
		for {
			select {
			case <-ctx.Done():
				return
			case r := <-in:
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

func (m *Records) unwatch(in chan *coordinator.Replication) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, w := range m.watchers {
		if w == in {
			m.watchers = append(m.watchers[:i], m.watchers[i+1:]...)
			return
		}
	}
}
