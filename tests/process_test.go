package tests

import (
	"bytes"
	"context"
	"errors"
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

// proc is one snapjet subprocess. Its output is copied into the test log,
// each line prefixed with the process name, and also kept for assertions.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	stdout *logTee
	stderr *logTee
	done   chan struct{}
	err    error // cmd.Wait's result, valid once done is closed
}

// result is what a finished snapjet command left behind.
type result struct {
	code           int // -1 when killed by a signal
	stdout, stderr string
}

// startSnapjet starts the snapjet binary with args. The process (and any
// btrfs child it leaves behind) is killed in t.Cleanup; because cleanups run
// last-in first-out, callers create their loop filesystems before starting
// processes, so no process still holds a mount when it is unmounted.
func startSnapjet(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startSnapjetEnv(t, name, nil, args...)
}

// startSnapjetEnv is startSnapjet with extra environment variables.
func startSnapjetEnv(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	return startCommandEnv(t, name, env, snapjetBin, args...)
}

// startCommand starts another program the way startSnapjet starts snapjet
// (a wrapper such as unshare that ends in exec snapjet).
func startCommand(t *testing.T, name, prog string, args ...string) *proc {
	t.Helper()
	return startCommandEnv(t, name, nil, prog, args...)
}

func startCommandEnv(t *testing.T, name string, env []string, prog string, args ...string) *proc {
	t.Helper()
	t.Logf("$ %s %s", filepath.Base(prog), strings.Join(args, " "))
	cmd := exec.Command(prog, args...)
	cmd.Env = append(os.Environ(), env...)
	// Its own process group lets cleanup reach orphaned btrfs children after
	// the snapjet process itself was SIGKILLed. Pdeathsig ends it should the
	// test binary die without running its cleanups (a -timeout panic).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 10 * time.Second
	p := &proc{
		t:      t,
		name:   name,
		cmd:    cmd,
		stdout: newLogTee(t, name+"| "),
		stderr: newLogTee(t, name+"! "),
		done:   make(chan struct{}),
	}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.shutdown)
	return p
}

// runSnapjet runs one snapjet command to its end and returns its result.
func runSnapjet(t *testing.T, timeout time.Duration, name string, args ...string) result {
	t.Helper()
	p := startSnapjet(t, name, args...)
	return p.wait(timeout)
}

// wait waits for the process to exit; it fails the test after timeout.
func (p *proc) wait(timeout time.Duration) result {
	p.t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		if !p.exited() {
			p.t.Fatalf("%s did not finish within %v", p.name, timeout)
		}
	}
	p.stdout.flush()
	p.stderr.flush()
	state := p.cmd.ProcessState
	if state == nil {
		p.t.Fatalf("%s: %v", p.name, p.err)
	}
	if p.err != nil && !errors.Is(p.err, exec.ErrWaitDelay) {
		var exit *exec.ExitError
		if !errors.As(p.err, &exit) {
			p.t.Fatalf("%s: %v", p.name, p.err)
		}
	}
	code := state.ExitCode()
	p.t.Logf("%s exited: %v", p.name, state)
	return result{code: code, stdout: p.stdout.String(), stderr: p.stderr.String()}
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL to the snapjet process only, as `kill -9 PID` would,
// and waits for it to die. Its btrfs children are left to notice on their
// own, exactly as after a real crash.
func (p *proc) kill() {
	p.t.Helper()
	p.signal(syscall.SIGKILL)
	p.wait(30 * time.Second)
}

// signal sends sig to the snapjet process.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.t.Logf("sending %v to %s (pid %d)", sig, p.name, p.cmd.Process.Pid)
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		p.t.Fatalf("signal %s: %v", p.name, err)
	}
}

// shutdown kills the whole process group and waits for the output to drain.
func (p *proc) shutdown() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
	p.stdout.flush()
	p.stderr.flush()
}

// freeAddr returns a 127.0.0.1 address with a port nobody listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitUntil polls cond every 50ms until it holds. It fails the test when
// timeout passes or when p (if not nil) exits first, since then the moment
// the scenario needs never came.
func waitUntil(t *testing.T, p *proc, timeout time.Duration, what string, cond func(ctx context.Context) bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	for {
		if cond(ctx) {
			return
		}
		if p != nil && p.exited() {
			res := p.wait(0)
			t.Fatalf("waiting for %s: %s exited first (code %d)", what, p.name, res.code)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: not reached within %v", what, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logTee copies a process's output into the test log line by line and keeps
// it for assertions. A chatty process is cut short in the log after
// maxLogLines lines; the tail is still shown when the process ends.
type logTee struct {
	t       *testing.T
	prefix  string
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	lines   int
	tail    []string
	omitted int
}

const (
	maxLogLines  = 300
	tailLogLines = 40
	maxKeptBytes = 4 << 20
)

func newLogTee(t *testing.T, prefix string) *logTee {
	return &logTee{t: t, prefix: prefix}
}

func (w *logTee) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.all.Len() < maxKeptBytes {
		w.all.Write(b)
	}
	w.partial = append(w.partial, b...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.line(string(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	return len(b), nil
}

func (w *logTee) line(s string) {
	w.lines++
	if w.lines <= maxLogLines {
		fmt.Fprintf(w.t.Output(), "%s%s\n", w.prefix, s)
		return
	}
	w.tail = append(w.tail, s)
	if len(w.tail) > tailLogLines {
		w.tail = w.tail[1:]
		w.omitted++
	}
}

// flush writes a pending partial line and the kept tail of a long output.
func (w *logTee) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.line(string(w.partial))
		w.partial = nil
	}
	if w.omitted > 0 {
		fmt.Fprintf(w.t.Output(), "%s[%d lines omitted]\n", w.prefix, w.omitted)
		w.omitted = 0
	}
	for _, s := range w.tail {
		fmt.Fprintf(w.t.Output(), "%s%s\n", w.prefix, s)
	}
	w.tail = nil
}

func (w *logTee) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}
