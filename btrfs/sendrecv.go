package btrfs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// SendOptions select what `btrfs send` emits.
type SendOptions struct {
	Parent         string // parent snapshot path for an incremental send; "" for a full send
	Proto          int    // send protocol version; 0 keeps btrfs-progs' default (1)
	CompressedData bool   // pass compressed extents through (implies proto 2)
}

// Process is a running btrfs-progs send or receive. Wait must be called
// exactly once; it returns the typed error of the command.
type Process struct {
	args   []string
	cmd    *exec.Cmd
	stderr *lockedBuffer
	once   sync.Once
	err    error
	pipe   *os.File // our end of the stdin/stdout pipe, closed by Wait
}

// Wait waits for the process to exit and returns its classified error.
func (p *Process) Wait() error {
	p.once.Do(func() {
		err := p.cmd.Wait()
		_ = p.pipe.Close()
		if err != nil {
			p.err = cmdError(p.args, p.stderr.String(), err)
		}
	})
	return p.err
}

// Send starts `btrfs send` for the read-only snapshot snap. The caller reads
// the stream from the returned reader until EOF, then calls Wait. Cancelling
// ctx kills the process.
func Send(ctx context.Context, snap string, opt SendOptions) (io.ReadCloser, *Process, error) {
	args := []string{"send", "-q"}
	if opt.Parent != "" {
		args = append(args, "-p", opt.Parent)
	}
	if opt.Proto != 0 {
		args = append(args, "--proto", strconv.Itoa(opt.Proto))
	}
	if opt.CompressedData {
		args = append(args, "--compressed-data")
	}
	args = append(args, snap)
	p := newProcess(ctx, args)
	out, w, err := bigPipe()
	if err != nil {
		return nil, nil, fmt.Errorf("btrfs send %s: %w", snap, err)
	}
	p.cmd.Stdout, p.pipe = w, out
	err = p.cmd.Start()
	w.Close() // the child holds its copy; EOF comes when it exits
	if err != nil {
		out.Close()
		return nil, nil, cmdError(args, "", err)
	}
	return out, p, nil
}

// StartReceive starts `btrfs receive` into dir. The caller writes one send
// stream to the returned writer, closes it, and calls Wait; the received
// subvolume then sits in dir under the name the stream carries.
func StartReceive(ctx context.Context, dir string) (io.WriteCloser, *Process, error) {
	args := []string{"receive", dir}
	p := newProcess(ctx, args)
	r, in, err := bigPipe()
	if err != nil {
		return nil, nil, fmt.Errorf("btrfs receive %s: %w", dir, err)
	}
	p.cmd.Stdin, p.pipe = r, in
	err = p.cmd.Start()
	r.Close()
	if err != nil {
		in.Close()
		return nil, nil, cmdError(args, "", err)
	}
	return in, p, nil
}

// Receive applies the whole stream r into dir with `btrfs receive`.
func Receive(ctx context.Context, dir string, r io.Reader) error {
	in, p, err := StartReceive(ctx, dir)
	if err != nil {
		return err
	}
	_, copyErr := io.Copy(in, r)
	in.Close()
	if err := p.Wait(); err != nil {
		return err
	}
	if copyErr != nil {
		return fmt.Errorf("btrfs receive %s: feed stream: %w", dir, copyErr)
	}
	return nil
}

// pipeSize is what the send and receive pipes are grown to: the default
// 64 KiB costs a context switch every 64 KiB of stream.
const pipeSize = 1 << 20

// bigPipe is an os.Pipe grown to pipeSize where the system allows it.
func bigPipe() (r, w *os.File, err error) {
	r, w, err = os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	_, _ = unix.FcntlInt(w.Fd(), unix.F_SETPIPE_SZ, pipeSize) // best effort: pipe-max-size may be lower
	return r, w, nil
}

func newProcess(ctx context.Context, args []string) *Process {
	cmd := exec.CommandContext(ctx, Binary, args...)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	return &Process{args: args, cmd: cmd, stderr: stderr}
}

// lockedBuffer keeps the last stderr output of a process; it is written by
// the exec goroutine and read by Wait.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 64<<10 { // keep memory bounded on a chatty process
		b.buf.Reset()
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// sendVersionFile is where the kernel says which send protocol it speaks
// (Linux 5.19 and later).
const sendVersionFile = "/sys/fs/btrfs/features/send_stream_version"

// CompressedSendSupported says whether this machine can send compressed
// extents as they are (`btrfs send --compressed-data`): the kernel must
// speak send protocol 2 and btrfs-progs must have the option. The error
// names what is missing. The answer is found once per process.
var CompressedSendSupported = sync.OnceValue(func() error {
	b, err := os.ReadFile(sendVersionFile)
	if err != nil {
		return fmt.Errorf("the kernel does not say it speaks send protocol 2 (%w); Linux 6.0 or later does", err)
	}
	if err := sendVersionOK(string(b)); err != nil {
		return err
	}
	out, _ := exec.Command(Binary, "send", "--help").CombinedOutput()
	if !bytes.Contains(out, []byte("--compressed-data")) {
		return fmt.Errorf("%s send has no --compressed-data; btrfs-progs 5.19 or later has it", Binary)
	}
	return nil
})

// sendVersionOK checks the content of sendVersionFile.
func sendVersionOK(content string) error {
	v, err := strconv.Atoi(strings.TrimSpace(content))
	switch {
	case err != nil:
		return fmt.Errorf("the kernel's send protocol version %q is not a number", strings.TrimSpace(content))
	case v < 2:
		return fmt.Errorf("the kernel speaks send protocol %d, and compressed data needs 2; Linux 6.0 or later does", v)
	}
	return nil
}
