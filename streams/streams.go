// Package streams owns the wire layout of a replication on JetStream: the
// names of streams, subjects, consumers and the state bucket, and the
// encoding of send-stream chunks and the end marker into NATS messages.
// docs/ARCHITECTURE.md describes the same layout for operators.
package streams

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/retry"
)

// Version is the message format this build writes and the only one it reads.
// Version 2: the end marker's digest is a Digest of the chunk checksums.
const Version = 2

// StateBucket is the KV bucket holding every replication's state.
const StateBucket = "snapjet_state"

// Message header names.
const (
	HdrVersion    = "Snapjet-Version"
	HdrRepl       = "Snapjet-Repl"
	HdrAttempt    = "Snapjet-Attempt"
	HdrKind       = "Snapjet-Kind" // "chunk" or "end"
	HdrChunk      = "Snapjet-Chunk"
	HdrOffset     = "Snapjet-Offset"
	HdrRawLen     = "Snapjet-Raw-Len"
	HdrEncoding   = "Snapjet-Enc" // "zstd" or "none"
	HdrSum        = "Snapjet-Sum" // xxh64 of the raw bytes, 16 hex digits
	HdrTotalBytes = "Snapjet-Total-Bytes"
	HdrChunks     = "Snapjet-Chunks"
	HdrDigest     = "Snapjet-Digest" // the stream's Digest, DigestPrefix + hex
)

// MaxChunk bounds the raw size of one chunk, so a hostile header cannot make
// a receiver allocate without limit.
const MaxChunk = 16 << 20

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,200}$`)

// ValidID reports whether id can name a stream, a subject token and a KV key.
func ValidID(id string) bool { return idRE.MatchString(id) }

// StreamName is the JetStream stream of one replication.
func StreamName(repl string) string { return "SNAPJET_" + repl }

// Subject carries every chunk and the end marker of one replication, so that
// their order in the stream is total.
func Subject(repl string) string { return "snapjet.data." + repl }

// ConsumerName is the durable pull consumer of one target on a replication stream.
func ConsumerName(target string) string { return "target_" + target }

// TargetOf is the target whose consumer has this name, "" for another.
func TargetOf(consumer string) string {
	if t, ok := strings.CutPrefix(consumer, "target_"); ok {
		return t
	}
	return ""
}

// Stream settings that the sender's flow control relies on.
const (
	// DuplicateWindow is how long JetStream remembers message ids; a sender
	// that restarts within it can never store a chunk twice.
	DuplicateWindow = 10 * time.Minute
	// MaxAckPending bounds the chunks a target has unacked: applied but not
	// yet in a durable checkpoint, or in flight. It must cover what the link
	// carries while the target syncs a checkpoint (0.3-0.5 s under load;
	// with 64, a 200 Mbit/s link stood idle for that long every 32 chunks
	// of text). What can cross the link twice after a cut stays bounded by
	// the receiver's pull (32 MiB), and what a killed receiver applies
	// again by its checkpoint cadence.
	MaxAckPending = 256
	// AckWait is when the server redelivers an unacked chunk; receivers fill
	// gaps earlier by fetching the missing sequence directly.
	AckWait = 30 * time.Second
)

// MaxBytes is the most a replication's stream may hold: a window, and the
// one chunk an empty stream takes whatever the window (the sender keeps
// the stream within the window otherwise). It is the hard backstop, kept
// tight because JetStream reserves a stream's byte limit from the server's
// storage when the stream is made: a hub holds as many unfinished
// replications as their limits fit on its disk.
func MaxBytes(window int64, chunk int) int64 {
	return window + int64(max(chunk, MaxChunk/16)) + 64<<10
}

// EnsureStream creates (or updates) the stream of a replication in the
// server's file store, bounded by MaxBytes: publishes past it are refused.
func EnsureStream(ctx context.Context, js jetstream.JetStream, repl string, window int64, chunk int) (jetstream.Stream, error) {
	return EnsureStreamIn(ctx, js, repl, window, chunk, jetstream.FileStorage)
}

// EnsureStreamIn is EnsureStream with the storage of a new stream: an
// existing one keeps its own (JetStream cannot change it), so a
// replication begun in one storage ends in it.
func EnsureStreamIn(ctx context.Context, js jetstream.JetStream, repl string, window int64, chunk int, storage jetstream.StorageType) (jetstream.Stream, error) {
	if s, err := js.Stream(ctx, StreamName(repl)); err == nil {
		storage = s.CachedInfo().Config.Storage
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName(repl),
		Description: "snapjet send stream of replication " + repl,
		Subjects:    []string{Subject(repl)},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    MaxBytes(window, chunk),
		Storage:     storage,
		Duplicates:  DuplicateWindow,
		AllowDirect: true,
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// SiteConsumerName is the durable consumer on a replication's stream that
// feeds the copy at site.
func SiteConsumerName(site string) string { return "site_" + site }

// SiteSubject is where the consumer of site delivers: a subject only that
// site's link to the hub needs to receive, so NATS permissions can keep
// every other site off it.
func SiteSubject(site, repl string) string { return "snapjet.site." + site + "." + repl }

// siteConsumerPending bounds the chunks in flight to a site copy. The copy
// acknowledges by answering flow control, and after a cut link the feed
// goes on from the last acknowledgement: so at most this many chunks (and
// never more than a window) cross the link twice per cut. The feed also
// waits a round trip for the answer every this many chunks: 16 MiB per
// round trip is 200 MB/s at 80 ms.
const siteConsumerPending = 16

// EnsureMirror creates, in the JetStream of js (a site node's), the copy of
// the replication stream origin (in JetStream domain hub) that the site's
// targets consume: a mirror, which keeps the stream's sequences, so ack
// floors at the site and at the hub compare, and which resumes after a cut
// link where it stopped, so each byte crosses the link about once. It is
// fed by a durable consumer that the hub side creates on origin
// (SiteConsumerName, delivering on SiteSubject): the site needs no right to
// create consumers on the hub's streams, only to reset its own. The hub
// purges only what the site's targets acked, so the copy holds about what
// the stream holds; its limit, half as much again as the stream's (the
// stream is purged a moment before its copies), is a backstop at which it
// stops copying (DiscardNew), never drops.
//
// stamp is OriginStamp of origin, kept in the copy's metadata under
// OriginKey, so a copy of an earlier stream of the same name is told apart.
func EnsureMirror(ctx context.Context, js jetstream.JetStream, origin jetstream.Stream, repl, hub, site, stamp string) (jetstream.Stream, error) {
	feed := jetstream.ConsumerConfig{
		Durable:        SiteConsumerName(site),
		Description:    "snapjet copy of replication " + repl + " at site " + site,
		DeliverSubject: SiteSubject(site, repl),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckFlowControlPolicy,
		FlowControl:    true,
		IdleHeartbeat:  time.Second,
		MaxAckPending:  siteConsumerPending,
	}
	// A new copy starts from the stream's first message: a feed left from
	// an earlier copy would go on from where that one stopped.
	if err := origin.DeleteConsumer(ctx, feed.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("consumer feeding site %s: %w", site, err)
	}
	if _, err := origin.CreateOrUpdatePushConsumer(ctx, feed); err != nil {
		return nil, fmt.Errorf("consumer feeding site %s: %w", site, err)
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName(repl),
		Description: "snapjet site copy of replication " + repl,
		Metadata:    map[string]string{OriginKey: stamp},
		Mirror: &jetstream.StreamSource{Name: StreamName(repl),
			External: &jetstream.ExternalStream{APIPrefix: "$JS." + hub + ".API"},
			Consumer: &jetstream.StreamConsumerSource{Name: feed.Durable, DeliverSubject: feed.DeliverSubject}},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardNew,
		MaxBytes:    origin.CachedInfo().Config.MaxBytes * 3 / 2,
		Storage:     jetstream.FileStorage,
		AllowDirect: true,
	}
	s, err := js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, err = js.Stream(ctx, cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("create site copy %s: %w", cfg.Name, err)
	}
	return s, nil
}

// OriginKey is the metadata key of a site copy that names the incarnation
// of the stream it copies (OriginStamp).
const OriginKey = "snapjet_origin"

// OriginStamp identifies one incarnation of a stream: its creation time.
func OriginStamp(info *jetstream.StreamInfo) string {
	return info.Created.UTC().Format(time.RFC3339Nano)
}

// ConsumerConfig is the durable consumer of target. AckAll lets one ack
// confirm everything up to a chunk, which is how receivers ack.
func ConsumerConfig(target string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName(target),
		Description:   "snapjet receiver of target " + target,
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       AckWait,
		MaxAckPending: MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    -1,
	}
}

// ResetConsumer deletes and recreates target's consumer so that it delivers
// the stream again from fromSeq, or from its first stored message when
// fromSeq is 0. Deleting (rather than moving the consumer in place) ends
// every pull still open on the old consumer, so nothing of the new start is
// delivered to a receiver that has moved on.
//
// nats-server can race its own delete and create of one consumer name: a
// state write of the deleted consumer still queued for the disk lands in the
// directory its successor takes. The create then fails with a server error
// (a rename of o.dat.tmp that finds no file), or the successor starts from
// its predecessor's stored state (it has delivered something before it
// delivered anything). Both are tried again, a bounded number of times.
func ResetConsumer(ctx context.Context, s jetstream.Stream, target string, fromSeq uint64) error {
	b := retry.New(50*time.Millisecond, 500*time.Millisecond)
	var err error
	for try := 1; ; try++ {
		err = recreateConsumer(ctx, s, target, fromSeq)
		if err == nil || !errors.Is(err, errRecreateRaced) || try == recreateTries {
			break
		}
		if b.Wait(ctx) != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("reset consumer of %s: %w", target, err)
	}
	return nil
}

// recreateTries bounds ResetConsumer's tries: the server's race needs a
// state write of the old consumer still in flight, which the next try,
// tens of milliseconds later, no longer finds.
const recreateTries = 5

// errRecreateRaced marks a recreate that met the server's own race.
var errRecreateRaced = errors.New("the server's delete and create of the consumer raced")

func recreateConsumer(ctx context.Context, s jetstream.Stream, target string, fromSeq uint64) error {
	err := s.DeleteConsumer(ctx, ConsumerName(target))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return err
	}
	cfg := ConsumerConfig(target)
	if fromSeq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, fromSeq
	}
	c, err := s.CreateOrUpdateConsumer(ctx, cfg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeConsumerCreate {
		return fmt.Errorf("%w: %w", errRecreateRaced, err)
	}
	if err != nil {
		return err
	}
	if ci := c.CachedInfo(); ci.Delivered.Consumer > 0 || ci.AckFloor.Consumer > 0 {
		return fmt.Errorf("%w: the new consumer took over the deleted one's state (delivered %d)", errRecreateRaced, ci.Delivered.Consumer)
	}
	return nil
}
