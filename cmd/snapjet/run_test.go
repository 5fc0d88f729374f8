package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/sender"
)

// TestRunJob: `snapjet run` replicates a job to its local target and
// prunes both sides with the job's retention, keeping the base; --dry-run
// changes nothing; an unknown job is bad input; status --config reports
// the job, a silent receiver and an overdue job.
func TestRunJob(t *testing.T) {
	ctx := context.Background()
	fs := loopfs.New(t, 256<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	backup := filepath.Join(fs.Dir, "backup")
	for _, d := range []string{filepath.Dir(src), backup} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := btrfs.CreateSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	store := t.TempDir()
	text := fmt.Sprintf(`
server: {store: %s, listen: "127.0.0.1:0"}
jobs:
  - name: share
    source: %s
    targets: [%s]
    schedule: "@every 1h"
    retain:
      source: {latest: 1}
      target: {latest: 1}
`, store, src, backup)
	cfg := writeConfig(t, text)

	for round := 1; round <= 3; round++ {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%d", round)), []byte(strings.Repeat("x", 100000*round)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _, err := execute(runCmd(testGlobals()), "--config", cfg, "share")
		if err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, out)
		}
		if !strings.Contains(out, backup+": committed ") {
			t.Fatalf("round %d: no commit:\n%s", round, out)
		}
		srcSnaps := snapshotsIn(t, sender.SnapshotDir(src))
		dstSnaps := snapshotsIn(t, backup)
		if len(srcSnaps) != 1 || len(dstSnaps) != 1 || srcSnaps[0] != dstSnaps[0] {
			t.Fatalf("round %d: source keeps %v, target %v; want the one latest snapshot on both\n%s", round, srcSnaps, dstSnaps, out)
		}
		if round > 1 && !strings.Contains(out, "retention deleted 2 of 2 snapshot(s)") {
			t.Errorf("round %d: output:\n%s", round, out)
		}
	}

	before := listSubvolumes(t, fs.Dir)
	out, _, err := execute(runCmd(testGlobals()), "--config", cfg, "--dry-run", "share")
	if err != nil || !strings.Contains(out, "dry run: nothing replicated; retention would delete 0 snapshot(s) now") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if after := listSubvolumes(t, fs.Dir); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Errorf("--dry-run changed the filesystem: %v → %v", before, after)
	}

	if _, _, err := execute(runCmd(testGlobals()), "--config", cfg, "nosuch"); exitCode(err) != 2 {
		t.Errorf("unknown job: exit %d (%v)", exitCode(err), err)
	}

	// status never starts a server: none runs on the store now.
	g := testGlobals()
	g.store, g.listen = store, "127.0.0.1:0"
	out, _, err = execute(statusCmd(g), "--config", cfg)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "no snapjet server is running") {
		t.Fatalf("status without a server: exit %d (%v)\n%s", exitCode(err), err, out)
	}
	empty := t.TempDir()
	g.store = empty
	if _, _, err := execute(statusCmd(g)); exitCode(err) != 1 {
		t.Errorf("status on an empty store: exit %d (%v)", exitCode(err), err)
	}
	if _, _, err := execute(statusCmd(g), "--offline"); exitCode(err) != 1 || !strings.Contains(err.Error(), "holds no snapjet state") {
		t.Errorf("status --offline on an empty store: exit %d (%v)", exitCode(err), err)
	}
	if entries, _ := os.ReadDir(empty); len(entries) != 0 {
		t.Errorf("status created %d entries in the store", len(entries))
	}
	// --offline reads the records of a store nothing serves.
	g.store = store
	out, _, err = execute(statusCmd(g), "--offline", "--json")
	if err != nil || !strings.Contains(out, `"state": "done"`) {
		t.Fatalf("status --offline: %v\n%s", err, out)
	}

	// With the server up (as a daemon would run it): the job is fine.
	srv, err := broker.StartServer(broker.ServerConfig{Store: store, Listen: "127.0.0.1:0", Log: g.log})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	out, _, err = execute(statusCmd(testGlobals()), "--config", cfg)
	if err != nil || !regexp.MustCompile(`share +`+regexp.QuoteMeta(backup)+` +\S+ +\S+ +\S+ +- +ok`).MatchString(out) {
		t.Fatalf("status: %v\n%s", err, out)
	}
	// A receiver of the config that does not answer: exit 1, named, with
	// the jobs still reported.
	inbox := filepath.Join(fs.Dir, "inbox")
	unheard := writeConfig(t, text+"receivers:\n  - target: unheard\n    dir: "+inbox+"\n")
	out, _, err = execute(statusCmd(testGlobals()), "--config", unheard)
	if exitCode(err) != 1 || !regexp.MustCompile(`unheard +`+regexp.QuoteMeta(inbox)+` +NO +`).MatchString(out) ||
		!strings.Contains(out, "share ") || !strings.Contains(err.Error(), "unheard: its receiver does not answer") || !strings.Contains(out, "is it running (systemctl status snapjet-daemon)?") {
		t.Errorf("status with a silent receiver: exit %d (%v)\n%s", exitCode(err), err, out)
	}
	// A target that never had a success makes the job overdue: exit 1.
	late := writeConfig(t, strings.Replace(text, "targets: ["+backup+"]", "targets: ["+backup+", \"remote:gone\"]", 1))
	out, _, err = execute(statusCmd(testGlobals()), "--config", late, "--json")
	if exitCode(err) != 1 || !strings.Contains(out, `"overdue": true`) || !strings.Contains(err.Error(), "overdue") {
		t.Errorf("status of an overdue job: exit %d (%v)\n%s", exitCode(err), err, out)
	}
}

func snapshotsIn(t *testing.T, dir string) []string {
	t.Helper()
	infos, err := btrfs.List(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, i := range infos {
		out = append(out, filepath.Base(i.Path))
	}
	return out
}
