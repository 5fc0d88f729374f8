package jobrun

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/prune"
	"github.com/snapjet/snapjet/receiver"
	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
)

// TestRetentionRounds runs one job 60 times on real btrfs and NATS with
// time compressed (20 minutes a round) and `latest 3, hourly 2` on both
// sides, to a local target and a remote one whose receiver is down for
// rounds 21–30. After every round, on every side: each snapshot the policy
// picks from everything that side ever had is there; whatever else is
// there is a protected base; every target's base is on the source. While
// the remote target is down nothing is pruned on the source, and when it
// is back it catches up with the intermediate snapshots its policy keeps,
// each as an incremental.
func TestRetentionRounds(t *testing.T) {
	const rounds, downFrom, downTo = 60, 21, 30
	f := newFixture(t, 4<<20)
	ctx := context.Background()
	site := filepath.Join(filepath.Dir(f.backup), "siteb")
	if err := os.Mkdir(site, 0o755); err != nil {
		t.Fatal(err)
	}
	policy := retention.Policy{Latest: 3, Hourly: 2}
	job := f.job()
	job.Targets = append(job.Targets, config.Target{Remote: "siteb"})
	job.Retain = config.Retain{Source: policy, Target: policy}
	local := TargetName(job.Targets[0])

	var clock atomic.Int64
	clock.Store(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	opt := Options{Log: f.log, Now: now, Location: time.UTC, Send: sender.Options{InventoryTimeout: 2 * time.Second}}

	startSite := func() (stop func()) {
		rc, err := receiver.New(ctx, f.b.NC, f.b.JS, "siteb", site, f.log)
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = rc.Run(rctx) }()
		return func() { cancel(); <-done }
	}
	stopSite := startSite()
	defer func() { stopSite() }()

	history := map[string][]string{} // side → every snapshot it ever had
	for round := 1; round <= rounds; round++ {
		clock.Add(int64(20 * time.Minute))
		change := make([]byte, 128<<10)
		_, _ = rand.Read(change)
		if err := os.WriteFile(filepath.Join(f.src, fmt.Sprintf("round-%02d", round)), change, 0o644); err != nil {
			t.Fatal(err)
		}
		switch round {
		case downFrom:
			stopSite()
			stopSite = func() {}
		case downTo + 1:
			stopSite = startSite()
		}
		down := round >= downFrom && round <= downTo
		siteBefore, sourceBefore := names(t, site), names(t, sender.SnapshotDir(f.src))

		out, err := Run(ctx, f.b.NC, f.b.JS, job, opt)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		var failed []string
		for _, ft := range out.Failed() {
			failed = append(failed, ft.Name)
		}
		if want := map[bool][]string{true: {"siteb"}, false: nil}[down]; !slices.Equal(failed, want) {
			t.Fatalf("round %d: failed targets %v, want %v", round, failed, want)
		}
		if out.PruneErr != nil {
			t.Fatalf("round %d: prune: %v", round, out.PruneErr)
		}

		sides := map[string][]string{"source": names(t, sender.SnapshotDir(f.src)), local: names(t, f.backup), "siteb": names(t, site)}
		for side, have := range sides {
			history[side] = union(history[side], have)
		}
		if down {
			// A failed target holds everything on the source; its own
			// side is untouched.
			if gone := minus(sourceBefore, sides["source"]); len(gone) > 0 {
				t.Errorf("round %d: the source lost %v while siteb was failing", round, gone)
			}
			if !slices.Equal(sides["siteb"], siteBefore) {
				t.Errorf("round %d: siteb changed while down: %v → %v", round, siteBefore, sides["siteb"])
			}
			continue
		}
		bases := map[string]string{local: newest(sides[local]), "siteb": newest(sides["siteb"])}
		parent := newestCommon(sides[local], sides["siteb"])
		for side, have := range sides {
			picked := policyPicks(policy, history[side])
			if missing := minus(picked, have); len(missing) > 0 {
				t.Errorf("round %d: %s lost %v, which the policy keeps", round, side, missing)
			}
			allowed := union(picked, []string{parent})
			if side == "source" {
				allowed = union(allowed, []string{bases[local], bases["siteb"]})
			} else {
				allowed = union(allowed, []string{bases[side]})
			}
			if extra := minus(have, allowed); len(extra) > 0 {
				t.Errorf("round %d: %s keeps %v, which neither the policy nor a base protects", round, side, extra)
			}
		}
		for target, base := range bases {
			if !slices.Contains(sides["source"], base) {
				t.Errorf("round %d: the base %s of %s is gone from the source", round, base, target)
			}
		}
		if round == downTo+1 {
			assertCaughtUp(t, ctx, f, siteBefore, sides["siteb"], history["source"])
		}
	}
	t.Logf("after %d rounds: source %v, %s %v, siteb %v", rounds, names(t, sender.SnapshotDir(f.src)), local, names(t, f.backup), names(t, site))
}

// assertCaughtUp checks the round the remote target came back in: it got
// the intermediate snapshots its policy keeps, oldest first, each as an
// incremental much smaller than a full send.
func assertCaughtUp(t *testing.T, ctx context.Context, f *fixture, before, after, source []string) {
	t.Helper()
	store, err := coordinator.BindStore(ctx, f.b.JS)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := store.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A full send's size: the first run's stream, before 30 rounds of
	// changes were added.
	var full int64
	for _, r := range recs {
		if r.ParentUUID == "" {
			full = max(full, r.TotalBytes)
		}
	}
	var caught []string
	for _, r := range recs {
		tt := r.Targets["siteb"]
		if !strings.Contains(r.ID, "_catchup") || tt == nil {
			continue
		}
		caught = append(caught, r.SnapshotName)
		t.Logf("catch-up: %s to siteb from parent %s: %s, %d bytes sent (a full send: more than %d)", r.SnapshotName, filepath.Base(r.Parent), tt.State, r.BytesSent, full)
		if tt.State != coordinator.TCommitted || r.ParentUUID == "" || r.BytesSent > full/2 {
			t.Errorf("catch-up of %s: state %s, parent %q, %d bytes: want an incremental, committed", r.SnapshotName, tt.State, r.Parent, r.BytesSent)
		}
	}
	if len(caught) == 0 {
		t.Fatalf("siteb came back with %v and got no intermediate snapshot; now holds %v", before, after)
	}
	if !slices.IsSorted(caught) {
		t.Errorf("intermediate snapshots sent out of order: %v", caught)
	}
	for _, c := range caught {
		if !slices.Contains(source, c) {
			t.Errorf("catch-up sent %s, which the source never had", c)
		}
	}
}

// names lists the read-only snapshots of the share in dir, oldest first
// (their names carry the time).
func names(t *testing.T, dir string) []string {
	t.Helper()
	subs, err := btrfs.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range subs {
		if s.ReadOnly && strings.HasPrefix(filepath.Base(s.Path), "share.") {
			out = append(out, filepath.Base(s.Path))
		}
	}
	sort.Strings(out)
	return out
}

// policyPicks is what `latest N, hourly M` keeps of names by itself, written
// out independently of package retention: the N newest, and the newest of
// each of the M most recent hours that have one.
func policyPicks(p retention.Policy, names []string) []string {
	sorted := slices.Clone(names)
	sort.Sort(sort.Reverse(sort.StringSlice(sorted)))
	var out []string
	for i, n := range sorted {
		if i < p.Latest {
			out = append(out, n)
		}
	}
	hours := map[string]bool{}
	for _, n := range sorted {
		hour := prune.Created(btrfs.Info{Path: n}).Format("2006010215")
		if !hours[hour] && len(hours) < p.Hourly {
			hours[hour] = true
			out = append(out, n)
		}
	}
	return union(nil, out)
}

func newest(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return slices.Max(names)
}

func newestCommon(a, b []string) string {
	var both []string
	for _, n := range a {
		if slices.Contains(b, n) {
			both = append(both, n)
		}
	}
	return newest(both)
}

// union is a ∪ b, sorted, without empty names.
func union(a, b []string) []string {
	var out []string
	for _, n := range append(slices.Clone(a), b...) {
		if n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// minus is a \ b.
func minus(a, b []string) []string {
	var out []string
	for _, n := range a {
		if !slices.Contains(b, n) {
			out = append(out, n)
		}
	}
	return out
}
