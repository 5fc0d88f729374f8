package tests

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A site away for longer than the window can hold (issue 8, item 3): the
// site's link to the hub is cut while its target receives, with a window
// of a third of the change. The near target (at the hub, or at another
// site) commits; the far site's target fails alone, once its stall timeout
// passes, with the reason; and the next run, with the link back, brings
// the far site up to date with an incremental from its last common base,
// while the near target gets only the next incremental: never a full
// resend.
//
// It runs on both kinds of site: a leaf node without JetStream, whose
// target consumes the hub's stream across the link, and a site node with
// its own JetStream, whose target consumes the site's copy: there the copy
// left at the site when the failed replication ended is of a stream that
// no longer exists, and the retry must replace it, not read from it.
func TestSiteAwayPastTheWindow(t *testing.T) {
	t.Run("leaf-node", func(t *testing.T) {
		site := startLeafSite(t)
		siteAway(t, site,
			func(target, dir string) { startReceiver(t, site.hubURL(), target, dir) },
			func(target, dir string) { startReceiver(t, site.leafURL(), target, dir) })
	})
	// Two sites with their own JetStream: near is at site-b, whose link
	// stays up; far at site-a.
	t.Run("site-node", func(t *testing.T) {
		s := startSites(t)
		siteAway(t, s.wan("site-a"),
			func(target, dir string) { s.receiver("site-b", target, dir) },
			func(target, dir string) { s.receiver("site-a", target, dir) })
	})
}

// wanSite is a hub and one site whose link to it a test can cut.
type wanSite interface {
	hubURL() string
	liveStatus(ctx context.Context) (statusDoc, error)
	status() statusDoc
	cutLink()
	restoreLink() time.Time
	linkUp(ctx context.Context) bool
}

func siteAway(t *testing.T, site wanSite, startNear, startFar func(target, dir string)) {
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	dataSet{seed: 51, bulk: 32 * mib}.newSource(t, source)
	near, far := newTarget(t, 1<<30, "near"), newTarget(t, 1<<30, "far")
	startNear("near", near)
	startFar("far", far)
	args := func(extra ...string) []string {
		return append(append([]string{"send", "--server", site.hubURL(), "--to", "near,far"}, extra...), source)
	}

	if res := startSnapjet(t, "send-full", args()...).wait(transferTimeout); res.code != 0 {
		t.Fatalf("first send exited %d: %s", res.code, res.stderr)
	}
	first, _ := site.status().newest()
	mutate(t, source, 52, 24*mib)

	send := startSnapjet(t, "send-cut", args("--window", "8388608", "--stall-timeout", "15s", "--rate-limit", "4MB/s")...)
	waitForReplication(t, send, site.liveStatus, "the site's target receiving the change", func(_ context.Context, r replication) bool {
		return r.SnapshotName != first.SnapshotName && r.Targets["far"].State == "receiving"
	})
	site.cutLink()
	res := send.wait(transferTimeout)
	if res.code != 1 || !strings.Contains(res.stdout+res.stderr, "far") {
		t.Fatalf("send with the site away exited %d, want 1 naming far: %s%s", res.code, res.stdout, res.stderr)
	}
	doc := site.status()
	second, _ := doc.newest()
	if r, ts, _ := doc.outcome(second.SnapshotName, "near"); ts.State != "committed" || r.ParentUUID != first.SnapshotUUID {
		t.Errorf("near: %+v with parent %q, want committed incrementally from %s", ts, r.ParentUUID, first.SnapshotUUID)
	}
	if _, ts, _ := doc.outcome(second.SnapshotName, "far"); ts.State != "failed" || !strings.Contains(ts.Error, "no progress") {
		t.Errorf("far: %+v, want failed for its lack of progress", ts)
	}
	assertReplicated(t, second.Snapshot, near)
	assertAbsent(t, filepath.Join(far, second.SnapshotName))

	site.restoreLink()
	waitUntil(t, nil, transferTimeout, "the site's link to the hub", site.linkUp)
	if res := startSnapjet(t, "send-back", args()...).wait(transferTimeout); res.code != 0 {
		t.Fatalf("send with the site back exited %d: %s", res.code, res.stderr)
	}
	doc = site.status()
	r, ts, _ := doc.outcome(second.SnapshotName, "far")
	if ts.State != "committed" || r.ParentUUID != first.SnapshotUUID {
		t.Errorf("far after the site came back: %+v with parent %q, want committed incrementally from its base %s", ts, r.ParentUUID, first.SnapshotUUID)
	}
	t.Logf("figures: far caught up with a %d-byte stream (%d on the wire); the first, full stream was %d bytes", r.TotalBytes, r.WireBytes, first.TotalBytes)
	third, _ := doc.newest()
	for _, name := range []string{"near", "far"} {
		if r, ts, _ := doc.outcome(third.SnapshotName, name); ts.State != "committed" || r.ParentUUID != second.SnapshotUUID {
			t.Errorf("%s in the next snapshot: %+v with parent %q, want committed incrementally from %s", name, ts, r.ParentUUID, second.SnapshotUUID)
		}
	}
	assertReplicated(t, second.Snapshot, far)
	assertReplicated(t, third.Snapshot, near, far)
}
