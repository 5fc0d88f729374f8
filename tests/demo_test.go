package tests

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// demoTimeout bounds the README's demo, which takes about 10 s here.
const demoTimeout = 5 * time.Minute

// The README's first command, scripts/demo, replicates full and then
// incremental, shows the status and the received snapshots, checks that
// the newest one equals its source, and cleans up: it exits 0 and leaves
// nothing mounted. (It failed at its status step for a while, unnoticed:
// status stopped embedding a server without --offline.)
func TestDemoScriptRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), demoTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../scripts/demo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// On the timeout its own trap unmounts: SIGTERM first, SIGKILL later.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("scripts/demo: %v (waited at most %v)\n%s", err, demoTimeout, text)
	}
	for _, want := range []string{"committed", "Received UUID", "readonly", "the newest snapshot on the target equals the source snapshot"} {
		if !strings.Contains(text, want) {
			t.Errorf("scripts/demo printed no %q:\n%s", want, text)
		}
	}
	if strings.Count(text, " done ") < 2 {
		t.Errorf("scripts/demo's status shows fewer than two replications done:\n%s", text)
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), "/tmp/snapjet-demo.") {
		t.Errorf("scripts/demo left a mount behind:\n%s", mounts)
	}
}
