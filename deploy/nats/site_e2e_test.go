package natsconf_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/loopfs"
)

// TestReceiverAtSiteNode replicates a real btrfs subvolume from a sender at
// the hub to a receiver at a site node (separate snapjet server processes)
// with the receiver using the hub's JetStream through --js-domain hub: what
// a site can do until replications are copied into the site's JetStream.
func TestReceiverAtSiteNode(t *testing.T) {
	binaries(t)
	src, dst := loopfs.New(t, 256<<20), loopfs.New(t, 256<<20)
	source := filepath.Join(src.Dir, "data")
	if out, err := exec.Command("btrfs", "subvolume", "create", source).CombinedOutput(); err != nil {
		t.Fatalf("btrfs subvolume create: %v\n%s", err, out)
	}
	payload := make([]byte, 8<<20)
	_, _ = rand.Read(payload)
	if err := os.WriteFile(filepath.Join(source, "file"), payload, 0o644); err != nil {
		t.Fatal(err)
	}

	hubAddr, leafAddr, siteAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	hub := launch(t, "hub", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", hubAddr, "--domain", "hub", "--leaf-listen", leafAddr)
	waitListening(t, hub, hubAddr)
	site := launch(t, "site-a", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", siteAddr, "--domain", "site-a", "--hub", "nats-leaf://"+leafAddr)
	waitFor(t, "site-a's link to the hub", processStartTimeout, site, func() bool { return strings.Contains(site.out.String(), "link to hub up") })

	launch(t, "receiver at site-a", nil, snapjetBin, "receive", "--server", "nats://"+siteAddr, "--js-domain", "hub", "--target", "nas-a", dst.Dir)
	code, out := run(t, 3*time.Minute, "send at the hub", nil, snapjetBin, "send", "--server", "nats://"+hubAddr, "--to", "nas-a", "--receiver-wait", "60s", source)
	if code != 0 {
		t.Fatalf("send to a receiver at the site node: exit %d\n%s", code, out)
	}
	matches, _ := filepath.Glob(filepath.Join(dst.Dir, "data.*", "file"))
	if len(matches) != 1 {
		t.Fatalf("the target holds %v, want one received snapshot of data", matches)
	}
	got, err := os.ReadFile(matches[0])
	if err != nil || !bytes.Equal(got, payload) {
		t.Errorf("the received file differs from the source (%v)", err)
	}
}
