package prune

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

// fakeState stands in for NATS and remote receivers.
type fakeState struct {
	recs    []*coordinator.Replication
	recErr  error
	inv     map[string]streams.Inventory
	invErrs map[string]error
	deleted []string // target/name of every remote delete asked for
}

func (f *fakeState) Records(context.Context) ([]*coordinator.Replication, error) {
	return f.recs, f.recErr
}

func (f *fakeState) Inventory(_ context.Context, target string) (streams.Inventory, error) {
	return f.inv[target], f.invErrs[target]
}

// DeleteRemote records the request and carries it out on the inventory,
// as a receiver would.
func (f *fakeState) DeleteRemote(_ context.Context, target string, d streams.DeleteRequest) error {
	f.deleted = append(f.deleted, target+"/"+d.Name+"@"+d.ReceivedUUID)
	inv := f.inv[target]
	inv.Snapshots = slices.DeleteFunc(slices.Clone(inv.Snapshots), func(h streams.Held) bool {
		return h.Name == d.Name && h.ReceivedUUID == d.ReceivedUUID
	})
	f.inv[target] = inv
	return nil
}

// remoteHolding is the inventory of a remote target holding the layout's
// source snapshots of hours.
func (l *layout) remoteHolding(target string, hours ...string) streams.Inventory {
	inv := streams.Inventory{Target: target, Dir: "/remote/" + target}
	for _, h := range hours {
		name := filepath.Base(l.snaps[h].Path)
		inv.Snapshots = append(inv.Snapshots, streams.Held{Name: name, Path: "/remote/" + target + "/" + name, ReceivedUUID: l.snaps[h].UUID.String()})
	}
	return inv
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// layout is a source with five snapshots (one an hour from 10:00) of which
// the one of 12:00 was pruned on the source already, and a local target
// that received 10:00, 11:00 and 12:00; so the base is 11:00, which no
// "latest 1" keeps on either side. Beside them: things prune must never
// touch (a writable subvolume among the snapshots; on the target a
// read-only snapshot that was not received, and a writable subvolume).
type layout struct {
	job   config.Job
	snaps map[string]btrfs.Info // by hour "10" … "14", source side
}

func newLayout(t *testing.T) *layout {
	ctx := context.Background()
	fs := loopfs.New(t, 256<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	must(t, os.MkdirAll(filepath.Dir(src), 0o755))
	must(t, btrfs.CreateSubvolume(ctx, src))
	dir := sender.SnapshotDir(src)
	must(t, os.MkdirAll(dir, 0o700))
	backup := filepath.Join(fs.Dir, "backup")
	must(t, os.MkdirAll(backup, 0o755))
	l := &layout{snaps: map[string]btrfs.Info{}, job: config.Job{Name: "share", Source: src, Targets: []config.Target{{Dir: backup}},
		Retain: config.Retain{Source: retention.Policy{Latest: 1}, Target: retention.Policy{Latest: 1}}}}
	for h := 10; h <= 14; h++ {
		must(t, os.WriteFile(filepath.Join(src, "file"), []byte(fmt.Sprint(h)), 0o644))
		path := filepath.Join(dir, fmt.Sprintf("share.20261130T%d0000Z", h))
		must(t, btrfs.Snapshot(ctx, src, path, true))
		info, err := btrfs.Inspect(path)
		must(t, err)
		l.snaps[fmt.Sprint(h)] = info
		if h <= 12 {
			sendReceive(t, path, backup)
		}
	}
	must(t, btrfs.DeleteSubvolume(ctx, l.snaps["12"].Path))
	must(t, btrfs.CreateSubvolume(ctx, filepath.Join(dir, "scratch")))
	must(t, btrfs.Snapshot(ctx, src, filepath.Join(backup, "share.20261129T000000Z"), true))
	must(t, btrfs.CreateSubvolume(ctx, filepath.Join(backup, "other")))
	return l
}

func sendReceive(t *testing.T, snap, dir string) {
	t.Helper()
	ctx := context.Background()
	stream, send, err := btrfs.Send(ctx, snap, btrfs.SendOptions{})
	must(t, err)
	recvErr := btrfs.Receive(ctx, dir, stream)
	stream.Close()
	must(t, send.Wait())
	must(t, recvErr)
}

// record is a replication record of the layout's source.
func (l *layout) record(hour, parentHour string, state coordinator.State, target coordinator.TargetState) *coordinator.Replication {
	r := &coordinator.Replication{ID: "share_20261130T" + hour + "0000Z", Source: l.job.Source, State: state,
		SnapshotUUID: l.snaps[hour].UUID.String(), Created: time.Date(2026, 11, 30, atoi(hour), 0, 1, 0, time.UTC),
		Targets: map[string]*coordinator.Target{LocalTargetName(l.job.Targets[0].Dir): {State: target}}}
	if parentHour != "" {
		r.ParentUUID = l.snaps[parentHour].UUID.String()
	}
	return r
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

// render prints a plan as "side verdict name: rule" lines.
func render(p *Plan) string {
	var b strings.Builder
	for _, s := range p.Sides {
		for _, it := range s.Items {
			verdict := "delete"
			if it.Keep {
				verdict = "keep"
			}
			kind := s.Kind
			if s.Remote {
				kind = "remote " + s.Target
			}
			fmt.Fprintf(&b, "%s %s %s: %s\n", kind, verdict, it.Name, it.Rule)
		}
	}
	for _, r := range p.Unknown {
		fmt.Fprintf(&b, "unknown %s\n", r)
	}
	return strings.ReplaceAll(b.String(), "share.20261130T", "")
}

// subvolumes lists every subvolume under root, for before/after checks.
func subvolumes(t *testing.T, root string) []string {
	var out []string
	must(t, filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root && btrfs.IsSubvolume(p) {
			out = append(out, strings.TrimPrefix(p, root))
		}
		return err
	}))
	sort.Strings(out)
	return out
}

var now = time.Date(2026, 11, 30, 15, 0, 0, 0, time.UTC)

// TestPlanOnRealBtrfs checks the plan of one real layout under different
// replication states; it deletes nothing.
func TestPlanOnRealBtrfs(t *testing.T) {
	l := newLayout(t)
	name := LocalTargetName(l.job.Targets[0].Dir)
	ctx := context.Background()
	cases := []struct {
		name  string
		state func() *fakeState
		want  string
	}{
		{"base kept on both sides; the copy whose source is gone is known by its record", func() *fakeState {
			return &fakeState{recs: []*coordinator.Replication{l.record("12", "11", coordinator.Done, coordinator.TCommitted)}}
		}, `
source keep 140000Z: latest 1
source delete 130000Z: not kept by latest 1
source keep 110000Z: base of target NAME
source delete 100000Z: not kept by latest 1
target keep 120000Z: latest 1
target keep 110000Z: base of target NAME
target delete 100000Z: not kept by latest 1
`},
		{"without its record the copy of 12:00 is not ours to judge", func() *fakeState { return &fakeState{} }, `
source keep 140000Z: latest 1
source delete 130000Z: not kept by latest 1
source keep 110000Z: base of target NAME
source delete 100000Z: not kept by latest 1
target keep 110000Z: base of target NAME
target delete 100000Z: not kept by latest 1
`},
		{"the target failed its last run: nothing goes on either side", func() *fakeState {
			return &fakeState{recs: []*coordinator.Replication{l.record("12", "11", coordinator.Done, coordinator.TCommitted), l.record("14", "11", coordinator.Failed, coordinator.TFailed)}}
		}, `
source keep 140000Z: target NAME failed last run
source keep 130000Z: target NAME failed last run
source keep 110000Z: target NAME failed last run
source keep 100000Z: target NAME failed last run
target keep 120000Z: target NAME failed last run
target keep 110000Z: target NAME failed last run
target keep 100000Z: target NAME failed last run
`},
		{"an unfinished replication keeps its snapshot and parent", func() *fakeState {
			return &fakeState{recs: []*coordinator.Replication{l.record("13", "10", coordinator.Sending, coordinator.TReceiving)}}
		}, `
source keep 140000Z: latest 1
source keep 130000Z: needed by unfinished replication share_20261130T130000Z
source keep 110000Z: base of target NAME
source keep 100000Z: needed by unfinished replication share_20261130T130000Z
target keep 110000Z: base of target NAME
target keep 100000Z: needed by unfinished replication share_20261130T130000Z
`},
		{"an older failed replication needs nothing: the next run never retries it", func() *fakeState {
			return &fakeState{recs: []*coordinator.Replication{l.record("13", "10", coordinator.Failed, coordinator.TFailed), l.record("14", "11", coordinator.Done, coordinator.TCommitted)}}
		}, `
source keep 140000Z: latest 1
source delete 130000Z: not kept by latest 1
source keep 110000Z: base of target NAME
source delete 100000Z: not kept by latest 1
target keep 110000Z: base of target NAME
target delete 100000Z: not kept by latest 1
`},
		{"unreadable records hold everything", func() *fakeState { return &fakeState{recErr: errors.New("no server")} }, `
source keep 140000Z: replication records unreadable (no server)
source keep 130000Z: replication records unreadable (no server)
source keep 110000Z: replication records unreadable (no server)
source keep 100000Z: replication records unreadable (no server)
target keep 110000Z: replication records unreadable (no server)
target keep 100000Z: replication records unreadable (no server)
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Build(ctx, l.job, tc.state(), now, time.UTC)
			must(t, err)
			if got := "\n" + strings.ReplaceAll(render(p), name, "NAME"); got != tc.want {
				t.Errorf("got:%s\nwant:%s", got, tc.want)
			}
		})
	}

	t.Run("a remote target's base is kept, and an unknown one holds the source", func(t *testing.T) {
		job := l.job
		job.Targets = append(job.Targets, config.Target{Remote: "site-b"})
		st := &fakeState{inv: map[string]streams.Inventory{"site-b": l.remoteHolding("site-b", "13")}}
		p, err := Build(ctx, job, st, now, time.UTC)
		must(t, err)
		want := "source keep 140000Z: latest 1\nsource keep 130000Z: base of target site-b\n"
		if got := render(p); !strings.HasPrefix(got, want) || !strings.HasSuffix(got, "remote site-b keep 130000Z: base of target site-b\n") {
			t.Errorf("got:\n%s", got)
		}
		st.invErrs = map[string]error{"site-b": errors.New("no receiver answers")}
		p, err = Build(ctx, job, st, now, time.UTC)
		must(t, err)
		if got := render(p); !strings.Contains(got, "source keep 100000Z: what target site-b holds is unknown (no receiver answers)\n") ||
			!strings.Contains(got, "target keep 100000Z: what target site-b holds is unknown (no receiver answers)\n") {
			t.Errorf("got:\n%s", got)
		}
	})
}

// TestParentOfTheNextRunSurvives: two targets out of step (a holds 10,
// 11, 13; b holds 10, 11, 12). One send feeds both, so the next run sends
// from 11, the newest both hold, which is neither's own base: every side
// keeps it.
func TestParentOfTheNextRunSurvives(t *testing.T) {
	ctx := context.Background()
	fs := loopfs.New(t, 256<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	a, b := filepath.Join(fs.Dir, "a"), filepath.Join(fs.Dir, "b")
	for _, d := range []string{filepath.Dir(src), a, b, sender.SnapshotDir(src)} {
		must(t, os.MkdirAll(d, 0o755))
	}
	must(t, btrfs.CreateSubvolume(ctx, src))
	for h := 10; h <= 13; h++ {
		path := filepath.Join(sender.SnapshotDir(src), fmt.Sprintf("share.20261130T%d0000Z", h))
		must(t, btrfs.Snapshot(ctx, src, path, true))
		if h != 12 {
			sendReceive(t, path, a)
		}
		if h != 13 {
			sendReceive(t, path, b)
		}
	}
	job := config.Job{Name: "share", Source: src, Targets: []config.Target{{Dir: a}, {Dir: b}},
		Retain: config.Retain{Source: retention.Policy{Latest: 1}, Target: retention.Policy{Latest: 1}}}
	p, err := Build(ctx, job, &fakeState{}, now, time.UTC)
	must(t, err)
	got := strings.NewReplacer(LocalTargetName(a), "A", LocalTargetName(b), "B").Replace(render(p))
	const parent = "parent of the next replication (newest snapshot all targets hold)"
	want := `
source keep 130000Z: base of target A
source keep 120000Z: base of target B
source keep 110000Z: ` + parent + `
source delete 100000Z: not kept by latest 1
target keep 130000Z: base of target A
target keep 110000Z: ` + parent + `
target delete 100000Z: not kept by latest 1
target keep 120000Z: base of target B
target keep 110000Z: ` + parent + `
target delete 100000Z: not kept by latest 1
`
	if "\n"+got != want {
		t.Errorf("got:\n%s\nwant:%s", got, want)
	}
}

// TestApplyDeletesExactlyThePlan: a plan that is only listed changes
// nothing; applied, it deletes exactly its delete lines (a remote target's
// through its receiver), and the bases and everything that is not
// snapjet's survive.
func TestApplyDeletesExactlyThePlan(t *testing.T) {
	l := newLayout(t)
	ctx := context.Background()
	root := filepath.Dir(filepath.Dir(l.job.Source))
	l.job.Targets = append(l.job.Targets, config.Target{Remote: "site-b"})
	st := &fakeState{recs: []*coordinator.Replication{l.record("12", "11", coordinator.Done, coordinator.TCommitted)},
		inv: map[string]streams.Inventory{"site-b": l.remoteHolding("site-b", "10", "11", "13")}}
	before := subvolumes(t, root)
	dry, err := Build(ctx, l.job, st, now, time.UTC)
	must(t, err)
	if got := subvolumes(t, root); strings.Join(got, " ") != strings.Join(before, " ") {
		t.Fatalf("planning changed the filesystem: %v → %v", before, got)
	}
	p, err := Build(ctx, l.job, st, now, time.UTC)
	must(t, err)
	if render(p) != render(dry) {
		t.Fatalf("the same prune planned differently:\n%s\nvs\n%s", render(p), render(dry))
	}
	var listed []string
	for _, s := range p.Sides {
		for _, it := range s.Items {
			if !it.Keep {
				listed = append(listed, strings.TrimPrefix(it.Path, root))
			}
		}
	}
	deleted, err := p.Apply(ctx, btrfs.DeleteSubvolume, st)
	must(t, err)
	for i := range deleted {
		deleted[i] = strings.TrimPrefix(deleted[i], root)
	}
	// Source 13 stays as site-b's base; 10 goes on every side.
	if strings.Join(deleted, " ") != strings.Join(listed, " ") || len(listed) != 3 {
		t.Errorf("deleted %v, the plan listed %v", deleted, listed)
	}
	// site-b keeps 13 (latest 1) and 11 (the next run's parent, which
	// the local target holds too); only 10 goes, by its received UUID.
	if want := "site-b/share.20261130T100000Z@" + l.snaps["10"].UUID.String(); strings.Join(st.deleted, " ") != want {
		t.Errorf("remote deletes asked: %v, want %s", st.deleted, want)
	}
	after := subvolumes(t, root)
	want := []string{}
	for _, b := range before {
		if !contains(listed, b) {
			want = append(want, b)
		}
	}
	if strings.Join(after, " ") != strings.Join(want, " ") {
		t.Errorf("after: %v\nwant:  %v", after, want)
	}
	for _, base := range []string{"/data/.snapjet/share/share.20261130T110000Z", "/backup/share.20261130T110000Z", "/backup/other", "/backup/share.20261129T000000Z", "/data/.snapjet/share/scratch"} {
		if !contains(after, base) {
			t.Errorf("%s was deleted", base)
		}
	}
	// Once applied, the plan is done: a second prune deletes nothing.
	again, err := Build(ctx, l.job, st, now, time.UTC)
	must(t, err)
	if again.Deletions() != 0 {
		t.Errorf("second prune would delete:\n%s", render(again))
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestApplyRefusesAChangedSubvolume(t *testing.T) {
	l := newLayout(t)
	ctx := context.Background()
	p, err := Build(ctx, l.job, &fakeState{}, now, time.UTC)
	must(t, err)
	victim := l.snaps["13"].Path
	// Between plan and apply, someone replaces the snapshot by another
	// subvolume of the same name.
	must(t, btrfs.DeleteSubvolume(ctx, victim))
	must(t, btrfs.Snapshot(ctx, l.job.Source, victim, true))
	deleted, err := p.Apply(ctx, btrfs.DeleteSubvolume, &fakeState{})
	if err == nil || !strings.Contains(err.Error(), victim+" changed since the plan was made") {
		t.Errorf("err = %v", err)
	}
	if !btrfs.IsSubvolume(victim) || len(deleted) != 2 {
		t.Errorf("deleted %v; the replaced %s must survive", deleted, victim)
	}
}
