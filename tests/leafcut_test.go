package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/snapjet/snapjet/streams"
)

// recoveryBound is how soon after the WAN link returns every target must
// have committed and `snapjet send` must have exited (issue 7, item 6a).
const recoveryBound = 15 * time.Second

// Two targets at a remote site: their receivers connect to the site's leaf
// node (a stock nats-server without JetStream), whose one link to the hub
// runs through a proxy; the sender connects to the hub. The link is cut and
// held down, once while the stream is being sent and once when the
// replication is in state sent, for 10 s and for 3 min; a fifth case cuts
// for 10 s while sending with the receivers' acks for every delivered chunk
// still to be sent. When the link returns, both targets must commit and the
// sender exit 0 within recoveryBound, with no process restarted: the
// receivers must notice that their pulls (and acks) died with the link and
// pull again, and the sender must wait out the outage. Committed replicas
// must equal the source, be read-only with the source snapshot's UUID as
// received UUID; nothing partial may appear at the final name during the
// outage, and staging must be empty at the end.
//
// The 3-minute cases run in parallel with each other (the machine is idle
// while the link is down), so the test takes about 5.5 minutes in all.
func TestLeafLinkCut(t *testing.T) {
	for _, group := range []struct {
		name     string
		outage   time.Duration
		parallel bool
		cases    []cutCase
	}{
		{name: "10s", outage: 10 * time.Second, cases: []cutCase{
			{name: "sending", state: "sending"},
			{name: "sending-acks-held", state: "sending", holdAcks: true},
			{name: "sent", state: "sent"},
		}},
		// A 3-minute outage outlasts AckWait (30 s): the hub redelivers
		// what was unacknowledged at the cut, so holding acks adds nothing.
		{name: "3m", outage: 3 * time.Minute, parallel: true, cases: []cutCase{
			{name: "sending", state: "sending"},
			{name: "sent", state: "sent"},
		}},
	} {
		t.Run(group.name, func(t *testing.T) {
			for _, c := range group.cases {
				t.Run(c.name, func(t *testing.T) {
					if group.parallel {
						t.Parallel()
					}
					leafLinkCut(t, c, group.outage)
				})
			}
		})
	}
}

// cutCase says where a cut lands.
type cutCase struct {
	name string
	// state is the replication's state at the cut and while the link is
	// down: sending or sent.
	state string
	// holdAcks stops both receivers (SIGSTOP) for the moment of the cut,
	// so the acks for the chunks they were delivered go out only once the
	// link is dead: a receiver busy in fsync at the cut does the same.
	holdAcks bool
}

// leafLinkCut runs one case:
//
//   - sending: t1 has applied killPoint % of the stream, and the hub has
//     delivered every stored chunk to both targets, which have not
//     acknowledged all of them (at the latest when t1 has applied 50 %).
//     The sender's window (8 MiB) is much smaller than the stream
//     (33 MiB), so the sender is still in state sending, waiting for room,
//     for the whole outage (checked at the cut and before the link
//     returns). Nothing new can reach a receiver after the outage until the
//     sender has room, and it gets room only from the receivers' acks,
//     which were in flight or sent into the dead link: a receiver must make
//     its position known again by itself, or wait for AckWait (30 s). With
//     holdAcks, that is so every time, not only when the cut happens to
//     catch an ack.
//   - sent: the moment the end marker is stored. The window (the default
//     1 GiB) holds the whole stream, so the sender, on the hub's side of the
//     link, stores it at full speed, while each receiver has to pull every
//     byte across the link and apply it; the test checks at the cut that
//     neither target has acknowledged the whole stream nor committed, and
//     fails as "scenario not reached" otherwise. Cutting at the end marker
//     (rather than waiting for a window to drain) means the link is down
//     for the whole of state sent with as much of the stream still to be
//     applied as possible.
func leafLinkCut(t *testing.T, c cutCase, outage time.Duration) {
	source := filepath.Join(newSourceFS(t, 2<<30), "data")
	t1 := newTarget(t, 2<<30, "t1")
	t2 := newTarget(t, 2<<30, "t2")
	// Small enough that applying what is left after the outage takes a
	// few seconds of the recovery bound on a loaded machine (the bound is
	// about noticing that the link is back, not about throughput); larger
	// in state sent, where the receivers must still be behind when the
	// sender has stored the whole stream.
	bulk := int64(32 * mib)
	if c.state == "sent" {
		bulk = 48 * mib
	}
	size := dataSet{seed: 31, bulk: bulk}.newSource(t, source)
	site := startLeafSite(t)
	recv1 := startReceiver(t, site.leafURL(), "t1", t1)
	recv2 := startReceiver(t, site.leafURL(), "t2", t2)
	args := []string{"send", "--server", site.hubURL(), "--to", "t1,t2"}
	if c.state == "sending" {
		args = append(args, "--window", strconv.Itoa(8*mib))
	}
	send := startSnapjet(t, "send", append(args, source)...)
	procs := []*proc{site.hub, site.leaf, recv1, recv2, send}
	probe := newProbe(t, site.hubURL())

	var rep replication
	switch c.state {
	case "sending":
		// The cut lands after killPoint %, when every stored chunk has been
		// delivered to both targets, or at the latest at 50 %: later, the
		// acks in flight could give the sender room for the end marker.
		delivered := probe.allDelivered(t1, t2)
		rep = waitForReplication(t, send, site.liveStatus, "the cut point", func(ctx context.Context, rep replication) bool {
			n, err := probe.acked(ctx, rep, t1)
			percent := n * chunkSize * 100 / size
			ok := err == nil && percent >= killPoint && (percent >= 50 || delivered(ctx, rep))
			if ok {
				t.Logf("JetStream: t1 has acknowledged %d chunks (%d%% of %d MiB)", n, percent, size/mib)
			}
			return ok
		})
		if !c.holdAcks {
			site.cutLink()
			break
		}
		// Stopped, the receivers send nothing, while what the hub
		// delivered still reaches their sockets through the leaf node: once
		// nothing more crosses the link, they will find every delivered
		// chunk when they continue, and ack it into the dead link.
		recv1.signal(syscall.SIGSTOP)
		recv2.signal(syscall.SIGSTOP)
		site.waitQuietLink(200 * time.Millisecond)
		site.cutLink()
		recv1.signal(syscall.SIGCONT)
		recv2.signal(syscall.SIGCONT)
		site.explain(probe, rep, t1, t2) // the acks the hub is left waiting for
	case "sent":
		rep = waitForReplication(t, send, site.liveStatus, "the end marker stored", probe.endStored())
		site.cutLink()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		last, err := probe.lastSeq(ctx, rep)
		if err != nil {
			t.Fatalf("read the stream on the hub: %v", err)
		}
		for _, dir := range []string{t1, t2} {
			c, err := probe.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(filepath.Base(dir)))
			if err != nil {
				t.Fatalf("read %s's consumer on the hub: %v", dir, err)
			}
			acked := c.CachedInfo().AckFloor.Stream
			if acked >= last || committedAt(dir, rep) {
				t.Fatalf("scenario not reached: %s had acknowledged up to seq %d of %d (committed %v) when the link was cut",
					dir, acked, last, committedAt(dir, rep))
			}
			t.Logf("at the cut %s had acknowledged up to seq %d of %d", filepath.Base(dir), acked, last)
		}
		cancel()
	}
	cutAt := time.Now()
	site.waitState(send, rep, c.state)
	for _, dir := range []string{t1, t2} {
		assertNoPartialCommitted(t, dir, rep)
	}

	// The fault itself: the link stays down for the outage.
	t.Logf("holding the link down for %v", outage)
	site.holdDown(cutAt.Add(outage))
	for _, p := range procs {
		if p.exited() {
			t.Fatalf("%s exited while the link was down", p.name)
		}
	}
	site.waitState(send, rep, c.state)
	for _, dir := range []string{t1, t2} {
		if committedAt(dir, rep) {
			t.Errorf("%s committed while the link to the hub was down", dir)
		}
		assertNoPartialCommitted(t, dir, rep)
	}

	site.explain(probe, rep, t1, t2) // the hub's view at the end of the outage
	back := site.restoreLink()
	deadline := back.Add(recoveryBound)
	// The leaf node's relink is only logged: the bound is on the commits.
	// It is watched apart, as a check can take up to a second.
	relinked := make(chan time.Duration, 1)
	go func() {
		for time.Now().Before(deadline) && t.Context().Err() == nil {
			if site.linkUp(t.Context()) {
				relinked <- time.Since(back)
				return
			}
			time.Sleep(20 * time.Millisecond) // polling interval, not ordering
		}
	}()
	events := map[string]time.Duration{}
	checks := map[string]func() bool{
		"t1 committed": func() bool { return committedAt(t1, rep) },
		"t2 committed": func() bool { return committedAt(t2, rep) },
		"send exited":  send.exited,
	}
	for len(events) < len(checks) && time.Now().Before(deadline) {
		for what, happened := range checks {
			if _, seen := events[what]; !seen && happened() {
				events[what] = time.Since(back)
				t.Logf("%s %.1fs after the link returned", what, events[what].Seconds())
			}
		}
		select {
		case d := <-relinked:
			t.Logf("the leaf node reached the hub again %.1fs after the link returned", d.Seconds())
		case <-time.After(50 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
	if len(events) < len(checks) {
		var missing []string
		for what := range checks {
			if _, seen := events[what]; !seen {
				missing = append(missing, what)
			}
		}
		sort.Strings(missing)
		site.explain(probe, rep, t1, t2)
		for _, p := range procs {
			if p.exited() {
				t.Logf("%s has exited: %v", p.name, p.err)
			}
		}
		t.Fatalf("%v after the link returned (cut for %v in state %s), still missing: %s",
			recoveryBound, outage, c.state, strings.Join(missing, ", "))
	}

	res := send.wait(0)
	if res.code != 0 {
		t.Fatalf("send exited %d after the link returned, want 0: %s", res.code, res.stderr)
	}
	for _, p := range []*proc{site.hub, site.leaf, recv1, recv2} {
		if p.exited() {
			t.Errorf("%s exited; no process may need a restart after a link cut", p.name)
		}
	}
	done := assertDone(t, site.status(), rep.SnapshotName)
	t.Logf("figures: attempt %d, %d chunks, %d wire bytes; %d bytes crossed the link to the leaf node, %d to the hub",
		done.Attempt, done.TotalChunks, done.WireBytes, site.link.Down(), site.link.Up())
	assertReplicated(t, rep.Snapshot, t1, t2)
	waitUntil(t, nil, recoveryBound, "the receivers to clear their staging", func(context.Context) bool {
		return stagingEmpty(t1) && stagingEmpty(t2)
	})
	assertStagingEmpty(t, t1)
	assertStagingEmpty(t, t2)
}

// waitState waits (bounded) until status on the hub shows rep in the
// state the case needs at its cut: a fault in another state tests
// something else.
func (s *leafSite) waitState(send *proc, rep replication, state string) {
	s.t.Helper()
	var last string
	waitUntil(s.t, send, 30*time.Second, "replication "+rep.ID+" in state "+state, func(ctx context.Context) bool {
		doc, err := s.liveStatus(ctx)
		if err != nil {
			return false
		}
		r, ok := doc.bySnapshot(rep.SnapshotName)
		if !ok {
			return false
		}
		if r.State != last {
			s.t.Logf("status: %v", r)
			last = r.State
		}
		return r.State == state
	})
}

// explain logs what the hub knows about each target's consumer: whether
// the receiver has a pull waiting, what it was delivered and what it
// acknowledged.
func (s *leafSite) explain(probe *jsProbe, rep replication, dirs ...string) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if doc, err := s.liveStatus(ctx); err == nil {
		if r, ok := doc.bySnapshot(rep.SnapshotName); ok {
			s.t.Logf("status: %v", r)
		}
	}
	if last, err := probe.lastSeq(ctx, rep); err == nil {
		s.t.Logf("stream of %s on the hub: last seq %d", rep.ID, last)
	}
	for _, dir := range dirs {
		name := filepath.Base(dir)
		c, err := probe.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
		if err != nil {
			s.t.Logf("consumer of %s: %v", name, err)
			continue
		}
		i := c.CachedInfo()
		s.t.Logf("consumer of %s on the hub: waiting pulls %d, delivered up to seq %d, acknowledged up to seq %d, %d pending acks, %d not yet delivered, %d redelivered",
			name, i.NumWaiting, i.Delivered.Stream, i.AckFloor.Stream, i.NumAckPending, i.NumPending, i.NumRedelivered)
	}
}

// allDelivered holds once the hub has delivered every message stored in
// rep's stream to the targets in dirs, and none of them has acknowledged
// all it was delivered.
func (p *jsProbe) allDelivered(dirs ...string) func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		last, err := p.lastSeq(ctx, rep)
		if err != nil {
			return false
		}
		var views []string
		for _, dir := range dirs {
			name, _, ok := rep.target(dir)
			if !ok {
				return false
			}
			c, err := p.js.Consumer(ctx, streams.StreamName(rep.ID), streams.ConsumerName(name))
			if err != nil {
				return false
			}
			i := c.CachedInfo()
			if i.Delivered.Stream != last || i.AckFloor.Stream >= i.Delivered.Stream {
				return false
			}
			views = append(views, fmt.Sprintf("%s acknowledged up to %d", name, i.AckFloor.Stream))
		}
		p.t.Logf("JetStream: all %d stored messages delivered; %s", last, strings.Join(views, ", "))
		return true
	}
}

// lastSeq is the sequence of the last message in rep's stream.
func (p *jsProbe) lastSeq(ctx context.Context, rep replication) (uint64, error) {
	s, err := p.js.Stream(ctx, streams.StreamName(rep.ID))
	if err != nil {
		return 0, err
	}
	return s.CachedInfo().State.LastSeq, nil
}

// endStored holds once the end marker of the current attempt is the last
// message stored in rep's stream.
func (p *jsProbe) endStored() func(context.Context, replication) bool {
	return func(ctx context.Context, rep replication) bool {
		seq, attempt, ok := p.storedEnd(ctx, rep)
		if ok {
			p.t.Logf("JetStream: end marker of attempt %d stored at seq %d", attempt, seq)
		}
		return ok
	}
}

// stagingEmpty reports whether TARGET/.snapjet/incoming holds nothing.
func stagingEmpty(target string) bool {
	entries, err := os.ReadDir(filepath.Join(target, ".snapjet", "incoming"))
	return os.IsNotExist(err) || (err == nil && len(entries) == 0)
}

// waitQuietLink waits (bounded) until no byte has crossed the link towards
// the leaf node for quiet.
func (s *leafSite) waitQuietLink(quiet time.Duration) {
	s.t.Helper()
	last, since := s.link.Down(), time.Now()
	waitUntil(s.t, nil, 10*time.Second, "the link to fall quiet", func(context.Context) bool {
		if n := s.link.Down(); n != last {
			last, since = n, time.Now()
		}
		return time.Since(since) >= quiet
	})
}

// holdDown keeps the link down until the given moment, checking every
// second that the leaf node has not found another way to the hub.
func (s *leafSite) holdDown(until time.Time) {
	s.t.Helper()
	for time.Now().Before(until) {
		if s.linkUp(s.t.Context()) {
			s.t.Fatal("the leaf node reached the hub while the link was cut: it went around the proxy")
		}
		select {
		case <-time.After(min(time.Second, time.Until(until))):
		case <-s.t.Context().Done():
			s.t.Fatal(s.t.Context().Err())
		}
	}
}
