package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
)

// Every target stands alone (issue 7): what one target lacks, fails or
// needs costs the others nothing.

// threeTargets is a source replicated once (full) to three targets, each
// with its own receiver on one server.
type threeTargets struct {
	source   string
	dirs     map[string]string
	recv     map[string]*proc
	srv      *natsServer
	first    replication
	firstDoc statusDoc
}

func newThreeTargets(t *testing.T, seed uint64) *threeTargets {
	t.Helper()
	f := &threeTargets{dirs: map[string]string{}, recv: map[string]*proc{}}
	f.source = filepath.Join(newSourceFS(t, 1<<30), "data")
	dataSet{seed: seed, bulk: 24 * mib}.newSource(t, f.source)
	f.srv = startServer(t)
	for _, name := range []string{"a", "b", "c"} {
		f.dirs[name] = newTarget(t, 1<<30, "site-"+name)
		f.recv[name] = startReceiver(t, f.srv.url(), name, f.dirs[name])
	}
	if res := f.send(t, "send-first", "a,b,c"); res.code != 0 {
		t.Fatalf("first send failed with code %d: %s", res.code, res.stderr)
	}
	f.firstDoc = f.srv.status()
	f.first, _ = f.firstDoc.newest()
	assertReplicated(t, f.first.Snapshot, f.dirs["a"], f.dirs["b"], f.dirs["c"])
	return f
}

func (f *threeTargets) send(t *testing.T, name, to string, flags ...string) result {
	t.Helper()
	args := append([]string{"send", "--server", f.srv.url(), "--to", to, "--receiver-wait", "3s"}, flags...)
	return runSnapjet(t, transferTimeout, name, append(args, f.source)...)
}

// (b) One of three targets is unreachable at plan time: the other two
// commit, the run exits 1 naming the third, and the next run, with its
// receiver back, brings it up to date with an incremental from its base.
func TestUnreachableTargetAtPlanTimeDoesNotHoldBackTheOthers(t *testing.T) {
	f := newThreeTargets(t, 31)
	f.recv["c"].kill()
	mutate(t, f.source, 32, 4*mib)

	res := f.send(t, "send-without-c", "a,b,c")
	if res.code != 1 {
		t.Fatalf("send exited %d with target c unreachable, want 1: %s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "c") || !strings.Contains(res.stdout+res.stderr, "no receiver answered") {
		t.Errorf("the run does not name the unreachable target and why: stdout %q stderr %q", res.stdout, res.stderr)
	}
	doc := f.srv.status()
	second, _ := doc.newest()
	for _, name := range []string{"a", "b"} {
		r, ts, ok := doc.outcome(second.SnapshotName, name)
		if !ok || ts.State != "committed" || r.ParentUUID != f.first.SnapshotUUID {
			t.Errorf("target %s: %+v in %s (parent %q), want committed incrementally from %s", name, ts, r.ID, r.ParentUUID, f.first.SnapshotUUID)
		}
	}
	assertReplicated(t, second.Snapshot, f.dirs["a"], f.dirs["b"])
	if _, ts, _ := doc.outcome(second.SnapshotName, "c"); ts.State != "failed" {
		t.Errorf("target c: %+v, want failed", ts)
	}
	assertAbsent(t, filepath.Join(f.dirs["c"], second.SnapshotName))

	t.Log("starting the receiver of c again; the next run must complete it incrementally")
	startReceiver(t, f.srv.url(), "c", f.dirs["c"])
	if res := f.send(t, "send-catch-up", "a,b,c"); res.code != 0 {
		t.Fatalf("catch-up send exited %d: %s", res.code, res.stderr)
	}
	doc = f.srv.status()
	r, ts, ok := doc.outcome(second.SnapshotName, "c")
	if !ok || ts.State != "committed" {
		t.Fatalf("target c after the catch-up: %+v", ts)
	}
	if r.ParentUUID != f.first.SnapshotUUID {
		t.Errorf("c caught up from parent %q, want its base %s (an incremental)", r.ParentUUID, f.first.SnapshotUUID)
	}
	full := f.first.TotalBytes
	t.Logf("figures: c caught up with a %d-byte stream (%d on the wire); the full stream was %d bytes", r.TotalBytes, r.WireBytes, full)
	if r.TotalBytes >= full/2 {
		t.Errorf("the catch-up stream of c has %d bytes, the full one %d: not an incremental", r.TotalBytes, full)
	}
	assertReplicated(t, second.Snapshot, f.dirs["c"])
}

// (c) A new target added to an existing set gets a full stream; the others
// get their incremental, each in its own record and stream, from the same
// snapshot.
func TestNewTargetGetsAFullStreamAndTheOthersAnIncremental(t *testing.T) {
	f := newThreeTargets(t, 33)
	newcomer := newTarget(t, 1<<30, "site-d")
	startReceiver(t, f.srv.url(), "d", newcomer)
	mutate(t, f.source, 34, 4*mib)
	rec := newBTRFSRecorder(t)
	args := []string{"send", "--server", f.srv.url(), "--to", "a,b,c,d", f.source}
	if res := startSnapjetEnv(t, "send-with-d", rec.env, args...).wait(transferTimeout); res.code != 0 {
		t.Fatalf("send exited %d: %s", res.code, res.stderr)
	}
	doc := f.srv.status()
	second, _ := doc.newest()
	incr, _, _ := doc.outcome(second.SnapshotName, "a")
	for _, name := range []string{"a", "b", "c"} {
		r, ts, _ := doc.outcome(second.SnapshotName, name)
		if ts.State != "committed" || r.ID != incr.ID || r.ParentUUID != f.first.SnapshotUUID {
			t.Errorf("target %s: %s in %s with parent %q, want committed in one incremental record from %s", name, ts.State, r.ID, r.ParentUUID, f.first.SnapshotUUID)
		}
	}
	full, ts, _ := doc.outcome(second.SnapshotName, "d")
	if ts.State != "committed" || full.ParentUUID != "" || full.ID == incr.ID {
		t.Errorf("new target d: %s in %s with parent %q, want committed in a full record of its own", ts.State, full.ID, full.ParentUUID)
	}
	t.Logf("figures: incremental stream %d bytes to a, b, c; full stream %d bytes to d", incr.TotalBytes, full.TotalBytes)
	// The progress bar's estimate of each stream, from the extents written
	// since its parent.
	for _, r := range []replication{incr, full} {
		ratio := float64(r.Estimated) / float64(r.TotalBytes)
		t.Logf("figures: %s estimated %d bytes for a %d-byte stream: %.2f", r.ID, r.Estimated, r.TotalBytes, ratio)
		if ratio < 0.9 || ratio > 1.1 {
			t.Errorf("%s: estimated %d bytes for a %d-byte stream (%.2f), want 0.9-1.1 of it", r.ID, r.Estimated, r.TotalBytes, ratio)
		}
	}
	if incr.TotalBytes >= full.TotalBytes/2 {
		t.Errorf("the incremental stream (%d bytes) is not much smaller than the full one (%d)", incr.TotalBytes, full.TotalBytes)
	}
	sends := rec.sends(t)
	incremental := 0
	for _, s := range sends {
		if strings.Contains(s, " -p ") {
			incremental++
		}
	}
	if len(sends) != 2 || incremental != 1 {
		t.Errorf("btrfs send ran %d times (%d incremental), want one incremental for three targets and one full: %q", len(sends), incremental, sends)
	}
	assertReplicated(t, second.Snapshot, f.dirs["a"], f.dirs["b"], f.dirs["c"], newcomer)
}

// (d) A temporary failure on one target (its btrfs receive killed) is
// mended for that target alone: the others commit in attempt 1 with one
// attempt spent, and the failed one commits after a replay.
func TestTemporaryFailureOfOneTargetCostsTheOthersNothing(t *testing.T) {
	source, good, size := newPair(t, dataSet{seed: 35, bulk: 64 * mib})
	flaky := newTarget(t, 1<<30, "flaky")
	srv := startServer(t)
	startReceiver(t, srv.url(), "good", good)
	// flaky reads through a slow link, so its btrfs receive is still
	// running when the test looks for it to kill it.
	startReceiver(t, slowLink(t, srv), "flaky", flaky, "--receiver", "btrfs-progs")
	send := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "good,flaky", source)

	rep := waitForReplication(t, send, srv.liveStatus, "flaky's receive under way", newProbe(t, srv.url()).appliedAtLeast(killPoint, size, chunkSize, flaky))
	pid := receivePID(t, flaky)
	t.Logf("killing flaky's btrfs receive (pid %d)", pid)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if res := send.wait(transferTimeout); res.code != 0 {
		t.Fatalf("send exited %d: %s", res.code, res.stderr)
	}
	doc := srv.status()
	r, ts, _ := doc.outcome(rep.SnapshotName, "good")
	if ts.State != "committed" || r.Attempt != 1 || ts.Attempts != 1 {
		t.Errorf("good: %s in attempt %d with %d attempts spent, want committed in attempt 1 with 1", ts.State, r.Attempt, ts.Attempts)
	}
	_, fs, _ := doc.outcome(rep.SnapshotName, "flaky")
	if fs.State != "committed" || fs.Attempts < 2 {
		t.Errorf("flaky: %s with %d attempts, want committed after a replay (2 or more)", fs.State, fs.Attempts)
	}
	assertReplicated(t, rep.Snapshot, good, flaky)
}

// receivePID finds the `btrfs receive` process writing into target's staging.
func receivePID(t *testing.T, target string) int {
	t.Helper()
	var pid int
	waitUntil(t, nil, 30*time.Second, "btrfs receive of "+target, func(context.Context) bool {
		out, err := exec.Command("pgrep", "-f", "receive.*"+filepath.Join(target, ".snapjet")).Output()
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.Fields(string(out))[0])
		return err == nil
	})
	return pid
}

// (f) A second sender of the same source is refused while the lease is
// held; once the holder is gone (killed on this host) the next one takes
// over at once and completes the replication.
func TestSecondSenderIsRefusedWhileTheLeaseIsHeld(t *testing.T) {
	source, target, size := newPair(t, dataSet{seed: 36, bulk: 64 * mib})
	srv := startServer(t)
	// The first receiver reads through a slow link, so it is killed while
	// the first sender is still under way.
	recv := startReceiver(t, slowLink(t, srv), "backup", target)
	first := startSnapjet(t, "send-first", "send", "--server", srv.url(), "--to", "backup", source)
	rep := waitForReplication(t, first, srv.liveStatus, "the first sender under way", newProbe(t, srv.url()).appliedAtLeast(20, size, chunkSize, target))
	recv.kill() // hold the first sender where it is

	second := runSnapjet(t, transferTimeout, "send-second", "send", "--server", srv.url(), "--to", "backup", source)
	if second.code != 1 || !strings.Contains(second.stderr, "holds the lease") || !strings.Contains(second.stderr, strconv.Itoa(first.cmd.Process.Pid)) {
		t.Fatalf("second sender exited %d: %s; want 1, refused naming the holder's pid %d", second.code, second.stderr, first.cmd.Process.Pid)
	}
	if snaps := snapshotsOf(t, source); len(snaps) != 1 {
		t.Errorf("the refused sender took a snapshot: %v", snapshotPaths(snaps))
	}

	first.kill()
	startReceiver(t, srv.url(), "backup", target)
	start := time.Now()
	third := runSnapjet(t, transferTimeout, "send-third", "send", "--server", srv.url(), "--to", "backup", source)
	if third.code != 0 {
		t.Fatalf("the sender after the holder died exited %d: %s", third.code, third.stderr)
	}
	t.Logf("figures: the next sender took over and completed in %v", time.Since(start).Round(time.Millisecond))
	assertDone(t, srv.status(), rep.SnapshotName)
	assertReplicated(t, rep.Snapshot, target)
}

// (e) Two hosts replicate sources with the same path (/srv/data in their
// own mount namespaces) through one server at the same time: their
// records never meet, and each target gets its own source's data.
func TestTwoHostsWithTheSamePathDoNotInterfere(t *testing.T) {
	srv := startServer(t)
	type host struct {
		fs, target string
		size       int64
	}
	hosts := map[string]*host{}
	for i, name := range []string{"east", "west"} {
		h := &host{fs: newSourceFS(t, 1<<30), target: newTarget(t, 1<<30, "from-"+name)}
		h.size = dataSet{seed: uint64(40 + i), bulk: 16 * mib}.newSource(t, filepath.Join(h.fs, "data"))
		hosts[name] = h
		startReceiver(t, srv.url(), "from-"+name, h.target)
	}
	mnt := filepath.Join(t.TempDir(), "srv")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	var sends []*proc
	for name, h := range hosts {
		// Each "host" sees its own filesystem at the same path.
		script := "mount --make-rprivate / && mount --bind " + h.fs + " " + mnt + " && exec " + snapjetBin +
			" send --server " + srv.url() + " --to from-" + name + " " + filepath.Join(mnt, "data")
		p := startCommand(t, "send-"+name, "unshare", "--mount", "sh", "-c", script)
		sends = append(sends, p)
	}
	for _, p := range sends {
		if res := p.wait(transferTimeout); res.code != 0 {
			t.Fatalf("%s exited %d: %s", p.name, res.code, res.stderr)
		}
	}
	doc := srv.status()
	if len(doc.Replications) != 2 {
		t.Fatalf("%d records for two sources, want 2", len(doc.Replications))
	}
	if a, b := doc.Replications[0], doc.Replications[1]; a.ID == b.ID || a.Source != b.Source {
		t.Errorf("records %s and %s: want two ids for one path %s", a.ID, b.ID, a.Source)
	}
	for name, h := range hosts {
		var rep replication
		for _, r := range doc.Replications {
			if _, ok := r.Targets["from-"+name]; ok {
				rep = r
			}
		}
		if rep.State != "done" {
			t.Fatalf("replication to from-%s: %v", name, rep)
		}
		snap := filepath.Join(h.fs, ".snapjet", "data", rep.SnapshotName)
		info, err := btrfs.Inspect(snap)
		if err != nil || info.UUID.String() != rep.SnapshotUUID {
			t.Fatalf("%s's snapshot %s: %+v %v, want uuid %s", name, snap, info, err, rep.SnapshotUUID)
		}
		assertReplicated(t, snap, h.target)
	}
}
