package natsconf_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/doccmd"
	"github.com/snapjet/snapjet/internal/loopfs"
)

// TestReceiverAtSiteNode replicates a real btrfs subvolume from a sender at
// the hub to a receiver at a site node (separate snapjet server processes)
// with the receiver finding its work at the hub through --js-domain hub and
// consuming the copy of the stream in the site's JetStream, and runs the
// nats commands deploy/README.md gives for following it from the site.
func TestReceiverAtSiteNode(t *testing.T) {
	binaries(t)
	source, payload := newSource(t, 8<<20)
	dst := loopfs.New(t, 256<<20)

	hubAddr, leafAddr, siteAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	hub := launch(t, "hub", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", hubAddr, "--domain", "hub", "--leaf-listen", leafAddr)
	waitListening(t, hub, hubAddr)
	site := launch(t, "site-a", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", siteAddr, "--domain", "site-a", "--hub", "nats-leaf://"+leafAddr)
	waitFor(t, "site-a's link to the hub", processStartTimeout, site, func() bool { return strings.Contains(site.out.String(), "link to hub up") })

	launch(t, "receiver at site-a", nil, snapjetBin, "receive", "--server", "nats://"+siteAddr, "--js-domain", "hub", "--target", "nas-a", dst.Dir)
	// Slow enough to follow it with the nats CLI while it runs.
	send := launch(t, "send at the hub", nil, snapjetBin, "send", "--server", "nats://"+hubAddr, "--to", "nas-a", "--receiver-wait", "60s", "--rate-limit", "1MB/s", source)
	followFromSite(t, siteAddr, send)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sendSucceeded(ctx, t, send, "to a receiver at the site node")
	assertReceived(t, dst.Dir, payload)
}

// newSource makes a btrfs subvolume on a loop image of its own holding one
// file of size random bytes (compression cannot shrink the transfer), and
// returns its path and the bytes.
func newSource(t *testing.T, size int) (string, []byte) {
	t.Helper()
	source := filepath.Join(loopfs.New(t, int64(2*size)+256<<20).Dir, "data")
	if out, err := exec.Command("btrfs", "subvolume", "create", source).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v\n%s", err, out)
	}
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	if err := os.WriteFile(filepath.Join(source, "file"), payload, 0o644); err != nil {
		t.Fatal(err)
	}
	return source, payload
}

// sendSucceeded waits, until ctx ends, for send to exit 0.
func sendSucceeded(ctx context.Context, t *testing.T, send *proc, what string) {
	t.Helper()
	select {
	case <-send.done:
	case <-ctx.Done():
		t.Fatalf("send %s did not finish:\n%s", what, send.out.String())
	}
	if code := send.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("send %s: exit %d\n%s", what, code, send.out.String())
	}
}

// assertReceived checks that dir holds one received snapshot of the source
// whose file is payload.
func assertReceived(t *testing.T, dir string, payload []byte) {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "data.*", "file"))
	if len(matches) != 1 {
		t.Fatalf("the target holds %v, want one received snapshot of data", matches)
	}
	got, err := os.ReadFile(matches[0])
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("the received file differs from the source (%v)", err)
	}
}

// followFromSite runs every nats command that deploy/README.md prints for
// following a replication from a site, against the one send is running:
// each must answer and name what it is about.
func followFromSite(t *testing.T, siteAddr string, send *proc) {
	t.Helper()
	natsCLI, err := exec.LookPath("nats")
	if err != nil {
		t.Skip("the nats CLI is not installed (scripts/setup installs it)")
	}
	cmds, err := doccmd.Quoted("../README.md", "nats --server nats://127.0.0.1:4222")
	if err != nil || len(cmds) < 5 {
		t.Fatalf("found %d nats commands in deploy/README.md (%v), want the site's", len(cmds), err)
	}
	nats := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, natsCLI, args...).CombinedOutput()
		return string(out), err
	}
	var id string
	waitFor(t, "the work of nas-a in the hub's state", time.Minute, send, func() bool {
		out, err := nats("--server", "nats://"+siteAddr, "--js-domain", "hub", "kv", "ls", "snapjet_state")
		if i := strings.Index(out, "work.nas-a."); err == nil && i >= 0 {
			id = strings.Fields(out[i+len("work.nas-a."):])[0]
		}
		return id != ""
	})
	fill := strings.NewReplacer("127.0.0.1:4222", siteAddr, "<id>", id)
	for _, c := range cmds {
		args := doccmd.Words(fill.Replace(c))
		want := "nas-a"
		switch {
		case strings.Contains(c, "<id>"):
			want = id
		case strings.Contains(c, "account info"):
			want = "site-a"
		}
		if strings.Contains(c, "site-a stream info") {
			want = "Mirror Information" // the site's copy, not a stream of its own
		}
		out, err := nats(args[1:]...)
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("$ %s: %v, want an answer naming %q:\n%s", c, err, want, doccmd.Clip([]byte(out)))
			continue
		}
		t.Logf("$ %s\n%s", strings.Join(args, " "), doccmd.Clip([]byte(out)))
	}
}

// TestClusterLeaderKilledMidTransfer replicates through the 3-node hub of
// deploy/nats/cluster with --replicas 3 and kills -9 the node leading the
// replication stream while chunks flow: the replication must complete and
// the target hold exactly the source's data.
//
// Nothing may be lost or applied twice: the file is byte-identical, and
// the target applied exactly the sender's chunks.
func TestClusterLeaderKilledMidTransfer(t *testing.T) {
	binaries(t)
	source, payload := newSource(t, 96<<20)
	dst := loopfs.New(t, 512<<20)

	cl := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	b, err := broker.Connect(broker.Options{Server: cl.urls, Name: "observer", Credentials: cl.creds, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cl.waitJetStream(t, ctx, b)

	// Create the state bucket R3 first, as deploy/README.md says.
	if code, _ := run(t, cmdTimeout, "status --replicas 3", cl.env, snapjetBin, "status", "--replicas", "3"); code != 0 {
		t.Fatalf("snapjet status --replicas 3: exit %d", code)
	}
	launch(t, "receiver", cl.env, snapjetBin, "receive", "--target", "nas", dst.Dir)
	send := launch(t, "send", cl.env, snapjetBin, "send", "--replicas", "3", "--window", "33554432", "--to", "nas", "--receiver-wait", "60s", source)

	// Find the replication stream once a third of the data went through it,
	// and kill its leader.
	var leader string
	waitFor(t, "a third of the transfer", 3*time.Minute, send, func() bool {
		lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		names := b.JS.StreamNames(lctx)
		for name := range names.Name() {
			if !strings.HasPrefix(name, "SNAPJET_") {
				continue
			}
			s, err := b.JS.Stream(lctx, name)
			if err != nil {
				continue
			}
			info := s.CachedInfo()
			if info.Config.Replicas != 3 {
				t.Fatalf("stream %s has %d replicas, want 3", name, info.Config.Replicas)
			}
			if info.Cluster != nil && info.State.LastSeq > uint64(len(payload)/3/(1<<20)) {
				leader = info.Cluster.Leader
				return true
			}
		}
		return false
	})
	killed := false
	for i, n := range cl.nodes {
		if leader == fmt.Sprintf("snapjet-hub-%d", i+1) {
			t.Logf("kill -9 %s, the stream leader", leader)
			n.kill()
			killed = true
		}
	}
	if !killed {
		t.Fatalf("no node is the stream leader %q", leader)
	}

	sendSucceeded(ctx, t, send, "after the leader was killed")
	assertReceived(t, dst.Dir, payload)
	_, out := run(t, cmdTimeout, "status --json", cl.env, snapjetBin, "status", "--json")
	var doc struct {
		Replications []struct {
			State       string `json:"state"`
			TotalChunks int64  `json:"total_chunks"`
			Targets     map[string]struct {
				State         string `json:"state"`
				ChunksApplied int64  `json:"chunks_applied"`
			} `json:"targets"`
		} `json:"replications"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &doc); err != nil || len(doc.Replications) != 1 {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	r := doc.Replications[0]
	if nas := r.Targets["nas"]; r.State != "done" || nas.State != "committed" || nas.ChunksApplied != r.TotalChunks {
		t.Errorf("after the failover: %s, target %s with %d of %d chunks applied; want done, committed, each chunk once",
			r.State, nas.State, nas.ChunksApplied, r.TotalChunks)
	}
}
