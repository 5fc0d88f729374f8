package coordtest

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// Log is a coordinator.Log in memory. Append and Ack do to it what the
// sender and the receivers do to a stream; Break makes it fail like a
// server that does not answer.
type Log struct {
	mu      sync.Mutex
	streams map[string]*stream
	copies  map[string]map[string]bool // the ids of the copies kept at each site
	err     error
}

// stream holds the messages at sequences last-len(msgs)+1 to last.
type stream struct {
	msgs      []streams.Message
	last      uint64
	consumers map[string]*consumer
}

// consumer is a target's consumer: where it was set to deliver from, how
// far it acked, and the site whose copy of the stream it is on (copies keep
// the stream's sequences, so one list of messages serves them all).
type consumer struct {
	from, floor uint64
	site        string
}

func (s *stream) first() uint64 { return s.last - uint64(len(s.msgs)) + 1 }

// purgeTo drops the messages below keep; like JetStream it raises the ack
// floors to just below what is left.
func (s *stream) purgeTo(keep uint64) {
	keep = min(keep, s.last+1)
	if keep <= s.first() {
		return
	}
	s.msgs = s.msgs[keep-s.first():]
	for _, c := range s.consumers {
		c.floor = max(c.floor, keep-1)
		c.from = max(c.from, keep)
	}
}

// reset gives d a consumer that delivers from fromSeq, or from the first
// stored message; it has acked what lies before.
func (s *stream) reset(d coordinator.Dest, fromSeq uint64) {
	if fromSeq == 0 {
		fromSeq = s.first()
	}
	s.consumers[d.Target] = &consumer{from: fromSeq, floor: fromSeq - 1, site: d.Site}
}

var _ coordinator.Log = (*Log)(nil)

// NewLog returns a Log without streams.
func NewLog() *Log { return &Log{streams: map[string]*stream{}, copies: map[string]map[string]bool{}} }

// copyAt records that site keeps a copy of id.
func (l *Log) copyAt(id, site string) {
	if site == "" {
		return
	}
	if l.copies[site] == nil {
		l.copies[site] = map[string]bool{}
	}
	l.copies[site][id] = true
}

// Break makes every call of the Log interface return err until Break(nil).
func (l *Log) Break(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
}

// Append stores m at the end of the stream of id, as the sender publishes,
// and returns its sequence; 0 when the stream is missing.
func (l *Log) Append(id string, m streams.Message) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.streams[id]
	if s == nil {
		return 0
	}
	s.msgs = append(s.msgs, m)
	s.last++
	return s.last
}

// Ack acks every message up to seq on target's consumer, as a receiver
// does; without a consumer it does nothing.
func (l *Log) Ack(id, target string, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.streams[id]; s != nil && s.consumers[target] != nil {
		c := s.consumers[target]
		c.floor = max(c.floor, seq)
	}
}

// Stored returns the first and the last sequence of the stream of id (the
// first is last+1 when it is empty) and whether it exists.
func (l *Log) Stored(id string) (first, last uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.streams[id]
	if s == nil {
		return 0, 0, false
	}
	return s.first(), s.last, true
}

// Consumer returns the sequence target's consumer was last set to deliver
// from, the site it is at, and whether it has one.
func (l *Log) Consumer(id, target string) (from uint64, site string, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.streams[id]; s != nil && s.consumers[target] != nil {
		return s.consumers[target].from, s.consumers[target].site, true
	}
	return 0, "", false
}

// Open implements coordinator.Log.
func (l *Log) Open(_ context.Context, id string, _ int64, _ int, dests []coordinator.Dest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	s := l.streams[id]
	if s == nil {
		s = &stream{consumers: map[string]*consumer{}}
		l.streams[id] = s
	}
	for _, d := range dests {
		l.copyAt(id, d.Site)
		if s.consumers[d.Target] == nil {
			s.reset(d, 0)
		}
	}
	return nil
}

// at returns the stream of id after the Break check; nil when missing.
func (l *Log) at(id string) (*stream, error) {
	if l.err != nil {
		return nil, l.err
	}
	return l.streams[id], nil
}

// First implements coordinator.Log.
func (l *Log) First(_ context.Context, id string) (*streams.Message, error) { return l.message(id, 0) }

// Last implements coordinator.Log.
func (l *Log) Last(_ context.Context, id string) (*streams.Message, error) { return l.message(id, -1) }

// message returns a copy of the stored message at index i, counted from
// the end when negative; nil when there is none.
func (l *Log) message(id string, i int) (*streams.Message, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if s == nil || len(s.msgs) == 0 {
		return nil, err
	}
	if i < 0 {
		i += len(s.msgs)
	}
	m := s.msgs[i]
	return &m, nil
}

// AckFloors implements coordinator.Log.
func (l *Log) AckFloors(_ context.Context, id string, dests []coordinator.Dest) (map[string]uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if err != nil {
		return nil, err
	}
	floors := map[string]uint64{}
	if s != nil {
		for _, d := range dests {
			if c := s.consumers[d.Target]; c != nil && c.site == d.Site {
				floors[d.Target] = c.floor
			}
		}
	}
	return floors, nil
}

// PurgeTo implements coordinator.Log.
func (l *Log) PurgeTo(_ context.Context, id string, keep uint64, _ []coordinator.Dest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if s != nil {
		s.purgeTo(keep)
	}
	return err
}

// Reset implements coordinator.Log.
func (l *Log) Reset(_ context.Context, id string, dests []coordinator.Dest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if s == nil {
		return err
	}
	s.purgeTo(s.last + 1)
	for _, d := range dests {
		s.reset(d, 0)
	}
	return nil
}

// ResetConsumer implements coordinator.Log.
func (l *Log) ResetConsumer(_ context.Context, id string, d coordinator.Dest, fromSeq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("reset consumer of %s: no stream of %s", d.Target, id)
	}
	l.copyAt(id, d.Site)
	s.reset(d, fromSeq)
	return nil
}

// DropConsumer implements coordinator.Log.
func (l *Log) DropConsumer(_ context.Context, id string, d coordinator.Dest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, err := l.at(id)
	if s != nil && s.consumers[d.Target] != nil && s.consumers[d.Target].site == d.Site {
		delete(s.consumers, d.Target)
	}
	return err
}

// Delete implements coordinator.Log.
func (l *Log) Delete(_ context.Context, id string, dests []coordinator.Dest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return l.err
	}
	delete(l.streams, id)
	for _, d := range dests {
		delete(l.copies[d.Site], id)
	}
	return nil
}

// List implements coordinator.Log.
func (l *Log) List(_ context.Context, site string) ([]string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	var ids []string
	if site == "" {
		for id := range l.streams {
			ids = append(ids, id)
		}
	} else {
		for id := range l.copies[site] {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
