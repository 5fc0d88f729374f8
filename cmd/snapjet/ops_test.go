package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/prune"
	"github.com/snapjet/snapjet/sender"
)

// execute runs one command as the CLI would, capturing its output.
func execute(cmd *cobra.Command, args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func testGlobals() *globals {
	return &globals{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return 1
	}
	return 0
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snapjet.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigCheck(t *testing.T) {
	good := writeConfig(t, `
jobs:
  - name: home
    source: /data/home
    targets: [/backup/home, remote:site-b]
    schedule: "@every 1h"
    retain: {source: {latest: 3}}
    rate_limit: 50MB/s
receivers:
  - {target: site-a, dir: /backup/a}
`)
	out, _, err := execute(configCmd(testGlobals()), "check", good)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{": OK, 1 job(s), 1 receiver(s)\n", "server: embedded, store /var/lib/snapjet, listen 127.0.0.1:4222\n",
		"job home: /data/home → /backup/home, remote:site-b\n", "retain on the source: latest 3; on the targets: everything (no policy)\n",
		"rate limit 50000000 bytes/s (47.7 MiB/s)\n", "receiver site-a: /backup/a\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	bad := writeConfig(t, "jobs:\n  - name: home\n    source: data\n    schedul: hourly\n")
	out, errOut, err := execute(configCmd(testGlobals()), "check", bad)
	if exitCode(err) != 2 || out != "" {
		t.Fatalf("exit %d (%v), stdout %q", exitCode(err), err, out)
	}
	want := bad + `:3: jobs[0].source: "data" is a relative path (write an absolute path (the daemon runs from /))
` + bad + `:4: jobs[0].schedul: unknown key (did you mean schedule? known keys here: chunk_size, compress, compressed_data, name, rate_limit, retain, schedule, source, targets, window)
` + bad + `:2: jobs[0].targets: missing (add targets: with a list of local directories and/or remote:NAME)
` + bad + `:2: jobs[0].schedule: missing (add schedule: "@every 1h" or a 5-field cron expression such as "0 * * * *")
`
	if errOut != want || err.Error() != bad+": 4 error(s) in the config file, nothing was done" {
		t.Errorf("stderr:\n%s\nwant:\n%s\nerror: %v", errOut, want, err)
	}

	if _, _, err := execute(pruneCmd(testGlobals()), "--config", bad); exitCode(err) != 2 {
		t.Errorf("prune with a bad config: exit %d", exitCode(err))
	}
	if _, _, err := execute(pruneCmd(testGlobals()), "--config", good, "nosuchjob"); exitCode(err) != 2 || !strings.Contains(err.Error(), `no job "nosuchjob"`) {
		t.Errorf("prune of an unknown job: exit %d (%v)", exitCode(err), err)
	}
}

// TestPruneDryRunThenPrune: on real btrfs, with the embedded server of
// the config file, `prune --dry-run` lists and changes nothing, and the
// same prune without it deletes exactly the listed snapshots; the base
// survives on both sides.
func TestPruneDryRunThenPrune(t *testing.T) {
	ctx := context.Background()
	fs := loopfs.New(t, 256<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	backup := filepath.Join(fs.Dir, "backup")
	for _, d := range []string{filepath.Dir(src), backup, sender.SnapshotDir(src)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := btrfs.CreateSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	for h := 10; h <= 13; h++ {
		snap := filepath.Join(sender.SnapshotDir(src), fmt.Sprintf("share.20261130T%d0000Z", h))
		if err := btrfs.Snapshot(ctx, src, snap, true); err != nil {
			t.Fatal(err)
		}
		if h <= 11 { // the target missed 12:00 and 13:00: its base is 11:00
			stream, send, err := btrfs.Send(ctx, snap, btrfs.SendOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rerr := btrfs.Receive(ctx, backup, stream)
			stream.Close()
			if err := errors.Join(send.Wait(), rerr); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := writeConfig(t, fmt.Sprintf(`
server: {store: %s, listen: "127.0.0.1:0"}
jobs:
  - name: share
    source: %s
    targets: [%s]
    schedule: "@every 1h"
    retain:
      source: {latest: 1}
      target: {latest: 1}
`, t.TempDir(), src, backup))

	before := listSubvolumes(t, fs.Dir)
	out, _, err := execute(pruneCmd(testGlobals()), "--config", cfg, "--dry-run", "share")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prune --dry-run:\n%s", out)
	if after := listSubvolumes(t, fs.Dir); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("--dry-run changed the filesystem: %v → %v", before, after)
	}
	listed := deleteLines.FindAllStringSubmatch(out, -1)
	if len(listed) != 3 || !strings.HasSuffix(out, "dry run: would delete 3 snapshot(s)\n") {
		t.Fatalf("dry run listed %d deletions:\n%s", len(listed), out)
	}
	for _, want := range []string{"keep    share.20261130T130000Z  latest 1", "keep    share.20261130T110000Z  base of target backup-"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q", want)
		}
	}

	out2, _, err := execute(pruneCmd(testGlobals()), "--config", cfg, "share")
	if err != nil {
		t.Fatal(err)
	}
	if plan, _ := strings.CutSuffix(out, "dry run: would delete 3 snapshot(s)\n"); !strings.HasPrefix(out2, plan) || !strings.HasSuffix(out2, "deleted 3 of 3 snapshot(s)\n") {
		t.Errorf("prune printed another plan than its dry run:\n%s", out2)
	}
	gone := map[string]bool{}
	for _, b := range before {
		gone[b] = true
	}
	for _, a := range listSubvolumes(t, fs.Dir) {
		delete(gone, a)
	}
	var deleted []string
	for p := range gone {
		deleted = append(deleted, p)
	}
	sort.Strings(deleted)
	want := []string{"/backup/share.20261130T100000Z", "/data/.snapjet/share/share.20261130T100000Z", "/data/.snapjet/share/share.20261130T120000Z"}
	if strings.Join(deleted, " ") != strings.Join(want, " ") {
		t.Errorf("deleted %v, want exactly the listed %v", deleted, want)
	}
	for _, base := range []string{filepath.Join(backup, "share.20261130T110000Z"), filepath.Join(sender.SnapshotDir(src), "share.20261130T110000Z")} {
		if !btrfs.IsSubvolume(base) {
			t.Errorf("the base %s was deleted", base)
		}
	}
}

var deleteLines = regexp.MustCompile(`(?m)^  delete +(\S+) +(.+)$`)

func listSubvolumes(t *testing.T, root string) []string {
	var out []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && p != root && btrfs.IsSubvolume(p) {
			out = append(out, strings.TrimPrefix(p, root))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// TestPruneNamesTargetsAsReplicate: prune finds a local target's records
// by the name replicate gives it; the two must never drift apart.
func TestPruneNamesTargetsAsReplicate(t *testing.T) {
	for _, dir := range []string{"/mnt/site-a/backup", "/srv/my backups.d", "/x/a very long directory name that goes on and on and on", "rel/dir"} {
		if got, want := prune.LocalTargetName(dir), targetName(dir); got != want {
			t.Errorf("prune names %q %q, replicate %q", dir, got, want)
		}
	}
}
