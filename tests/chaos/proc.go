package chaos

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errHung is returned by a bounded wait whose bound passed.
var errHung = errors.New("hung")

// proc is one snapjet subprocess of a trial. Its output goes to a log file
// in the trial directory (kept when the trial fails) and the last lines are
// kept in memory, so a hang or a failure can be reported with them.
type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	log  *os.File
	tail *tailBuffer
	done chan struct{}
	err  error // cmd.Wait's result, valid once done is closed
}

// startProc starts bin with args in its own process group. The group lets
// cleanup reach btrfs children a SIGKILLed snapjet leaves behind; Pdeathsig
// ends the process should the runner itself die without cleaning up.
func startProc(logDir, name, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "=== %s $ snapjet %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(args, " "))
	p := &proc{name: name, args: args, log: f, tail: &tailBuffer{max: 30}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = os.Environ()
	out := io.MultiWriter(f, p.tail)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Output pipes of an orphaned child must not keep Wait from returning.
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		fmt.Fprintf(f, "=== %s exited: %v\n", time.Now().UTC().Format(time.RFC3339Nano), p.cmd.ProcessState)
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits at most bound for the process to exit and returns its exit
// code (-1 when a signal ended it); errHung when the bound passed, or
// ctx's error when the run is being interrupted.
func (p *proc) wait(ctx context.Context, bound time.Duration) (int, error) {
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-timer.C:
		return 0, fmt.Errorf("%s (pid %d) did not exit within %v: %w", p.name, p.pid(), bound, errHung)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// signal sends sig to the snapjet process only, as `kill` would.
func (p *proc) signal(sig syscall.Signal) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

// destroy kills the whole process group and waits (bounded) for the end.
func (p *proc) destroy() error {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	// Not the run's context: cleanup must finish when it was cancelled.
	_, err := p.wait(context.Background(), 15*time.Second)
	p.log.Close()
	return err
}

// lastLines returns the last lines the process wrote, indented for a report.
func (p *proc) lastLines() string {
	return p.tail.String()
}

// tailBuffer keeps the last max lines written to it.
type tailBuffer struct {
	mu      sync.Mutex
	max     int
	lines   []string
	partial []byte
}

func (b *tailBuffer) Write(data []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.partial = append(b.partial, data...)
	for {
		i := bytes.IndexByte(b.partial, '\n')
		if i < 0 {
			break
		}
		b.lines = append(b.lines, string(b.partial[:i]))
		b.partial = b.partial[i+1:]
		if len(b.lines) > b.max {
			b.lines = b.lines[1:]
		}
	}
	return len(data), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := append([]string(nil), b.lines...)
	if len(b.partial) > 0 {
		lines = append(lines, string(b.partial))
	}
	return "    | " + strings.Join(lines, "\n    | ")
}
