package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrLeaseHeld means another sender drives the replications of this
// source right now.
var ErrLeaseHeld = errors.New("another snapjet sender is replicating this source")

// DefaultLeaseTTL is how long a lease outlives its holder's last refresh:
// a sender that died without releasing it holds the source this long
// (unless it died on the same host, which is seen at once).
const DefaultLeaseTTL = 30 * time.Second

// Holder identifies a lease holder: the process, its host and its boot.
type Holder struct {
	Host    string    `json:"host"`
	PID     int       `json:"pid"`
	BootID  string    `json:"boot_id"`
	Source  string    `json:"source"`
	Expires time.Time `json:"expires"`
}

// ThisProcess is the holder identity of the calling process.
func ThisProcess(source string) Holder {
	host, _ := os.Hostname()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return Holder{Host: host, PID: os.Getpid(), BootID: strings.TrimSpace(string(boot)), Source: source}
}

// same reports whether h and o are the same process.
func (h Holder) same(o Holder) bool {
	return h.Host == o.Host && h.BootID == o.BootID && h.PID == o.PID
}

// gone reports whether h is a process of this host's current boot that no
// longer runs: its lease need not be waited out.
func (h Holder) gone(me Holder) bool {
	if h.Host != me.Host || h.BootID != me.BootID || h.BootID == "" {
		return false
	}
	return syscall.Kill(h.PID, 0) == syscall.ESRCH
}

// Lease is one sender's right to drive the replications of one source,
// kept in the state bucket under lease.<source UUID> with an expiry that
// the holder refreshes. Only one sender may drive a source at a time: two
// would publish the same chunks and judge the same reports.
type Lease struct {
	kv  jetstream.KeyValue
	key string
	rev uint64
	me  Holder
	ttl time.Duration
	now func() time.Time
}

func leaseKey(sourceUUID string) string { return "lease." + sourceUUID }

// AcquireLease takes the lease of source sourceUUID for me, or returns
// ErrLeaseHeld naming the holder while another live process holds it. An
// expired lease, or one of a dead process on this host, is taken over.
func (c *Coordinator) AcquireLease(ctx context.Context, sourceUUID string, me Holder, ttl time.Duration) (*Lease, error) {
	if c.kv == nil {
		return nil, fmt.Errorf("lease of %s: leases live in the state bucket, which a coordinator of NewWith has not", me.Source)
	}
	l := &Lease{kv: c.kv, key: leaseKey(sourceUUID), me: me, ttl: ttl, now: c.now}
	for try := 0; try < 5; try++ {
		e, err := l.kv.Get(ctx, l.key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			if err := l.write(ctx, true); err == nil || !conflict(err) {
				return l, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read the lease of %s: %w", me.Source, err)
		}
		var h Holder
		if json.Unmarshal(e.Value(), &h) == nil && !h.same(me) && l.now().Before(h.Expires) && !h.gone(me) {
			return nil, fmt.Errorf("%w: pid %d on %s holds the lease of %s until %s; wait for it to finish, or stop it",
				ErrLeaseHeld, h.PID, h.Host, me.Source, h.Expires.Format(time.RFC3339))
		}
		l.rev = e.Revision()
		if err := l.write(ctx, false); err == nil || !conflict(err) {
			return l, err
		}
	}
	return nil, fmt.Errorf("%w: the lease of %s keeps changing hands", ErrLeaseHeld, me.Source)
}

// write stores the lease with a new expiry, creating it or replacing the
// revision this holder saw.
func (l *Lease) write(ctx context.Context, create bool) error {
	h := l.me
	h.Expires = l.now().Add(l.ttl).UTC()
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var rev uint64
	if create {
		rev, err = l.kv.Create(ctx, l.key, b)
	} else {
		rev, err = l.kv.Update(ctx, l.key, b, l.rev)
	}
	if err != nil {
		return err
	}
	l.rev = rev
	return nil
}

func conflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// Keep refreshes the lease every third of its TTL until ctx ends. When the
// lease was taken over (this holder was away past its expiry), lost is
// called: the holder must stop driving. A refresh that fails for a while
// (the server is away) is retried; the holder's own outage bound applies.
func (l *Lease) Keep(ctx context.Context, log *slog.Logger, lost func(error)) {
	tick := time.NewTicker(l.ttl / 3)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := l.write(ctx, false)
		switch {
		case err == nil:
		case conflict(err) && l.stillMine(ctx):
			// A refresh whose reply a cut link lost did land: the lease is
			// still this holder's, at a revision it had not seen.
		case conflict(err):
			lost(fmt.Errorf("%w: the lease of %s was taken over while this sender was away", ErrLeaseHeld, l.me.Source))
			return
		case ctx.Err() == nil:
			log.Warn("cannot refresh the lease; link to the server lost?", "source", l.me.Source, "error", err)
		}
	}
}

// stillMine reads the lease and, when this holder still holds it, adopts
// its current revision.
func (l *Lease) stillMine(ctx context.Context) bool {
	e, err := l.kv.Get(ctx, l.key)
	if err != nil {
		return false
	}
	var h Holder
	if json.Unmarshal(e.Value(), &h) != nil || !h.same(l.me) {
		return false
	}
	l.rev = e.Revision()
	return true
}

// Release gives the lease up, if this holder still has it.
func (l *Lease) Release(ctx context.Context) error {
	err := l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
	if err != nil && !conflict(err) && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("release the lease of %s: %w", l.me.Source, err)
	}
	return nil
}
