package natsconf_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/doccmd"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/streams"
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

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, b := startClusterWithState(ctx, t)
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
	appliedOnce(t, cl.env, "nas", "after the failover")
}

// startClusterWithState starts the hub of deploy/nats/cluster, creates the
// state bucket with three replicas first, as deploy/README.md says, and
// returns the hub with a client of it for the test's own looks.
func startClusterWithState(ctx context.Context, t *testing.T) (*cluster, *broker.Broker) {
	t.Helper()
	cl := startCluster(t)
	b, err := broker.Connect(broker.Options{Server: cl.urls, Name: "observer", Credentials: cl.creds, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cl.waitJetStream(t, ctx, b)
	if code, _ := run(t, cmdTimeout, "status --replicas 3", cl.env, snapjetBin, "status", "--replicas", "3"); code != 0 {
		t.Fatalf("snapjet status --replicas 3: exit %d", code)
	}
	return cl, b
}

// appliedOnce reads snapjet status --json with env and fails the test
// unless it shows one replication, done, whose target committed after
// applying each of its chunks exactly once.
func appliedOnce(t *testing.T, env []string, target, when string) {
	t.Helper()
	_, out := run(t, cmdTimeout, "status --json", env, snapjetBin, "status", "--json")
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
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("status --json printed no document: %s", out)
	}
	if err := json.Unmarshal([]byte(out[i:]), &doc); err != nil || len(doc.Replications) != 1 {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	r := doc.Replications[0]
	if ts := r.Targets[target]; r.State != "done" || ts.State != "committed" || ts.ChunksApplied != r.TotalChunks {
		t.Errorf("%s: %s, target %s %s with %d of %d chunks applied; want done, committed, each chunk once",
			when, r.State, target, ts.State, ts.ChunksApplied, r.TotalChunks)
	}
}

// TestClusteredHubFeedsASiteThroughTheLossOfANode replicates from the
// 3-node hub of deploy/nats/cluster (--replicas 3) to a target at a site
// node with a JetStream of its own, whose link lists all three hub nodes,
// and kills -9 the hub node that carries the site's link while the site's
// copy fills, once that node also leads the hub's stream and the site's
// feed. The link must move to another node, both leaderships too, and the
// copy go on from where it was: the send succeeds, the target holds
// exactly the source with each chunk applied once, and the site's copy is
// gone at the end.
func TestClusteredHubFeedsASiteThroughTheLossOfANode(t *testing.T) {
	binaries(t)
	source, payload := newSource(t, 96<<20)
	dst := loopfs.New(t, 512<<20)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, hubClient := startClusterWithState(ctx, t)

	var hubs []string
	for _, l := range cl.leafs {
		hubs = append(hubs, "tls://"+l)
	}
	siteAddr, monitor := freeAddr(t), freeAddr(t)
	site := launch(t, "site-a", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", siteAddr, "--monitor-listen", monitor,
		"--domain", "site-a", "--hub", strings.Join(hubs, ","),
		"--hub-tls-ca", cl.certs.ca.CAFile, "--hub-tls-cert", cl.certs.file("site-a"), "--hub-tls-key", cl.certs.file("site-a-key"))
	waitFor(t, "site-a's link to the hub", processStartTimeout, site, func() bool { return strings.Contains(site.out.String(), "link to hub up") })
	atSite := connectTo(t, "nats://"+siteAddr, "", broker.Credentials{})

	launch(t, "receiver at site-a", nil, snapjetBin, "receive", "--server", "nats://"+siteAddr, "--js-domain", "hub", "--target", "nas-a", dst.Dir)
	// The rate limit keeps the kill inside the transfer however fast the
	// machine is: 96 MiB take about 12 s.
	send := launch(t, "send", cl.env, snapjetBin, "send", "--replicas", "3", "--window", "33554432", "--to", "nas-a",
		"--receiver-wait", "60s", "--rate-limit", "8MB/s", source)

	chunks := uint64(len(payload) >> 20)
	var copied uint64
	waitFor(t, "a fifth of the stream in site-a's copy", 3*time.Minute, send, func() bool {
		copied = copyProgress(ctx, t, atSite)
		return copied > chunks/5
	})
	// The worst single loss: the node that carries the site's link also
	// leads the hub's stream and the site's feed.
	node := linkedNode(t, monitor, cl)
	name := fmt.Sprintf("snapjet-hub-%d", node+1)
	stream := hubStream(ctx, t, hubClient)
	moveLeader(ctx, t, hubClient, "STREAM", stream, name)
	moveLeader(ctx, t, hubClient, "CONSUMER", stream+"."+streams.SiteConsumerName("site-a"), name)
	copied = copyProgress(ctx, t, atSite)
	t.Logf("kill -9 %s, which carries site-a's link and leads the stream and the feed, with %d of about %d chunks in the site's copy", name, copied, chunks)
	cl.nodes[node].kill()
	killed := time.Now()
	if send.exited() || copied >= chunks {
		t.Fatalf("the copy was complete (%d chunks) or the send over before the node was killed:\n%s", copied, send.out.String())
	}

	sendSucceeded(ctx, t, send, "after the hub node carrying the site's link was killed")
	t.Logf("figures: the send finished %v after the kill", time.Since(killed).Round(10*time.Millisecond))
	assertReceived(t, dst.Dir, payload)
	if copied := copyProgress(ctx, t, atSite); copied != 0 {
		t.Errorf("site-a still holds a copy with %d chunks after the replication finished", copied)
	}
	appliedOnce(t, cl.env, "nas-a", "after the hub node carrying the site's link was killed")
	if !strings.Contains(site.out.String(), "link to hub down") {
		t.Errorf("site-a never logged that its link went down:\n%s", site.out.String())
	}
}

// copyProgress returns the last sequence of the replication stream's copy
// in the JetStream of the site whose client site is, 0 while it has none. A
// site stream that is no mirror fails the test: a site holds copies only.
func copyProgress(ctx context.Context, t *testing.T, site *broker.Broker) uint64 {
	t.Helper()
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	names := site.JS.StreamNames(lctx)
	for name := range names.Name() {
		if !strings.HasPrefix(name, streams.StreamName("")) {
			continue
		}
		s, err := site.JS.Stream(lctx, name)
		if err != nil {
			continue
		}
		info := s.CachedInfo()
		if info.Config.Mirror == nil {
			t.Fatalf("the site holds %s, which is no copy: %+v", name, info.Config)
		}
		return info.State.LastSeq
	}
	return 0
}

// hubStream names the replication stream at the hub.
func hubStream(ctx context.Context, t *testing.T, hub *broker.Broker) string {
	t.Helper()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	names := hub.JS.StreamNames(lctx)
	for name := range names.Name() {
		if strings.HasPrefix(name, streams.StreamName("")) {
			return name
		}
	}
	t.Fatalf("no replication stream at the hub: %v", names.Err())
	return ""
}

// moveLeader asks the hub to hand the leadership of a STREAM or CONSUMER
// (named as its API subjects name it) to node, and waits until node leads
// it. It asks again when an election ends elsewhere. It uses the API
// itself because the site's feed is a push consumer, which nats.go's
// jetstream package does not open.
func moveLeader(ctx context.Context, t *testing.T, hub *broker.Broker, kind, name, node string) {
	t.Helper()
	var asked time.Time
	waitFor(t, kind+" "+name+" led by "+node, time.Minute, nil, func() bool {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var info struct {
			Cluster struct {
				Leader string `json:"leader"`
			} `json:"cluster"`
		}
		msg, err := hub.NC.RequestWithContext(rctx, "$JS.API."+kind+".INFO."+name, nil)
		if err == nil && json.Unmarshal(msg.Data, &info) == nil && info.Cluster.Leader == node {
			return true
		}
		if time.Since(asked) > 2*time.Second {
			asked = time.Now()
			msg, err := hub.NC.RequestWithContext(rctx, "$JS.API."+kind+".LEADER.STEPDOWN."+name, []byte(`{"placement":{"preferred":"`+node+`"}}`))
			if err == nil {
				t.Logf("%s %s: asked %s to lead: %s", kind, name, node, msg.Data)
			}
		}
		return false
	})
}

// linkedNode returns the index of the hub node that the site node whose
// monitoring listens on monitor is linked to now, from the site's /leafz.
func linkedNode(t *testing.T, monitor string, cl *cluster) int {
	t.Helper()
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + monitor + "/leafz")
	if err != nil {
		t.Fatalf("the site's /leafz: %v", err)
	}
	defer resp.Body.Close()
	var leafz struct {
		Leafs []struct {
			IP   string `json:"ip"`
			Port int    `json:"port"`
		} `json:"leafs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&leafz); err != nil || len(leafz.Leafs) != 1 {
		t.Fatalf("the site's /leafz: %+v, %v; want one link", leafz, err)
	}
	at := net.JoinHostPort(leafz.Leafs[0].IP, strconv.Itoa(leafz.Leafs[0].Port))
	for i, l := range cl.leafs {
		if l == at {
			return i
		}
	}
	t.Fatalf("site-a is linked to %s, which is no hub node's leafnode listener (%v)", at, cl.leafs)
	return -1
}
