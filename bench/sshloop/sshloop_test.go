package sshloop

import (
	"context"
	"os"
	"strings"
	"testing"
)

func TestRemoteCommandRunsOverLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("sshd needs root")
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Skip("openssh-server not installed (bench/run installs it)")
	}
	ctx := context.Background()
	s, err := Setup(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sshd := s.Command()
	var sshdErr strings.Builder
	sshd.Stderr = &sshdErr
	if err := sshd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sshd.Process.Kill(); sshd.Wait() }()
	if err := s.WaitReady(ctx); err != nil {
		t.Fatalf("%v: %s", err, sshdErr.String())
	}
	for _, tc := range []struct{ in, remote, want string }{
		{"hello\n", "cat", "hello\n"},
		{"abc", "tr a-z A-Z", "ABC"},
	} {
		c := s.Client(tc.remote)
		c.Stdin = strings.NewReader(tc.in)
		var stderr strings.Builder
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			t.Fatalf("ssh %s: %v: %s", tc.remote, err, stderr.String())
		}
		if string(out) != tc.want {
			t.Errorf("ssh %s: got %q, want %q", tc.remote, out, tc.want)
		}
	}
}
