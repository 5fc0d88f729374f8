// Package receiver applies replications to one target directory: it
// watches the work the coordinator addresses to its target (its own keys
// of the state bucket, never other targets' records),
// consumes the replication stream with its own durable consumer, verifies
// every chunk, feeds `btrfs receive` in a staging area, acks only what was
// handed on, and carries out the coordinator's commit or discard.
package receiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/internal/filelock"
	"github.com/snapjet/snapjet/internal/retry"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/streams"
)

// Receiver serves one target. Create it with New, then Run it.
type Receiver struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	store  *coordinator.Store
	target string
	dir    string
	log    *slog.Logger
	codec  *streams.Codec

	applier   string // Native or BtrfsProgs
	metrics   *metrics.Metrics
	pullBytes int // chunk bytes a pull may have on their way

	mu       sync.Mutex
	jobs     map[string]*running // by replication id
	fellBack map[string]bool     // replications the native receive could not apply
	domain   *string             // the site's JetStream domain, once known ("" at the hub)
	state    string              // the JetStream domain of the state, once domain is known
	sites    map[string]jetstream.JetStream
}

// Option configures a Receiver.
type Option func(*Receiver) error

// WithApplier chooses how streams are applied: Native (the default,
// resumable after a crash) or BtrfsProgs (the external `btrfs receive`).
func WithApplier(kind string) Option {
	return func(rc *Receiver) error {
		if kind != Native && kind != BtrfsProgs {
			return driver.Permanent(fmt.Errorf("receiver %q: use %s or %s", kind, Native, BtrfsProgs))
		}
		rc.applier = kind
		return nil
	}
}

// WithMetrics reports what the receiver does to m (nil: nowhere).
func WithMetrics(m *metrics.Metrics) Option {
	return func(rc *Receiver) error {
		rc.metrics = m
		return nil
	}
}

// WithPullBytes sets how many bytes of chunks may be on their way to the
// receiver at once (default 32 MiB, which keeps a 1 Gbit/s link busy at
// 250 ms RTT). It must exceed the largest message the receiver will meet
// (chunk size plus headers), or the server refuses the pull. A receiver in
// the server's own process (replicate) needs little: what waits in its
// buffer is only memory.
func WithPullBytes(n int) Option {
	return func(rc *Receiver) error {
		if n <= 0 {
			return driver.Permanent(fmt.Errorf("pull budget of %d bytes: give a positive size", n))
		}
		rc.pullBytes = n
		return nil
	}
}

type running struct {
	attempt int
	cancel  context.CancelCauseFunc // with errAttemptEnded: the job's partial is worthless
	done    chan struct{}
}

// CheckTarget explains, in terms an operator can act on, why dir cannot
// receive snapshots.
func CheckTarget(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", driver.Permanent(fmt.Errorf("target %s: %w", dir, err))
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", driver.Permanent(fmt.Errorf("target %s does not exist: create the directory on a btrfs filesystem first", abs))
	case err != nil:
		return "", driver.Permanent(fmt.Errorf("target %s: %w", abs, err))
	case !fi.IsDir():
		return "", driver.Permanent(fmt.Errorf("target %s is not a directory", abs))
	}
	if err := btrfs.IsBtrfs(abs); err != nil {
		return "", driver.Permanent(fmt.Errorf("target %s is not on a btrfs filesystem: received snapshots must live on btrfs (%w)", abs, err))
	}
	return abs, nil
}

// New checks the target directory and prepares its staging area.
func New(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, target, dir string, log *slog.Logger, opts ...Option) (*Receiver, error) {
	if !streams.ValidID(target) {
		return nil, driver.Permanent(fmt.Errorf("target name %q: use letters, digits, '-' and '_'", target))
	}
	abs, err := CheckTarget(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(abs, ".snapjet", "incoming"), 0o700); err != nil {
		return nil, fmt.Errorf("staging area of %s: %w", abs, err)
	}
	store, err := coordinator.BindStore(ctx, js)
	if err != nil {
		return nil, err
	}
	codec, err := streams.NewCodec()
	if err != nil {
		return nil, err
	}
	rc := &Receiver{nc: nc, js: js, store: store, target: target, dir: abs, codec: codec, applier: Native, pullBytes: pullBytes,
		log: log.With("target", target), jobs: map[string]*running{}, fellBack: map[string]bool{},
		sites: map[string]jetstream.JetStream{}}
	for _, o := range opts {
		if err := o(rc); err != nil {
			return nil, err
		}
	}
	return rc, nil
}

func (rc *Receiver) usesProgs(id string) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.fellBack[id]
}

func (rc *Receiver) fallBack(id string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.fellBack[id] = true
}

func (rc *Receiver) incoming(id string) string {
	return filepath.Join(rc.dir, ".snapjet", "incoming", id)
}

// Run serves the target until ctx ends: it answers inventory requests,
// cleans staging left by a crash, and runs a job for every replication
// attempt addressed to this target.
func (rc *Receiver) Run(ctx context.Context) error {
	lock, err := rc.lock()
	if err != nil {
		return err
	}
	defer lock.Close()
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	go rc.watchLock(ctx, lock, lockCheckEvery, stop)
	svc, err := micro.AddService(rc.nc, micro.Config{
		Name:        streams.ReceiverService,
		Version:     "1.0.0",
		Description: "snapjet receiver of target " + rc.target,
		Metadata:    map[string]string{"target": rc.target, "dir": rc.dir},
	})
	if err != nil {
		return fmt.Errorf("start receiver service: %w", err)
	}
	defer svc.Stop()
	err = svc.AddEndpoint("inventory-"+rc.target, micro.HandlerFunc(func(req micro.Request) {
		ictx, cancel := context.WithTimeout(ctx, inventoryTimeout)
		inv, err := rc.Inventory(ictx)
		cancel()
		if err != nil {
			_ = req.Error("500", err.Error(), nil)
			return
		}
		_ = req.RespondJSON(inv)
	}), micro.WithEndpointSubject(streams.InventorySubject(rc.target)))
	if err != nil {
		return fmt.Errorf("serve inventory of %s: %w", rc.target, err)
	}
	err = svc.AddEndpoint("prune-"+rc.target, micro.HandlerFunc(func(req micro.Request) {
		var d streams.DeleteRequest
		err := json.Unmarshal(req.Data(), &d)
		if err == nil {
			err = rc.DeleteCommitted(ctx, d)
		}
		if err != nil {
			rc.log.Warn("delete refused", "snapshot", d.Name, "error", err)
			_ = req.Error("400", err.Error(), nil)
			return
		}
		_ = req.Respond(nil)
	}), micro.WithEndpointSubject(streams.PruneSubject(rc.target)))
	if err != nil {
		return fmt.Errorf("serve prune of %s: %w", rc.target, err)
	}
	if err := rc.cleanStaging(ctx); err != nil {
		return err
	}
	watch, err := rc.store.WatchWork(ctx, rc.target)
	if err != nil {
		return err
	}
	rc.log.Info("receiver ready", "dir", rc.dir)
	for r := range watch {
		rc.dispatch(ctx, r)
	}
	rc.mu.Lock()
	jobs := make([]*running, 0, len(rc.jobs))
	for _, j := range rc.jobs {
		jobs = append(jobs, j)
	}
	rc.mu.Unlock()
	for _, j := range jobs {
		j.cancel(context.Canceled) // stopping: native partials stay to resume
		<-j.done
	}
	if cause := context.Cause(ctx); errors.Is(cause, filelock.ErrLost) {
		return cause
	}
	return ctx.Err()
}

// lock makes sure one receiver at a time serves a target directory: two
// would apply the same stream into one staging area.
func (rc *Receiver) lock() (*filelock.Lock, error) {
	path := filepath.Join(rc.dir, ".snapjet", "receiver.lock")
	l, err := filelock.TryLock(path)
	if errors.Is(err, filelock.ErrHeld) {
		return nil, driver.Permanent(fmt.Errorf("target %s is already served by another snapjet receiver (pid %s): stop it first", rc.dir, filelock.Note(path)))
	}
	if err != nil {
		return nil, fmt.Errorf("lock target %s: %w", rc.dir, err)
	}
	// The pid only names the holder in a refused receiver's error.
	_ = l.SetNote(strconv.Itoa(os.Getpid()))
	return l, nil
}

// lockCheckEvery is how often a running receiver makes sure its lock file
// is still the one at .snapjet/receiver.lock.
const lockCheckEvery = 2 * time.Second

// watchLock stops the receiver, through stop, once its lock file has been
// removed or replaced (a cleanup deleting .snapjet, say): a second
// receiver could then lock the new file and apply the same stream into
// the same staging area. Unlike the embedded server's store lock it is
// not taken again: the lock lives in .snapjet next to the staging, so a
// lost lock usually means lost staging, which a receiver started afresh
// cleans up and resumes from the coordinator's state. Native partials
// that are still there stay for it. It checks every interval until ctx
// ends.
func (rc *Receiver) watchLock(ctx context.Context, l *filelock.Lock, every time.Duration, stop context.CancelCauseFunc) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := l.Check()
		if errors.Is(err, filelock.ErrLost) {
			err = driver.Permanent(fmt.Errorf("target %s: %w; stopped so that two receivers never serve one target: make sure no other receiver serves it, then start this one again", rc.dir, err))
			rc.log.Error("receiver lock lost", "error", err)
			stop(err)
			return
		}
		if err != nil {
			rc.log.Warn("check the receiver lock", "error", err)
		}
	}
}

// dispatch starts, replaces or stops the job of one replication. A job
// whose attempt is over for this target (another attempt, the target or the
// replication finished) is ended: a finished replication leaves no job
// waiting for an answer that will never matter.
func (rc *Receiver) dispatch(ctx context.Context, r *coordinator.Work) {
	rc.mu.Lock()
	j := rc.jobs[r.ID]
	rc.mu.Unlock()
	if j != nil && (j.attempt != r.Attempt || !r.Wanted()) {
		j.cancel(errAttemptEnded)
		<-j.done
		j = nil
	}
	if j != nil || !r.Wanted() {
		return
	}
	jctx, cancel := context.WithCancelCause(ctx)
	j = &running{attempt: r.Attempt, cancel: cancel, done: make(chan struct{})}
	rc.mu.Lock()
	rc.jobs[r.ID] = j
	rc.mu.Unlock()
	go func() {
		defer close(j.done)
		defer cancel(nil)
		rc.runJob(jctx, r)
		rc.mu.Lock()
		if rc.jobs[r.ID] == j {
			delete(rc.jobs, r.ID)
		}
		rc.mu.Unlock()
	}()
}

// runJob runs one attempt, retrying temporary trouble (a NATS outage) in
// place. It has no bound of its own: the record bounds it (the sender's
// watchdog fails a target that makes no progress, and dispatch then ends
// the job).
func (rc *Receiver) runJob(ctx context.Context, r *coordinator.Work) {
	log := rc.log.With("replication", r.ID, "attempt", r.Attempt)
	first := true
	_ = driver.Run(ctx, log, "receive", driver.Policy{First: time.Second, Max: 30 * time.Second}, func(ctx context.Context) (bool, error) {
		if !first {
			cur, err := rc.store.Work(ctx, rc.target, r.ID)
			if err != nil {
				return false, err
			}
			if cur.Attempt != r.Attempt || !cur.Wanted() {
				return true, nil
			}
			r = cur
		}
		first = false
		err := (&job{rc: rc, r: r, log: log}).run(ctx)
		if errors.Is(err, errFallBack) || errors.Is(err, errReplay) {
			return false, nil // start again at once, as the verdict says
		}
		return err == nil, err
	})
}

// inventoryTimeout bounds the JetStream requests that tell a receiver's
// site: the sender waits for the answer.
const inventoryTimeout = 10 * time.Second

// Inventory lists the committed snapshots the target holds: read-only
// subvolumes with a received UUID. Anything else at a snapshot's name (a
// writable leftover of an interrupted receive) is not a base. It names the
// site the receiver is at, so that the coordinator gives the site a copy.
func (rc *Receiver) Inventory(ctx context.Context) (streams.Inventory, error) {
	inv := streams.Inventory{Target: rc.target, Dir: rc.dir, Snapshots: []streams.Held{}, Decodes: streams.Decodes()}
	site, err := rc.site(ctx)
	if err != nil {
		return inv, err
	}
	inv.Site = site
	rc.mu.Lock()
	inv.StateDomain = rc.state
	rc.mu.Unlock()
	subs, err := btrfs.List(rc.dir)
	if err != nil {
		return inv, err
	}
	for _, s := range subs {
		if s.ReadOnly && !s.ReceivedUUID.IsZero() {
			inv.Snapshots = append(inv.Snapshots, streams.Held{Name: filepath.Base(s.Path), Path: s.Path, ReceivedUUID: s.ReceivedUUID.String()})
		}
	}
	return inv, nil
}

// site is the JetStream domain of the server this receiver is connected to
// when the state is in another one (a site node whose clients reach the
// hub with --js-domain): the site whose copy of each stream the target
// consumes. It is "" when the receiver uses the state's JetStream for
// everything (at the hub, or at a leaf node without JetStream).
func (rc *Receiver) site(ctx context.Context) (string, error) {
	rc.mu.Lock()
	known := rc.domain
	rc.mu.Unlock()
	if known != nil {
		return *known, nil
	}
	local, err := jetstream.New(rc.nc)
	if err != nil {
		return "", err
	}
	state, err := rc.js.AccountInfo(ctx)
	if err != nil {
		return "", fmt.Errorf("JetStream of the state: %w", err)
	}
	site := ""
	here, err := local.AccountInfo(ctx)
	switch {
	case errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount), errors.Is(err, nats.ErrNoResponders):
		// No JetStream here: the state's is the only one.
	case err != nil:
		return "", fmt.Errorf("JetStream of the server this receiver is connected to: %w", err)
	case here.Domain != state.Domain:
		site = here.Domain
	}
	rc.mu.Lock()
	rc.domain, rc.state = &site, state.Domain
	rc.mu.Unlock()
	if site != "" {
		rc.log.Info("receiving from the site's copies", "site", site, "hub", state.Domain)
	}
	return site, nil
}

// jsAt is the JetStream holding the copy of a stream that w names: the
// state's for the stream itself, else the site's, by its domain.
func (rc *Receiver) jsAt(w *coordinator.Work) (jetstream.JetStream, error) {
	if w.Site == "" {
		return rc.js, nil
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if js := rc.sites[w.Site]; js != nil {
		return js, nil
	}
	js, err := jetstream.NewWithDomain(rc.nc, w.Site)
	if err != nil {
		return nil, err
	}
	rc.sites[w.Site] = js
	return js, nil
}

// ErrNotOurs refuses a delete request for anything but a committed snapshot
// that snapjet received into the target directory.
var ErrNotOurs = errors.New("not a snapshot snapjet committed here")

// DeleteCommitted deletes the committed snapshot d names, for the retention
// of the job that sends here. It refuses a name outside the target
// directory (or in its staging) and anything that is not a read-only
// subvolume received with d.ReceivedUUID: an operator's data at that name,
// a partial, another source's snapshot.
func (rc *Receiver) DeleteCommitted(ctx context.Context, d streams.DeleteRequest) error {
	if d.Name == "" || d.Name != filepath.Base(d.Name) || strings.HasPrefix(d.Name, ".") {
		return fmt.Errorf("delete %q: %w: a snapshot's name is a plain entry of %s", d.Name, ErrNotOurs, rc.dir)
	}
	want, err := btrfs.ParseUUID(d.ReceivedUUID)
	if err != nil || want.IsZero() {
		return fmt.Errorf("delete %s: received UUID %q: %w", d.Name, d.ReceivedUUID, ErrNotOurs)
	}
	path := filepath.Join(rc.dir, d.Name)
	info, err := btrfs.Inspect(path)
	if errors.Is(err, btrfs.ErrNotFound) {
		return nil // already gone: what was asked holds
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", path, err)
	}
	if !info.ReadOnly || info.ReceivedUUID != want {
		return fmt.Errorf("delete %s: %w (read-only %v, received UUID %s, asked for %s)", path, ErrNotOurs, info.ReadOnly, info.ReceivedUUID, want)
	}
	if err := btrfs.DeleteSubvolume(ctx, path); err != nil {
		return err
	}
	rc.log.Info("deleted by retention", "snapshot", path, "received_uuid", want)
	return nil
}

// cleanStaging discards what a crash left in staging for replications that
// are no longer active here; active ones are handled by their job. Only the
// coordinator's word discards: a record that cannot be read now (a server
// that is restarting) keeps its staging, which may be a resumable partial.
func (rc *Receiver) cleanStaging(ctx context.Context) error {
	base := filepath.Join(rc.dir, ".snapjet", "incoming")
	entries, err := os.ReadDir(base)
	if err != nil {
		return fmt.Errorf("read staging area %s: %w", base, err)
	}
	for _, e := range entries {
		w, err := rc.store.Work(ctx, rc.target, e.Name())
		switch {
		case err == nil && w.Wanted():
			continue
		case err != nil && !errors.Is(err, coordinator.ErrNotFound):
			rc.log.Warn("keeping staging: its replication record cannot be read now", "replication", e.Name(), "error", err)
			continue
		}
		rc.log.Info("discarding leftover staging", "replication", e.Name())
		if err := discard(ctx, filepath.Join(base, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// discard deletes a staging directory and every subvolume in it.
func discard(ctx context.Context, staging string) error {
	subs, err := btrfs.List(staging)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if err := btrfs.DeleteSubvolume(ctx, s.Path); err != nil {
			return fmt.Errorf("discard partial %s: %w", s.Path, err)
		}
	}
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("discard staging %s: %w", staging, err)
	}
	return nil
}

// Report retries: a report other than progress is repeated until the
// coordinator answers or the record shows the answer no longer matters.
const (
	reportTimeout = 10 * time.Second // one request
	reportGiveUp  = 10 * time.Minute // then the job is retried from its checkpoint
)

// report sends one report to the coordinator. Reports other than progress
// are retried until answered (the coordinator may be restarting or the link
// down), with a log line naming what is waited for, and end without an
// answer once the record shows the attempt is over for this target (a
// committed report whose reply was lost) or after reportGiveUp.
func (rc *Receiver) report(ctx context.Context, id string, rep streams.Report) (streams.Verdict, error) {
	rep.Target = rc.target
	body, _ := json.Marshal(rep)
	since := time.Now()
	b := retry.New(time.Second, 10*time.Second)
	for {
		v, err := rc.request(ctx, id, body)
		if err == nil {
			if rep.Event == streams.EvRewind {
				rc.metrics.Rewound(rc.target)
			}
			return v, nil
		}
		if rep.Event == streams.EvProgress || ctx.Err() != nil {
			return streams.Verdict{}, fmt.Errorf("report %s of %s: %w", rep.Event, id, err)
		}
		if rc.settled(ctx, id, rep) {
			rc.log.Info("report no longer needed: the record moved on", "replication", id, "event", rep.Event)
			return streams.Verdict{Action: streams.ActStale, Attempt: rep.Attempt}, nil
		}
		if time.Since(since) > reportGiveUp {
			return streams.Verdict{}, fmt.Errorf("report %s of %s: no answer from the coordinator for %v (is `snapjet send` running?): %w", rep.Event, id, reportGiveUp, err)
		}
		rc.log.Warn("coordinator does not answer; retrying report", "replication", id, "event", rep.Event,
			"since", since.Format(time.RFC3339), "error", err)
		if err := b.Wait(ctx); err != nil {
			return streams.Verdict{}, err
		}
	}
}

// request sends one report and decodes the verdict. The service error
// header is read first: an error reply is not a verdict.
func (rc *Receiver) request(ctx context.Context, id string, body []byte) (streams.Verdict, error) {
	rctx, cancel := context.WithTimeout(ctx, reportTimeout)
	defer cancel()
	msg, err := rc.nc.RequestWithContext(rctx, streams.ReportSubject(id, rc.target), body)
	if err != nil {
		return streams.Verdict{}, err
	}
	if e := msg.Header.Get(micro.ErrorHeader); e != "" {
		return streams.Verdict{}, errors.New(e)
	}
	var v streams.Verdict
	if err := json.Unmarshal(msg.Data, &v); err != nil {
		return streams.Verdict{}, fmt.Errorf("decode verdict: %w", err)
	}
	return v, nil
}

// settled reports whether the record shows that rep no longer needs an
// answer: the replication or this target finished, or another attempt began.
func (rc *Receiver) settled(ctx context.Context, id string, rep streams.Report) bool {
	w, err := rc.store.Work(ctx, rc.target, id)
	if errors.Is(err, coordinator.ErrNotFound) {
		return true
	}
	if err != nil {
		return false
	}
	return w.Over(rep.Attempt)
}
