package tests

import (
	"cmp"
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/streams"
)

// interruption is one way a run ends early: a signal sent once reached
// holds.
type interruption struct {
	sig     syscall.Signal
	reached func(context.Context, replication) bool
}

// interruptAndRerun runs replicate and interrupts it once per entry, each
// time checking that no partial was committed and that an interrupted run
// did not claim success; then it runs the same command to the end, which
// must succeed. It returns the interrupted replication.
func interruptAndRerun(t *testing.T, r *replicator, flags []string, source, target string, stops ...interruption) replication {
	t.Helper()
	var rep replication
	for i, stop := range stops {
		p := r.start(fmt.Sprintf("replicate-%d", i+1), flags, source, target)
		rep = waitForReplication(t, p, r.liveStatus, fmt.Sprintf("interruption %d", i+1), stop.reached)
		p.signal(stop.sig)
		// A graceful stop may still finish a commit under way, but it
		// must not report success for what it did not commit.
		if res := p.wait(30 * time.Second); res.code == 0 && !committedAt(target, rep) {
			t.Errorf("replicate exited 0 after %v although %s is not committed", stop.sig, rep.SnapshotName)
		}
		assertNoPartialCommitted(t, target, rep)
		t.Logf("partial receives after the interruption: %v", stagedSubvolumes(t, target))
	}
	t.Log("running the same command again, to the end")
	if res := r.run("replicate-rerun", flags, source, target); res.code != 0 {
		t.Fatalf("rerun failed with code %d: %s", res.code, res.stderr)
	}
	return rep
}

// The original report: `snapjet replicate` was killed part-way and the next
// run reported success without the data. The rerun must end with one
// complete read-only replica and no partial. The report was made with the
// external `btrfs receive`, which outlives a killed snapjet and finishes
// its subvolume on EOF, so that receiver has a case of its own. A kill
// just before the end catches the sender done while the receiver still
// applies or commits; a second kill lands in the middle of a recovery; and
// Ctrl-C must not make an unfinished run report success.
func TestReplicateKilledMidSendIsCompletedByTheNextRun(t *testing.T) {
	tests := []struct {
		name     string
		flags    []string
		bulk     int64
		sig      syscall.Signal
		percents []int // one interrupted run per entry
	}{
		{name: "at a third of 256 MiB", bulk: 256 * mib, sig: syscall.SIGKILL, percents: []int{killPoint}},
		{name: "at a third of 256 MiB with btrfs-progs receive", flags: []string{"--receiver", "btrfs-progs"}, bulk: 256 * mib, sig: syscall.SIGKILL, percents: []int{killPoint}},
		// replicate sends 96 MiB in about a second now, leaving the probe
		// ~100 ms to see 90 %: the rate limit makes that half a second.
		{name: "near the end", flags: []string{"--rate-limit", "20MB/s"}, bulk: 96 * mib, sig: syscall.SIGKILL, percents: []int{90}},
		{name: "again while recovering", bulk: 128 * mib, sig: syscall.SIGKILL, percents: []int{killPoint, 70}},
		{name: "interrupted with Ctrl-C", bulk: 96 * mib, sig: syscall.SIGINT, percents: []int{killPoint}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source, target, size := newPair(t, dataSet{seed: 1, bulk: tc.bulk})
			r := newReplicator(t)
			probe := newProbe(t, "nats://"+r.listen)
			var stops []interruption
			for _, percent := range tc.percents {
				stops = append(stops, interruption{tc.sig, probe.sentAtLeast(percent, size, chunkSize, "")})
			}

			t.Logf("replicating %d MiB and stopping snapjet replicate with %v at %v%% of the send", size/mib, tc.sig, tc.percents)
			rep := interruptAndRerun(t, r, tc.flags, source, target, stops...)
			assertDone(t, r.storedStatus(), rep.SnapshotName)
			assertCaughtUp(t, rep, source, target)
		})
	}
}

// The same for an incremental replication: after a full one, about 256 MiB
// change along with renames and deletes; the incremental is killed and the
// rerun must complete it as an incremental on top of the first snapshot.
func TestIncrementalReplicateKilledMidSendIsCompletedByTheNextRun(t *testing.T) {
	source, target, _ := newPair(t, dataSet{seed: 2, bulk: 48 * mib})
	r := newReplicator(t)

	t.Log("first replication: a full send")
	replicateOnce(t, r, "replicate-full", source, target)
	base := onlySnapshot(t, source)
	assertReplicated(t, base.Path, target)

	changed := mutate(t, source, 22, 256*mib)
	t.Logf("incremental replication of %d MiB of changes, killed at %d%%", changed/mib, killPoint)
	probe := newProbe(t, "nats://"+r.listen)
	rep := interruptAndRerun(t, r, nil, source, target, interruption{syscall.SIGKILL, probe.sentAtLeast(killPoint, changed, chunkSize, filepath.Base(base.Path))})
	done := assertDone(t, r.storedStatus(), rep.SnapshotName)
	if done.ParentUUID != base.UUID.String() {
		t.Errorf("the resumed replication has parent %q, want the first snapshot %s", done.ParentUUID, base.UUID)
	}
	assertReplicated(t, base.Path, target)
	assertCaughtUp(t, rep, source, target)
}

// The receiver is SIGKILLed mid-transfer and started again. The native
// receiver resumes its partial at its last checkpoint. The btrfs-progs one
// cannot: it discards the partial and, while the window still holds the
// start of the stream, replays it from JetStream without the source
// sending again; once the window has moved past the start the coordinator
// must restart the replication instead, and still finish. The native
// receiver needs no restart in that case either. A receiver that stays
// down until the whole stream is stored gets no new message to notice its
// gap by; it must still catch up at once rather than wait for JetStream to
// redeliver what its dead predecessor never acknowledged.
func TestReceiverKilledMidTransfer(t *testing.T) {
	smallWindow := []string{"--window", strconv.Itoa(16 * mib)}
	tests := []struct {
		name          string
		receiver      string
		sendFlags     []string
		holdingTail   bool  // kill once the receiver holds the unacknowledged tail of a complete stream
		bulk          int64 // the data set's size; default 80 MiB
		downUntilSent bool  // restart the receiver only once the sender is done
		wantAttempt   int
		wantResume    bool // the partial is completed rather than discarded
	}{
		{name: "native resumes its partial", receiver: "native", wantAttempt: 1, wantResume: true},
		{name: "native resumes past a small window", receiver: "native", sendFlags: smallWindow, wantAttempt: 1, wantResume: true},
		{name: "native down until the stream is stored", receiver: "native", downUntilSent: true, wantAttempt: 1, wantResume: true},
		// The stream fits in one pull (32 MiB) and trickles in, so that a
		// receiver frozen after its first delivery is handed all of it.
		{name: "native killed holding the tail", receiver: "native", holdingTail: true, bulk: 20 * mib, sendFlags: []string{"--rate-limit", "10MB/s"}, wantAttempt: 1, wantResume: true},
		{name: "btrfs-progs replays from the stream", receiver: "btrfs-progs", wantAttempt: 1},
		{name: "btrfs-progs restarts once the window passed the start", receiver: "btrfs-progs", sendFlags: smallWindow, wantAttempt: 2},
		{name: "btrfs-progs down until the stream is stored", receiver: "btrfs-progs", downUntilSent: true, wantAttempt: 1},
		// No "btrfs-progs killed holding the tail": that receiver acks each
		// chunk as it hands it on, so the moment when the whole stream is
		// delivered but its tail unacked is too short to kill it in.
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bulk := cmp.Or(tc.bulk, 80*mib)
			source, target, size := newPair(t, dataSet{seed: 4, bulk: bulk})
			srv := startServer(t)
			recv := startReceiver(t, srv.url(), "backup", target, "--receiver", tc.receiver)
			probe := newProbe(t, srv.url())
			publishes := probe.countPublishes()
			args := append(append([]string{"send", "--server", srv.url(), "--to", "backup"}, tc.sendFlags...), source)
			send := startSnapjet(t, "send", args...)

			killAt := probe.appliedAtLeast(killPoint, size, chunkSize, target)
			if tc.holdingTail {
				// A running receiver holds the tail for a few milliseconds
				// only; a frozen one, whose pull the server goes on filling,
				// holds it until it is killed.
				waitForReplication(t, send, srv.liveStatus, "the partial receive and the first delivery", func(ctx context.Context, r replication) bool {
					return len(stagedSubvolumes(t, target)) > 0 && probe.deliveredTo(target)(ctx, r)
				})
				recv.signal(syscall.SIGSTOP)
				killAt = probe.holdsTail(target)
			}
			rep := waitForReplication(t, send, srv.liveStatus, "the receiver's kill point", killAt)
			t.Log("killing the receiver")
			recv.kill()
			assertNoPartialCommitted(t, target, rep)
			partial := onlyStaged(t, target)
			if tc.downUntilSent {
				waitForReplication(t, send, srv.liveStatus, "the whole stream to be stored", func(_ context.Context, r replication) bool {
					return r.State == "sent"
				})
			}
			restarted := time.Now()
			startReceiver(t, srv.url(), "backup", target, "--receiver", tc.receiver)

			if res := send.wait(transferTimeout); res.code != 0 {
				t.Fatalf("send failed with code %d: %s", res.code, res.stderr)
			}
			catchUp := time.Since(restarted)
			t.Logf("the replication completed %v after the receiver restarted", catchUp.Round(time.Millisecond))
			// What is left is at most one window of unacknowledged chunks,
			// seconds of work; half of AckWait tells waiting from working,
			// since the redelivery timer started before the kill.
			if (tc.downUntilSent || tc.holdingTail) && catchUp >= streams.AckWait/2 {
				t.Errorf("catching up took %v: the restarted receiver waited for JetStream's redelivery (AckWait %v) instead of fetching what it missed", catchUp, streams.AckWait)
			}
			done := assertDone(t, srv.status(), rep.SnapshotName)
			if done.Attempt != tc.wantAttempt {
				t.Errorf("attempt = %d, want %d", done.Attempt, tc.wantAttempt)
			}
			// A receiver's trouble is repaired from the stream: the source
			// sends no chunk of the final attempt twice.
			publishes.assertEachSentOnce(t, done)
			assertCaughtUp(t, rep, source, target)
			final, err := btrfs.Inspect(filepath.Join(target, rep.SnapshotName))
			if err != nil {
				t.Fatal(err)
			}
			if resumed := final.UUID == partial.UUID; resumed != tc.wantResume {
				t.Errorf("partial %s completed in place: %v, want %v", partial.UUID, resumed, tc.wantResume)
			}
		})
	}
}

// The sender is SIGKILLed mid-send and the same command is run again. No
// chunk may reach the receiver twice or be missing: the replication can
// only commit when the end marker's digest matches, and the target must
// have applied exactly the stream's chunks.
func TestSenderKilledMidSendResumes(t *testing.T) {
	source, target, size := newPair(t, dataSet{seed: 5, bulk: 96 * mib})
	srv := startServer(t)
	startReceiver(t, srv.url(), "backup", target)
	args := []string{"send", "--to", "backup", source}
	// The first sender publishes through a slow link, so the kill lands
	// while it is still publishing; the rerun goes direct.
	send := startSnapjet(t, "send", append(args, "--server", slowLink(t, srv))...)

	rep := waitForReplication(t, send, srv.liveStatus, "the sender's kill point", newProbe(t, srv.url()).sentAtLeast(killPoint, size, chunkSize, ""))
	t.Log("killing the sender")
	send.kill()
	assertNoPartialCommitted(t, target, rep)

	t.Log("running the same send command again")
	if res := runSnapjet(t, transferTimeout, "send-rerun", append(args, "--server", srv.url())...); res.code != 0 {
		t.Fatalf("rerun of send failed with code %d: %s", res.code, res.stderr)
	}
	assertAllChunksApplied(t, assertDone(t, srv.status(), rep.SnapshotName), target, 0)
	assertCaughtUp(t, rep, source, target)
}

// The NATS server goes away mid-transfer, cleanly or by a crash, and comes
// back on the same port with the same store: nothing may be lost.
func TestServerRestartedMidTransfer(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(sig.String(), func(t *testing.T) {
			source, target, size := newPair(t, dataSet{seed: 6, bulk: 64 * mib})
			srv := startServer(t)
			recv := startReceiver(t, srv.url(), "backup", target)
			// The sender publishes through a slow link; stop the server while
			// it is still publishing, so that both sides lose their
			// connection in the middle of their work.
			send := startSnapjet(t, "send", "send", "--server", slowLink(t, srv), "--to", "backup", source)

			rep := waitForReplication(t, send, srv.liveStatus, "the server's stop point", newProbe(t, srv.url()).sentAtLeast(killPoint, size, chunkSize, ""))
			const lost = "NATS connection lost"
			before := map[*proc]int{send: strings.Count(send.stderr.String(), lost), recv: strings.Count(recv.stderr.String(), lost)}
			srv.stop(sig)
			// Start again only once both clients noticed, so both must
			// reconnect rather than find the server back before they looked.
			for p, n := range before {
				waitUntil(t, p, 30*time.Second, p.name+" to notice the server is gone", func(context.Context) bool {
					return strings.Count(p.stderr.String(), lost) > n
				})
			}
			t.Log("starting the server again on the same port and store")
			srv.start()

			if res := send.wait(transferTimeout); res.code != 0 {
				t.Fatalf("send failed with code %d: %s", res.code, res.stderr)
			}
			// A consumer's last acks may be lost with the server: at most
			// one window of chunks comes to the receiver again.
			assertAllChunksApplied(t, assertDone(t, srv.status(), rep.SnapshotName), target, streams.MaxAckPending)
			assertCaughtUp(t, rep, source, target)
		})
	}
}
