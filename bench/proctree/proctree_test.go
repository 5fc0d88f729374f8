package proctree

import (
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"
)

// The test binary doubles as a process with a known memory footprint.
func TestMain(m *testing.M) {
	if os.Getenv("PROCTREE_HELPER") == "alloc" {
		b := make([]byte, 64<<20)
		for i := range b {
			b[i] = byte(i)
		}
		// 8 MiB towards storage, fsynced so nothing is cancelled before writeback.
		f, err := os.CreateTemp("", "proctree-written-")
		if err == nil {
			f.Write(b[:8<<20])
			f.Sync()
			f.Close()
			os.Remove(f.Name())
		}
		time.Sleep(300 * time.Millisecond)
		runtime.KeepAlive(b)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLabel(t *testing.T) {
	for _, tc := range []struct {
		args []string
		comm string
		want string
	}{
		{[]string{"/usr/bin/btrfs", "send", "-q", "/s"}, "btrfs", "btrfs send"},
		{[]string{"btrfs", "receive", "/t"}, "btrfs", "btrfs receive"},
		{[]string{"/tmp/x/snapjet", "send", "--server", "u", "/s"}, "snapjet", "snapjet send"},
		{[]string{"zstd", "-3", "-c"}, "zstd", "zstd"},
		{[]string{"zstd", "-d", "-c"}, "zstd", "zstd -d"},
		{[]string{"sshd: root@notty"}, "sshd", "sshd"},
		{nil, "sshd-session", "sshd"},
		{[]string{"/usr/bin/ssh", "-p", "22"}, "ssh", "ssh"},
		{nil, "kworker", "kworker"},
	} {
		if got := label(tc.args, tc.comm); got != tc.want {
			t.Errorf("label(%q, %q) = %q, want %q", tc.args, tc.comm, got, tc.want)
		}
	}
}

func TestGroupMeasuresGrandchildren(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	g := New()
	defer g.Close()
	// sh must fork (not exec) the helper, so the helper is a grandchild
	// that only sampling can see.
	cmd := exec.Command("sh", "-c", `"$0"; exit 0`, self)
	cmd.Env = append(os.Environ(), "PROCTREE_HELPER=alloc")
	if err := g.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := g.Wait(cmd); err != nil {
		t.Fatal(err)
	}
	g.Close()
	var helper, sh *Proc
	procs := g.Procs()
	for i := range procs {
		switch procs[i].Label {
		case "proctree.test":
			helper = &procs[i]
		case "sh":
			sh = &procs[i]
		}
	}
	if helper == nil || sh == nil {
		t.Fatalf("procs = %+v, want sh and proctree.test", procs)
	}
	if helper.PeakRSS < 64<<20 {
		t.Errorf("helper peak RSS %d, want at least 64 MiB", helper.PeakRSS)
	}
	if helper.Written < 8<<20 {
		t.Errorf("helper wrote %d bytes, want at least 8 MiB", helper.Written)
	}
	if sh.Written >= 8<<20 {
		t.Errorf("sh counted its child's writes: %d bytes", sh.Written)
	}
	if sh.PeakRSS >= 64<<20 {
		t.Errorf("sh peak RSS %d includes its child's", sh.PeakRSS)
	}
	if g.CPU() <= 0 {
		t.Errorf("CPU = %v, want the helper's time", g.CPU())
	}
	if live := g.Live(cmd.Process.Pid); len(live) != 0 {
		t.Errorf("live after wait: %v", live)
	}
}
