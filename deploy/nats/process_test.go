package natsconf_test

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The topology tests run the real binaries, as an operator would: snapjet
// built from this tree and nats-server from the version in go.mod. Both are
// built once per test binary, on first use.
var (
	buildOnce               sync.Once
	binDir                  string
	snapjetBin, natsBin     string
	buildErr                error
	procsMu                 sync.Mutex
	procs                   []*proc // every process started, for the secret checks
	secretsMu               sync.Mutex
	secrets                 []string // every secret a test handed out
	processStartTimeout     = 30 * time.Second
	processShutdownDeadline = 10 * time.Second
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func binaries(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds snapjet and nats-server and runs them: not with -short")
	}
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "snapjet-deploy-bin-")
		if buildErr != nil {
			return
		}
		snapjetBin, natsBin = filepath.Join(binDir, "snapjet"), filepath.Join(binDir, "nats-server")
		for _, b := range [][2]string{{snapjetBin, "github.com/snapjet/snapjet/cmd/snapjet"}, {natsBin, "github.com/nats-io/nats-server/v2"}} {
			out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// secret registers a string that must never show in any process's output
// or argv, and returns it.
func secret(s string) string {
	secretsMu.Lock()
	defer secretsMu.Unlock()
	secrets = append(secrets, s)
	return s
}

// syncBuffer collects a process's output while it runs.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type proc struct {
	name string
	cmd  *exec.Cmd
	out  syncBuffer
	done chan struct{}
}

// launch runs bin in its own process group; t.Cleanup stops the group
// (SIGTERM, then SIGKILL), also when the test fails half-way, and
// Pdeathsig ends it should the test binary die without its cleanups.
func launch(t *testing.T, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	t.Logf("$ %s %s", filepath.Base(bin), strings.Join(args, " "))
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	checkArgv(t, p)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// checkArgv fails the test if a secret shows in the process's command
// line, which every user of the machine can read.
func checkArgv(t *testing.T, p *proc) {
	t.Helper()
	argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.cmd.Process.Pid))
	if err != nil {
		return // already gone
	}
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, s := range secrets {
		if bytes.Contains(argv, []byte(s)) {
			t.Errorf("%s: argv shows a secret: %q", p.name, bytes.ReplaceAll(argv, []byte{0}, []byte{' '}))
		}
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) stop(t *testing.T) {
	if !p.exited() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(processShutdownDeadline):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	if t.Failed() {
		t.Logf("output of %s:\n%s", p.name, p.out.String())
	}
}

// kill ends the process with SIGKILL, as a crash would.
func (p *proc) kill() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// run runs a command to its end and returns its exit code and output.
func run(t *testing.T, timeout time.Duration, name string, env []string, bin string, args ...string) (int, string) {
	t.Helper()
	p := launch(t, name, env, bin, args...)
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not finish within %v:\n%s", name, timeout, p.out.String())
	}
	t.Logf("%s exited %d:\n%s", name, p.cmd.ProcessState.ExitCode(), p.out.String())
	return p.cmd.ProcessState.ExitCode(), p.out.String()
}

// waitFor polls cond until it holds, failing after timeout or when p (if
// not nil) exits first.
func waitFor(t *testing.T, what string, timeout time.Duration, p *proc, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(100 * time.Millisecond) {
		if p != nil && p.exited() {
			t.Fatalf("%s exited while waiting for %s:\n%s", p.name, what, p.out.String())
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, timeout)
		}
	}
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, p *proc, addr string) {
	t.Helper()
	waitFor(t, p.name+" listening on "+addr, processStartTimeout, p, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", freePort(t))
}

// checkOutputs fails the test when any process's output shows a secret.
func checkOutputs(t *testing.T) {
	t.Helper()
	procsMu.Lock()
	defer procsMu.Unlock()
	secretsMu.Lock()
	defer secretsMu.Unlock()
	for _, p := range procs {
		out := p.out.String()
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Errorf("the output of %s shows a secret", p.name)
			}
		}
	}
}
