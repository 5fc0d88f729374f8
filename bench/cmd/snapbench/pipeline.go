package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/snapjet/snapjet/bench/proctree"
	"github.com/snapjet/snapjet/bench/wire"
)

// tail keeps the last bytes a process wrote to stderr, for error messages.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 4 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailSize:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// proc is a measured command with its stderr kept.
type proc struct {
	cmd    *exec.Cmd
	stderr *tail
}

func command(name string, args ...string) *proc {
	c := exec.Command(name, args...)
	t := &tail{}
	c.Stderr = t
	return &proc{cmd: c, stderr: t}
}

func (p *proc) String() string { return strings.Join(p.cmd.Args, " ") }

// wait reaps p in g and turns a failure into an error that carries stderr.
func (p *proc) wait(g *proctree.Group) error {
	if err := g.Wait(p.cmd); err != nil {
		return fmt.Errorf("%s: %w: %s", p, err, p.stderr)
	}
	return nil
}

// stop asks a long-running p (server, receiver) to exit with SIGTERM and
// reaps it, killing it if it takes longer than grace.
func (p *proc) stop(g *proctree.Group, grace time.Duration) {
	if p.cmd.Process == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.AfterFunc(grace, func() { _ = p.cmd.Process.Kill() })
	defer t.Stop()
	_ = g.Wait(p.cmd) // a server ended by SIGTERM reports it; that is no failure
}

// pipeline runs procs connected stdout to stdin, as a shell pipe would,
// without copying in between, except after procs[counted] when counted
// >= 0: there the bench relays the bytes itself and adds them to n.
func pipeline(g *proctree.Group, procs []*proc, counted int, n *atomic.Int64) error {
	var closeAfterStart []*os.File
	var relays sync.WaitGroup
	defer func() {
		for _, f := range closeAfterStart {
			f.Close()
		}
	}()
	for i := 0; i < len(procs)-1; i++ {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		procs[i].cmd.Stdout = w
		closeAfterStart = append(closeAfterStart, w)
		if i != counted {
			procs[i+1].cmd.Stdin = r
			closeAfterStart = append(closeAfterStart, r)
			continue
		}
		r2, w2, err := os.Pipe()
		if err != nil {
			r.Close()
			return err
		}
		procs[i+1].cmd.Stdin = r2
		closeAfterStart = append(closeAfterStart, r2)
		relays.Add(1)
		go func() {
			defer relays.Done()
			// Closing both ends passes EOF downstream and EPIPE upstream.
			_, _ = wire.Copy(w2, r, n)
			w2.Close()
			r.Close()
		}()
	}
	var started []*proc
	for _, p := range procs {
		if err := g.Start(p.cmd); err != nil {
			for _, s := range started {
				_ = s.cmd.Process.Kill()
				_ = g.Wait(s.cmd)
			}
			return err
		}
		started = append(started, p)
	}
	// The children hold their own copies of the pipe ends now; ours must go
	// or no reader ever sees EOF.
	for _, f := range closeAfterStart {
		f.Close()
	}
	closeAfterStart = nil
	var errs []error
	for _, p := range procs {
		if err := p.wait(g); err != nil {
			errs = append(errs, err)
		}
	}
	relays.Wait()
	return errors.Join(errs...)
}
