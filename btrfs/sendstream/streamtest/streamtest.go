// Package streamtest produces real send streams for tests: it runs
// `btrfs send` and shell setup scripts against loop-mounted btrfs, failing
// the test on any error.
package streamtest

import (
	"context"
	"io"
	"os/exec"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
)

// Send runs `btrfs send` for the read-only snapshot snap and returns the
// whole stream.
func Send(t testing.TB, snap string, opt btrfs.SendOptions) []byte {
	t.Helper()
	r, p, err := btrfs.Send(context.Background(), snap, opt)
	if err != nil {
		t.Fatal(err)
	}
	data, rerr := io.ReadAll(r)
	if err := p.Wait(); err != nil {
		t.Fatalf("btrfs send %s: %v", snap, err)
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	return data
}

// Sh runs a shell script with -e and fails the test with its output.
func Sh(t testing.TB, script string) {
	t.Helper()
	if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}
