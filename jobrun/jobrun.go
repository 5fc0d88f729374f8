// Package jobrun carries out one run of one job of the config file:
// snapshot the source and replicate it to the job's targets (receivers for
// its local target directories run in-process for the run; remote:NAME
// targets are served by their own receivers), then apply the job's
// retention with package prune. `snapjet run` calls it once; the daemon
// calls it on the job's schedule.
package jobrun

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/prune"
	"github.com/snapjet/snapjet/receiver"
	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

// Options tune a run; the zero value is the production default.
type Options struct {
	Log     *slog.Logger
	Applier string // of the local targets' receivers; default receiver.Native
	// Send is the starting point of the sender's options (timeouts); the
	// job's source, targets, chunk size and window replace its fields.
	Send sender.Options
	// Now is the clock of retention (default time.Now); Location the time
	// zone of its buckets (default time.Local).
	Now      func() time.Time
	Location *time.Location
	// OnProgress, when set, is told the sender's progress.
	OnProgress func(sender.Progress)
	// Delete removes a subvolume (default btrfs.DeleteSubvolume).
	Delete func(ctx context.Context, path string) error
	// Metrics, when set, is told what the run does (nil: nothing).
	Metrics *metrics.Metrics
}

// DefaultReceiverWait is how long a run waits for the targets' receivers
// to answer (`replicate --receiver-wait`'s default).
const DefaultReceiverWait = 30 * time.Second

// Target is where one target of the job ended.
type Target struct {
	Name        string // its target name (a local directory's derived name)
	Display     string // as written in the config file
	Committed   bool
	Path        string // the committed copy
	State       coordinator.TargetState
	Error       string
	Replication string
}

// Outcome is what one run did.
type Outcome struct {
	Snapshot string
	Targets  []Target
	Plan     *prune.Plan // nil when the replication did not run to its end
	Deleted  []string
	PruneErr error
}

// Failed lists the targets that did not commit.
func (o *Outcome) Failed() []Target {
	var out []Target
	for _, t := range o.Targets {
		if !t.Committed {
			out = append(out, t)
		}
	}
	return out
}

// TargetName is the target name of one target of a job.
func TargetName(t config.Target) string {
	if t.Remote != "" {
		return t.Remote
	}
	return prune.LocalTargetName(t.Dir)
}

// Run replicates the job once and then prunes it. The error is for a run
// that could not be carried out (bad source, NATS unreachable, cancelled);
// targets that failed are in the outcome, and no retention deletes what
// they still need (package retention holds everything of a failed target).
func Run(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, job config.Job, opt Options) (*Outcome, error) {
	opt = opt.withDefaults()
	log := opt.Log.With("job", job.Name)
	if _, _, err := sender.CheckSource(job.Source); err != nil {
		return nil, err
	}
	names := make([]string, len(job.Targets))
	for i, t := range job.Targets {
		names[i] = TargetName(t)
		if t.Dir != "" {
			if _, err := receiver.CheckTarget(t.Dir); err != nil {
				return nil, fmt.Errorf("job %s: %w", job.Name, err)
			}
		}
	}
	stop, err := startLocalReceivers(ctx, nc, js, job, names, opt, log)
	if err != nil {
		return nil, err
	}
	defer stop()
	coord, err := coordinator.New(ctx, nc, js, log)
	if err != nil {
		return nil, err
	}
	defer coord.Close()
	so := opt.Send
	so.Source, so.Targets, so.ChunkSize, so.Window, so.RateLimit = job.Source, names, job.ChunkSize, job.Window, job.RateLimit
	so.Now, so.Compress = opt.Now, job.Compress
	if !job.Retain.Target.IsZero() {
		so.Intermediates = intermediates(job.Retain.Target, opt.Now, opt.Location)
	}
	if so.ChunkSize == 0 {
		so.ChunkSize = sender.DefaultChunkSize
	}
	if so.Window == 0 {
		so.Window = sender.DefaultWindow
	}
	if so.InventoryTimeout == 0 {
		// The local receivers started just now; remote ones may be
		// reconnecting: as long as `replicate` waits for them.
		so.InventoryTimeout = DefaultReceiverWait
	}
	src, err := sender.NewBtrfsSource(job.CompressedData, log)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", job.Name, err)
	}
	s := &sender.Sender{NC: nc, JS: js, Coord: coord, Streams: src, Log: log, OnProgress: opt.OnProgress, Metrics: opt.Metrics, Job: job.Name}
	res, err := s.Run(ctx, so)
	if err != nil {
		return nil, fmt.Errorf("job %s: %w", job.Name, err)
	}
	out := &Outcome{}
	if len(res.Records) > 0 {
		out.Snapshot = res.Records[0].SnapshotName
	}
	for i, name := range names {
		t := Target{Name: name, Display: job.Targets[i].String()}
		if r, rt := res.Outcome(name); rt == nil {
			t.Error = "not part of this run"
		} else {
			t.Replication, t.State, t.Path, t.Error = r.ID, rt.State, rt.Path, rt.Error
			t.Committed = rt.State == coordinator.TCommitted
		}
		out.Targets = append(out.Targets, t)
	}
	stop() // the receivers' work is done; prune may delete on their targets
	out.Plan, err = Plan(ctx, nc, job, opt)
	if err != nil {
		out.PruneErr = err
		return out, nil
	}
	out.Deleted, out.PruneErr = out.Plan.Apply(ctx, opt.Delete, opt.state(nc))
	countDeletions(opt.Metrics, out.Plan, out.Deleted)
	if len(out.Deleted) > 0 {
		log.Info("retention deleted snapshots", "count", len(out.Deleted))
	}
	return out, nil
}

// Plan is the retention plan of the job now, as Run would apply it.
func Plan(ctx context.Context, nc *nats.Conn, job config.Job, opt Options) (*prune.Plan, error) {
	opt = opt.withDefaults()
	return prune.Build(ctx, job, opt.state(nc), opt.Now(), opt.Location)
}

// state answers prune's questions, waiting for a remote receiver no
// longer than the run's own inventory wait.
func (opt Options) state(nc *nats.Conn) *State {
	wait := InventoryWait
	if w := opt.Send.InventoryTimeout; w > 0 {
		wait = min(wait, w)
	}
	return &State{NC: nc, Wait: wait}
}

func (opt Options) withDefaults() Options {
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	if opt.Applier == "" {
		opt.Applier = receiver.Native
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Location == nil {
		opt.Location = time.Local
	}
	if opt.Delete == nil {
		opt.Delete = btrfs.DeleteSubvolume
	}
	return opt
}

// intermediates chooses, of the snapshots a target that was away lacks,
// those the job's target retention would keep once the new snapshot (taken
// now) is there: the history the target would have had. Without a target
// policy (keep everything) a returning target gets only the new snapshot.
func intermediates(policy retention.Policy, now func() time.Time, loc *time.Location) func([]btrfs.Info) []btrfs.Info {
	return func(missing []btrfs.Info) []btrfs.Info {
		t := now()
		in := retention.Input{Now: t, Policy: policy, Location: loc}
		for _, s := range missing {
			in.Snapshots = append(in.Snapshots, retention.Snapshot{Name: filepath.Base(s.Path), Created: prune.Created(s)})
		}
		const next = "\x00the new snapshot" // no snapshot's name
		in.Snapshots = append(in.Snapshots, retention.Snapshot{Name: next, Created: t})
		keep := map[string]bool{}
		for _, d := range retention.Decide(in) {
			keep[d.Name] = d.Keep
		}
		var out []btrfs.Info
		for _, s := range missing {
			if keep[filepath.Base(s.Path)] {
				out = append(out, s)
			}
		}
		return out
	}
}

// countDeletions reports the deleted snapshots by side.
func countDeletions(m *metrics.Metrics, p *prune.Plan, deleted []string) {
	gone := map[string]bool{}
	for _, d := range deleted {
		gone[d] = true
	}
	for _, side := range p.Sides {
		n := 0
		for _, it := range side.Items {
			if !it.Keep && gone[it.Path] {
				n++
			}
		}
		if n > 0 {
			m.Pruned(p.Job, side.Kind, n)
		}
	}
}

// startLocalReceivers runs a receiver for each local target directory of
// the job until the returned stop is called (it may be called twice).
func startLocalReceivers(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, job config.Job, names []string, opt Options, log *slog.Logger) (stop func(), err error) {
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	for i, t := range job.Targets {
		if t.Dir == "" {
			continue
		}
		rc, err := receiver.New(ctx, nc, js, names[i], t.Dir, log, receiver.WithApplier(opt.Applier), receiver.WithMetrics(opt.Metrics))
		if err != nil {
			stop()
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := rc.Run(rctx); err != nil && rctx.Err() == nil {
				log.Error("receiver of a local target stopped", "target", t.Dir, "error", err)
			}
		}()
	}
	return stop, nil
}

// State answers prune's questions from NATS: the replication records and
// what remote targets hold.
type State struct {
	NC *nats.Conn
	// Err, when set, is the answer to every question: prune then keeps
	// everything rather than guess.
	Err error
	// Wait bounds how long a remote receiver is waited for (default
	// InventoryWait).
	Wait time.Duration
}

// Records lists every replication record.
func (s *State) Records(ctx context.Context) ([]*coordinator.Replication, error) {
	if s.Err != nil {
		return nil, s.Err
	}
	js, err := jetstream.New(s.NC)
	if err != nil {
		return nil, err
	}
	store, err := coordinator.BindStore(ctx, js)
	if err != nil {
		return nil, err
	}
	return store.List(ctx)
}

// InventoryWait bounds how long prune waits for a remote receiver.
const InventoryWait = 5 * time.Second

// Inventory lists the committed snapshots a remote target holds.
func (s *State) Inventory(ctx context.Context, target string) (streams.Inventory, error) {
	if s.Err != nil {
		return streams.Inventory{}, s.Err
	}
	inv, unreachable := sender.Inventories(ctx, s.NC, []string{target}, cmp.Or(s.Wait, InventoryWait))
	if err := unreachable[target]; err != nil {
		return streams.Inventory{}, err
	}
	return inv[target], nil
}

// DeleteWait bounds one delete request to a remote receiver (deleting a
// subvolume returns at once; btrfs cleans it up in the background).
const DeleteWait = 30 * time.Second

// DeleteRemote asks target's receiver to delete one committed snapshot.
func (s *State) DeleteRemote(ctx context.Context, target string, d streams.DeleteRequest) error {
	if s.Err != nil {
		return s.Err
	}
	body, err := json.Marshal(d)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, DeleteWait)
	defer cancel()
	msg, err := s.NC.RequestWithContext(rctx, streams.PruneSubject(target), body)
	if err != nil {
		return fmt.Errorf("receiver of %s: %w", target, err)
	}
	if e := msg.Header.Get(micro.ErrorHeader); e != "" {
		return fmt.Errorf("receiver of %s refused: %s", target, e)
	}
	return nil
}
