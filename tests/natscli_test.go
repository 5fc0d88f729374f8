package tests

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/internal/doccmd"
)

// Operators follow a replication with the nats CLI: every `nats` command
// that docs/ARCHITECTURE.md prints runs, placeholders filled in, against a
// replication under way, and answers with what it names.
func TestNatsCommandsInTheDocsWork(t *testing.T) {
	natsCLI, err := exec.LookPath("nats")
	if err != nil {
		t.Skip("the nats CLI is not installed (scripts/setup installs it)")
	}
	cmds, err := doccmd.Quoted("../docs/ARCHITECTURE.md", "nats")
	if err != nil || len(cmds) < 8 {
		t.Fatalf("found only %d nats commands in docs/ARCHITECTURE.md (%v): %q", len(cmds), err, cmds)
	}
	source, target, _ := newPair(t, dataSet{seed: 43, bulk: 24 * mib})
	srv := startServer(t)
	startReceiver(t, srv.url(), "backup", target)
	// Slow enough that the stream, its consumer, the record and the lease
	// all exist while the commands run.
	send := startSnapjet(t, "send", "send", "--server", srv.url(), "--to", "backup", "--rate-limit", "1MB/s", source)
	rep := waitForReplication(t, send, srv.liveStatus, "a replication under way", func(_ context.Context, r replication) bool {
		return r.State == "sending" && r.Targets["backup"].State == "receiving"
	})
	fill := strings.NewReplacer("<id>", rep.ID, "<name>", "backup", "<target>", "backup", "<uuid>", rep.SourceUUID)
	for _, c := range cmds {
		args := doccmd.Words(fill.Replace(c))
		// What each must name in its answer.
		want := map[bool]string{true: "backup", false: rep.ID}[strings.Contains(c, "<name>") || strings.Contains(c, "<target>")]
		switch {
		case strings.Contains(c, "lease."):
			want = "pid"
		case strings.Contains(c, "micro"):
			want = "snapjet"
		case strings.HasSuffix(c, "kv ls snapjet_state"):
			want = "repl." + rep.ID
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		cmd := exec.CommandContext(ctx, natsCLI, append([]string{"--server", srv.url()}, args[1:]...)...)
		cmd.Env = append(os.Environ(), "NO_COLOR=1")
		out, err := cmd.CombinedOutput()
		following := ctx.Err() != nil && strings.Contains(c, " watch ")
		cancel()
		if following {
			err = nil // it follows until stopped; what it printed so far counts
		}
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("$ %s: %v, want an answer naming %q:\n%s", c, err, want, doccmd.Clip(out))
			continue
		}
		t.Logf("$ %s\n%s", strings.Join(args, " "), doccmd.Clip(out))
	}
	if res := send.wait(transferTimeout); res.code != 0 {
		t.Fatalf("send exited %d: %s", res.code, res.stderr)
	}
}
