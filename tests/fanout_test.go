package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// btrfsRecorder puts a `btrfs` wrapper first on PATH that logs each
// invocation before running the real btrfs-progs, so a test can count the
// `btrfs send` processes snapjet starts.
type btrfsRecorder struct {
	log string
	env []string
}

func newBTRFSRecorder(t *testing.T) btrfsRecorder {
	t.Helper()
	real, err := exec.LookPath("btrfs")
	if err != nil {
		t.Fatalf("btrfs-progs: %v", err)
	}
	dir := t.TempDir()
	log := filepath.Join(dir, "calls.log")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %q\nexec %q \"$@\"\n", log, real)
	if err := os.WriteFile(filepath.Join(dir, "btrfs"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return btrfsRecorder{log: log, env: []string{"PATH=" + dir + ":" + os.Getenv("PATH")}}
}

// sends returns the recorded `btrfs send` command lines that sent a stream.
func (b btrfsRecorder) sends(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(b.log)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		// `send --help` is snapjet asking whether btrfs-progs can send
		// compressed data, not a stream.
		if strings.HasPrefix(line, "send ") && line != "send --help" {
			out = append(out, line)
		}
	}
	return out
}

// One replication to two targets reads the source once: one `btrfs send`,
// one replication in status, both targets committed with correct trees.
func TestFanOutToTwoTargetsUsesOneSend(t *testing.T) {
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	first := newTarget(t, 1<<30, "backup-a")
	second := newTarget(t, 1<<30, "backup-b")
	dataSet{seed: 9, bulk: 32 * mib}.newSource(t, source)
	rec := newBTRFSRecorder(t)
	r := newReplicator(t)
	r.env = rec.env

	res := r.run("replicate", nil, source, first, second)
	if res.code != 0 {
		t.Fatalf("replicate failed with code %d: %s", res.code, res.stderr)
	}
	if strings.Contains(res.stderr, "send interrupted") {
		t.Errorf("a clean run reports an interrupted send (a btrfs send that exited 0 taken for a failure): %s", res.stderr)
	}
	doc := r.storedStatus()
	if len(doc.Replications) != 1 {
		t.Fatalf("status lists %d replications, want one for both targets", len(doc.Replications))
	}
	rep := assertDone(t, doc, filepath.Base(onlySnapshot(t, source).Path))
	if len(rep.Targets) != 2 {
		t.Errorf("replication %s has %d targets, want 2", rep.ID, len(rep.Targets))
	}
	if sends := rec.sends(t); len(sends) != 1 {
		t.Errorf("snapjet ran btrfs send %d times, want once: %q", len(sends), sends)
	}
	assertReplicated(t, rep.Snapshot, first, second)
	// Both receivers, the last to commit included, cleaned their staging
	// (checkpoint.json too) before replicate exited.
	assertStagingEmpty(t, first)
	assertStagingEmpty(t, second)
}

// One of two targets runs out of space. It must neither block nor corrupt
// the other: the good target commits a correct replica, the full one is
// failed with an out-of-space reason and keeps no partial.
func TestFanOutFullTargetDoesNotHarmTheOther(t *testing.T) {
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	good := newTarget(t, 1<<30, "backup")
	full := newTarget(t, 200*mib, "tiny") // holds about 120 MiB of data
	size := dataSet{seed: 10, bulk: 160 * mib}.newSource(t, source)
	r := newReplicator(t)

	t.Logf("replicating %d MiB to %s and to the too small %s", size/mib, good, full)
	res := r.run("replicate", nil, source, good, full)
	if res.code == 0 {
		t.Fatal("replicate reported success although one target could not hold the data")
	}
	if !strings.Contains(strings.ToLower(res.stderr), "no space") {
		t.Errorf("stderr does not name the cause (no space): %q", res.stderr)
	}
	snap := onlySnapshot(t, source)
	rep, ok := r.storedStatus().bySnapshot(filepath.Base(snap.Path))
	if !ok {
		t.Fatalf("status has no replication of %s", snap.Path)
	}
	if _, ts, ok := rep.target(good); !ok || ts.State != "committed" {
		t.Errorf("good target: %+v (found %v), want committed", ts, ok)
	}
	_, ts, ok := rep.target(full)
	if !ok || ts.State != "failed" || !strings.Contains(strings.ToLower(ts.Error), "space") {
		t.Errorf("full target: %+v (found %v), want failed with an out-of-space error", ts, ok)
	}
	assertReplicated(t, snap.Path, good)
	assertStagingEmpty(t, full)
	assertAbsent(t, filepath.Join(full, filepath.Base(snap.Path)))
}

// One of two receivers dies mid-transfer and stays down for a while. The
// other target must not be held back: it commits while the first is down.
// When the dead receiver comes back, it catches up and the send completes.
func TestFanOutDeadReceiverDoesNotHoldBackTheOther(t *testing.T) {
	source, live, size := newPair(t, dataSet{seed: 15, bulk: 64 * mib})
	dead := newTarget(t, 2<<30, "spare")
	srv := startServer(t)
	startReceiver(t, srv.url(), "backup", live)
	// The receiver to be killed reads through a slow link, so the kill
	// lands midway through its stream however fast the other one is.
	deadRecv := startReceiver(t, slowLink(t, srv), "spare", dead)
	send := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "backup,spare", source)

	rep := waitForReplication(t, send, srv.liveStatus, "the kill point of one receiver", newProbe(t, srv.url()).appliedAtLeast(killPoint, size, chunkSize, dead))
	t.Log("killing the receiver of target spare; it stays down until target backup has committed")
	deadRecv.kill()
	waitUntil(t, nil, transferTimeout, "target backup to commit while target spare is down", func(context.Context) bool {
		return committedAt(live, rep)
	})
	assertReplicated(t, rep.Snapshot, live)
	assertNoPartialCommitted(t, dead, rep)

	t.Log("starting the receiver of target spare again")
	startReceiver(t, srv.url(), "spare", dead)
	if res := send.wait(transferTimeout); res.code != 0 {
		t.Fatalf("send failed with code %d: %s", res.code, res.stderr)
	}
	assertDone(t, srv.status(), rep.SnapshotName)
	assertReplicated(t, rep.Snapshot, live, dead)
}
