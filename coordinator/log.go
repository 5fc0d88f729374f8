package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/streams"
)

// Dest is a target and where its copy of a replication's stream is: Site
// is "" for the stream itself (on the sender's JetStream, the hub), or the
// JetStream domain of the site node that keeps a mirror of it for its
// targets, so that each byte crosses the site's link once however many
// targets the site has.
type Dest struct{ Target, Site string }

// Log is the per-replication stream as the coordinator uses it: an ordered
// log of the messages of one replication (its chunks and end marker, at
// stream sequences from 1 on) with one consumer per target, on the stream
// itself or on its site's copy, which keeps the stream's sequences. The
// contract, which log_test.go checks against every implementation (the
// JetStream adapter and the in-memory one of coordtest):
//   - Open creates the stream of id if it is missing, bounded by a window
//     and a chunk (streams.MaxBytes), the copy at each site of dests, and a consumer delivering from
//     the first stored message for each of dests that has none; an existing
//     consumer is left as it is (it may have been reset to where a resumed
//     receiver continues). A site that cannot be reached now is logged and
//     left: its targets ask for a replay (ResetConsumer) once they can.
//   - First and Last return the header of the first and the last stored
//     message; nil when there is none (a missing or empty stream, or a
//     message that is not a snapjet message).
//   - AckFloors returns the ack floor of each of dests: the highest
//     sequence up to which its consumer acked everything. A dest without a
//     consumer is absent, and so is a dest whose site cannot be read now:
//     a site away holds the floor without failing the others. A purge may
//     raise a floor to just below the first message.
//   - PurgeTo drops every message below sequence keep, from the stream and
//     from the copies at the sites of dests (a copy that cannot be reached
//     now keeps its messages until the next purge).
//   - Reset empties the stream and the copies at the sites of dests for a
//     new attempt and gives each of dests a fresh consumer from the start;
//     other consumers stay.
//   - ResetConsumer replaces dest's consumer by one that delivers from
//     sequence fromSeq, or from the first stored message when fromSeq is 0,
//     creating its site's copy first if it is missing.
//   - DropConsumer deletes dest's consumer, which then holds nothing back.
//   - Delete deletes the stream of id and the copies at the sites of dests;
//     List returns the id of every stream, or with a site, of every copy
//     kept at that site.
//
// A missing stream is "nothing there", not an error: reads return nothing
// and removals (PurgeTo, Reset, DropConsumer, Delete) do nothing; only
// ResetConsumer, which must create something in it, fails. A stream that
// cannot be read now is an error: temporary, and never evidence that
// something is not stored.
type Log interface {
	Open(ctx context.Context, id string, window int64, chunk int, dests []Dest) error
	First(ctx context.Context, id string) (*streams.Message, error)
	Last(ctx context.Context, id string) (*streams.Message, error)
	AckFloors(ctx context.Context, id string, dests []Dest) (map[string]uint64, error)
	PurgeTo(ctx context.Context, id string, keep uint64, dests []Dest) error
	Reset(ctx context.Context, id string, dests []Dest) error
	ResetConsumer(ctx context.Context, id string, dest Dest, fromSeq uint64) error
	DropConsumer(ctx context.Context, id string, dest Dest) error
	Delete(ctx context.Context, id string, dests []Dest) error
	List(ctx context.Context, site string) ([]string, error)
}

// sites lists the distinct sites of dests, "" (the stream itself) excluded.
func sites(dests []Dest) []string {
	var out []string
	for _, d := range dests {
		if d.Site != "" && !slices.Contains(out, d.Site) {
			out = append(out, d.Site)
		}
	}
	return out
}

// StreamLog keeps each replication in a JetStream stream of its own, laid
// out by package streams, and a mirror of it in the JetStream domain of
// each site that has targets: the Log adapter for JetStream.
type StreamLog struct {
	js  jetstream.JetStream
	log *slog.Logger

	memoryUpTo int64 // windows up to this get a stream in memory (StreamsInMemory)

	mu     sync.Mutex
	domain string                         // of js, once known
	at     map[string]jetstream.JetStream // each site's JetStream, through js's connection
}

var _ Log = (*StreamLog)(nil)

// NewStreamLog returns the Log on js.
func NewStreamLog(js jetstream.JetStream, log *slog.Logger) *StreamLog {
	return &StreamLog{js: js, log: log, at: map[string]jetstream.JetStream{}}
}

// site returns the JetStream of site, "" for js's own.
func (l *StreamLog) site(site string) (jetstream.JetStream, error) {
	if site == "" {
		return l.js, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if js := l.at[site]; js != nil {
		return js, nil
	}
	js, err := jetstream.NewWithDomain(l.js.Conn(), site)
	if err != nil {
		return nil, fmt.Errorf("JetStream of site %s: %w", site, err)
	}
	l.at[site] = js
	return js, nil
}

// hubDomain is the JetStream domain of the stream itself, which the site
// copies name as their origin.
func (l *StreamLog) hubDomain(ctx context.Context) (string, error) {
	l.mu.Lock()
	d := l.domain
	l.mu.Unlock()
	if d != "" {
		return d, nil
	}
	info, err := l.js.AccountInfo(ctx)
	if err != nil {
		return "", fmt.Errorf("JetStream domain of the hub: %w", err)
	}
	if info.Domain == "" {
		return "", fmt.Errorf("%w: the hub's JetStream has no domain, so a site cannot mirror from it; set `jetstream { domain: hub }` or `snapjet server --domain hub`", ErrNoHubDomain)
	}
	l.mu.Lock()
	l.domain = info.Domain
	l.mu.Unlock()
	return info.Domain, nil
}

// ErrNoHubDomain: a target sits at a site, but the sender's JetStream has
// no domain for the site's copy to name as its origin.
var ErrNoHubDomain = errors.New("no JetStream domain")

// copyAt binds the copy of id at site (the stream itself for ""), creating
// the site's mirror when create is set; nil without error when it is
// missing and not created.
func (l *StreamLog) copyAt(ctx context.Context, id, site string, create bool) (jetstream.Stream, error) {
	origin, err := l.stream(ctx, id)
	if origin == nil || err != nil {
		return nil, err // without the stream there is nothing to hold or copy
	}
	return l.copyOf(ctx, origin, id, site, create)
}

// copyOf is copyAt for the stream origin, already bound. A copy is of one
// incarnation of the stream: a copy left at a site that was away when the
// stream was deleted would, for a stream made again under the same id,
// hold other messages at the same sequences. Such a stale copy counts as
// missing, and create replaces it.
func (l *StreamLog) copyOf(ctx context.Context, origin jetstream.Stream, id, site string, create bool) (jetstream.Stream, error) {
	if site == "" {
		return origin, nil
	}
	js, err := l.site(site)
	if err != nil {
		return nil, err
	}
	name := streams.StreamName(id)
	stamp := streams.OriginStamp(origin.CachedInfo())
	s, err := js.Stream(ctx, name)
	switch {
	case err == nil && s.CachedInfo().Config.Metadata[streams.OriginKey] == stamp:
		return s, nil
	case err == nil && !create:
		return nil, nil
	case err == nil:
		l.log.Warn("replacing a stale site copy, left from an earlier stream of this replication", "replication", id, "site", site)
		if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("delete the stale copy of %s at site %s: %w", id, site, err)
		}
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, fmt.Errorf("read the copy of %s at site %s: %w", id, site, err)
	case !create:
		return nil, nil
	}
	hub, err := l.hubDomain(ctx)
	if err != nil {
		return nil, err
	}
	s, err = streams.EnsureMirror(ctx, js, origin, id, hub, site, stamp)
	if err != nil {
		return nil, fmt.Errorf("copy of %s at site %s: %w", id, site, err)
	}
	l.log.Info("site copy created", "replication", id, "site", site, "origin_domain", hub)
	return s, nil
}

// AtSite is " at site SITE" for messages about a site's copy, "" for the
// stream itself.
func AtSite(site string) string {
	if site == "" {
		return ""
	}
	return " at site " + site
}

// stream binds the stream of id; nil without error when it is missing.
func (l *StreamLog) stream(ctx context.Context, id string) (jetstream.Stream, error) {
	s, err := l.js.Stream(ctx, streams.StreamName(id))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the stream of %s: %w", id, err)
	}
	return s, nil
}

// Option changes how New keeps replications.
type Option func(*StreamLog)

// StreamsInMemory keeps the stream of each new replication whose window is
// at most maxWindow in the server's memory, not in its file store: for
// replicate, whose targets are in its own process. There the store's copy
// was a second write of every byte to disk (and a quarter of replicate's
// CPU) for a durability the run does not need: the source snapshot stays,
// and a native receive checkpoints. After a crash the stream is gone; the
// next run sends the attempt again from the snapshot (Resend), and each
// target skips the chunks its partial holds. The window bounds the memory
// the stream takes.
func StreamsInMemory(maxWindow int64) Option {
	return func(l *StreamLog) { l.memoryUpTo = maxWindow }
}

// Open implements Log.
func (l *StreamLog) Open(ctx context.Context, id string, window int64, chunk int, dests []Dest) error {
	storage := jetstream.FileStorage
	if window <= l.memoryUpTo {
		storage = jetstream.MemoryStorage
	}
	s, err := streams.EnsureStreamIn(ctx, l.js, id, window, chunk, storage)
	if err != nil {
		return err
	}
	placed := map[string]jetstream.Stream{"": s}
	for _, site := range sites(dests) {
		c, err := l.copyOf(ctx, s, id, site, true)
		if err != nil {
			// One site that cannot be reached must not hold up the others:
			// its targets ask for a replay once they can reach the hub.
			l.log.Warn("no copy at the site yet; its targets get one when they ask", "replication", id, "site", site, "error", err)
			continue
		}
		placed[site] = c
	}
	for _, d := range dests {
		c := placed[d.Site]
		if c == nil {
			continue
		}
		_, err := c.Consumer(ctx, streams.ConsumerName(d.Target))
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			_, err = c.CreateConsumer(ctx, streams.ConsumerConfig(d.Target))
		}
		if err != nil {
			if d.Site != "" {
				l.log.Warn("no consumer at the site yet; the target gets one when it asks", "replication", id, "target", d.Target, "site", d.Site, "error", err)
				continue
			}
			return fmt.Errorf("consumer for target %s: %w", d.Target, err)
		}
	}
	return nil
}

// First implements Log.
func (l *StreamLog) First(ctx context.Context, id string) (*streams.Message, error) {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the stream of %s: %w", id, err)
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	m, err := s.GetMsg(ctx, info.State.FirstSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil // purged meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("read the start of the stream of %s: %w", id, err)
	}
	return header(m), nil
}

// Last implements Log.
func (l *StreamLog) Last(ctx context.Context, id string) (*streams.Message, error) {
	s, err := l.stream(ctx, id)
	if s == nil || err != nil {
		return nil, err
	}
	m, err := s.GetLastMsgForSubject(ctx, streams.Subject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the end of the stream of %s: %w", id, err)
	}
	return header(m), nil
}

// header decodes a stored message's header; nil for a foreign message.
func header(m *jetstream.RawStreamMsg) *streams.Message {
	h, err := streams.DecodeHeader(m.Header)
	if err != nil {
		return nil
	}
	return &h
}

// AckFloors implements Log.
func (l *StreamLog) AckFloors(ctx context.Context, id string, dests []Dest) (map[string]uint64, error) {
	floors := map[string]uint64{}
	origin, err := l.stream(ctx, id)
	if origin == nil || err != nil {
		return floors, err
	}
	for _, site := range append([]string{""}, sites(dests)...) {
		at, err := l.floorsAt(ctx, origin, id, site, dests)
		if err != nil && site != "" {
			// A site away holds the floor where it is (its dests are
			// absent) and costs the others nothing; the sender says which
			// target it waits for.
			l.log.Debug("site copy unreadable; its targets hold the window", "replication", id, "site", site, "error", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		maps.Copy(floors, at)
	}
	return floors, nil
}

// floorsAt reads the ack floors of the dests at site.
func (l *StreamLog) floorsAt(ctx context.Context, origin jetstream.Stream, id, site string, dests []Dest) (map[string]uint64, error) {
	floors := map[string]uint64{}
	s, err := l.copyOf(ctx, origin, id, site, false)
	if s == nil || err != nil {
		return floors, err
	}
	lister := s.ListConsumers(ctx)
	for ci := range lister.Info() {
		t := streams.TargetOf(ci.Name)
		if slices.Contains(dests, Dest{Target: t, Site: site}) {
			floors[t] = ci.AckFloor.Stream
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("consumers of %s%s: %w", id, AtSite(site), err)
	}
	return floors, nil
}

// PurgeTo implements Log. A site copy that cannot be purged now keeps what
// its targets acked until the next purge: it never holds back the stream.
func (l *StreamLog) PurgeTo(ctx context.Context, id string, keep uint64, dests []Dest) error {
	origin, err := l.stream(ctx, id)
	if origin == nil || err != nil {
		return err
	}
	for _, site := range append([]string{""}, sites(dests)...) {
		s, err := l.copyOf(ctx, origin, id, site, false)
		if err == nil && s != nil {
			err = s.Purge(ctx, jetstream.WithPurgeSequence(keep))
		}
		if err != nil && site != "" {
			l.log.Debug("site copy not purged now", "replication", id, "site", site, "error", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("drop acked chunks of %s: %w", id, err)
		}
	}
	return nil
}

// Reset implements Log.
func (l *StreamLog) Reset(ctx context.Context, id string, dests []Dest) error {
	origin, err := l.stream(ctx, id)
	if origin == nil || err != nil {
		return err
	}
	for _, site := range append([]string{""}, sites(dests)...) {
		s, err := l.copyOf(ctx, origin, id, site, false)
		if err != nil {
			return err
		}
		if s == nil {
			continue
		}
		if err := s.Purge(ctx); err != nil {
			return fmt.Errorf("purge stream of %s%s: %w", id, AtSite(site), err)
		}
		for _, d := range dests {
			if d.Site != site {
				continue
			}
			if err := streams.ResetConsumer(ctx, s, d.Target, 0); err != nil {
				return err
			}
		}
	}
	return nil
}

// ResetConsumer implements Log.
func (l *StreamLog) ResetConsumer(ctx context.Context, id string, d Dest, fromSeq uint64) error {
	s, err := l.copyAt(ctx, id, d.Site, true)
	if err != nil {
		return err
	}
	if s == nil {
		return fmt.Errorf("reset consumer of %s: %w", d.Target, jetstream.ErrStreamNotFound)
	}
	return streams.ResetConsumer(ctx, s, d.Target, fromSeq)
}

// DropConsumer implements Log.
func (l *StreamLog) DropConsumer(ctx context.Context, id string, d Dest) error {
	s, err := l.copyAt(ctx, id, d.Site, false)
	if s == nil || err != nil {
		return err
	}
	err = s.DeleteConsumer(ctx, streams.ConsumerName(d.Target))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("drop consumer of %s%s: %w", d.Target, AtSite(d.Site), err)
	}
	return nil
}

// Delete implements Log. A site copy that cannot be deleted now is logged
// and left: it holds at most a window and no consumer asks for it.
func (l *StreamLog) Delete(ctx context.Context, id string, dests []Dest) error {
	for _, site := range sites(dests) {
		js, err := l.site(site)
		if err == nil {
			err = js.DeleteStream(ctx, streams.StreamName(id))
		}
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			l.log.Warn("site copy left behind", "replication", id, "site", site, "error", err)
		}
	}
	err := l.js.DeleteStream(ctx, streams.StreamName(id))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("delete stream of %s: %w", id, err)
	}
	return nil
}

// List implements Log.
func (l *StreamLog) List(ctx context.Context, site string) ([]string, error) {
	js, err := l.site(site)
	if err != nil {
		return nil, err
	}
	names := js.StreamNames(ctx)
	var ids []string
	for name := range names.Name() {
		if id, ok := strings.CutPrefix(name, streams.StreamName("")); ok {
			ids = append(ids, id)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("list streams%s: %w", AtSite(site), err)
	}
	return ids, nil
}
