package receiver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/native"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/streams"
)

// Applier kinds, chosen with --receiver.
const (
	Native      = "native"      // snapjet's own receive: resumes after a crash
	BtrfsProgs  = "btrfs-progs" // the external `btrfs receive`: replays after a crash
	checkpoints = "checkpoint.json"
)

// applier takes the verified send stream of one attempt into staging.
// Write gets the chunks in order; Finish is called once after the last one
// and returns the received subvolume's path; Abort releases everything
// without cleaning staging (discard does that). Not safe for concurrent use.
type applier interface {
	Write(p []byte) error
	// Checkpoint returns what a restart needs to continue after everything
	// written so far (nil when the applier cannot resume) and durable,
	// which makes it so. durable may run while Write goes on, so the job
	// applies on while the target syncs; the state is a valid checkpoint
	// only once durable returned nil.
	Checkpoint() (state []byte, durable func() error, err error)
	Finish() (string, error)
	Abort()
}

// progsApplier pipes the stream into `btrfs receive`.
type progsApplier struct {
	in      io.WriteCloser
	proc    *btrfs.Process
	cancel  context.CancelFunc
	staging string
	dir     string // the target, for error messages
}

func startProgs(ctx context.Context, staging, dir string) (*progsApplier, error) {
	ctx, cancel := context.WithCancel(ctx)
	in, proc, err := btrfs.StartReceive(ctx, staging)
	if err != nil {
		cancel()
		return nil, driver.Permanent(err)
	}
	return &progsApplier{in: in, proc: proc, cancel: cancel, staging: staging, dir: dir}, nil
}

func (a *progsApplier) Write(p []byte) error {
	if _, err := a.in.Write(p); err != nil {
		// The process died: its stderr says why, the broken pipe does not.
		a.in.Close()
		if perr := a.proc.Wait(); perr != nil {
			err = perr
		}
		return classifyReceive(a.dir, err)
	}
	return nil
}

func (a *progsApplier) Checkpoint() ([]byte, func() error, error) {
	return nil, func() error { return nil }, nil
}

func (a *progsApplier) Finish() (string, error) {
	a.in.Close()
	if err := a.proc.Wait(); err != nil {
		return "", classifyReceive(a.dir, err)
	}
	return onlySubvolume(a.staging)
}

func (a *progsApplier) Abort() {
	a.in.Close()
	a.cancel()
	_ = a.proc.Wait()
}

// nativeApplier applies the stream with btrfs/native.
type nativeApplier struct {
	r   *native.Receiver
	dir string
}

func nativeOptions(dir string) native.Options {
	// Parents and clone sources are the target's committed snapshots.
	return native.Options{SearchDirs: []string{dir}}
}

func startNative(ctx context.Context, staging, dir string) (*nativeApplier, error) {
	r, err := native.New(ctx, staging, nativeOptions(dir))
	if err != nil {
		return nil, classifyReceive(dir, err)
	}
	return &nativeApplier{r: r, dir: dir}, nil
}

func resumeNative(ctx context.Context, staging, dir string, state []byte) (*nativeApplier, error) {
	cp, err := native.UnmarshalCheckpoint(state)
	if err != nil {
		return nil, err
	}
	r, err := native.Resume(ctx, staging, cp, nativeOptions(dir))
	if err != nil {
		return nil, err
	}
	return &nativeApplier{r: r, dir: dir}, nil
}

func (a *nativeApplier) Write(p []byte) error {
	_, err := a.r.Write(p)
	return classifyReceive(a.dir, err)
}

func (a *nativeApplier) Checkpoint() ([]byte, func() error, error) {
	cp, err := a.r.Mark()
	if err != nil {
		return nil, nil, classifyReceive(a.dir, err)
	}
	state, err := cp.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return state, func() error {
		if err := a.r.Sync(); err != nil {
			return classifyReceive(a.dir, err)
		}
		return nil
	}, nil
}

func (a *nativeApplier) Finish() (string, error) {
	res, err := a.r.Finish()
	if err != nil {
		return "", classifyReceive(a.dir, err)
	}
	return res.Path, nil
}

func (a *nativeApplier) Abort() { _ = a.r.Abort() }

// unsupported reports whether the native applier cannot take this stream,
// so that btrfs-progs should.
func unsupported(err error) bool { return errors.Is(err, sendstream.ErrUnsupported) }

func classifyReceive(dir string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, btrfs.ErrNoSpace), errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return driver.Permanent(fmt.Errorf("target %s is out of space: free space there or choose a larger target (%w)", dir, err))
	case errors.Is(err, btrfs.ErrParentMissing):
		return fmt.Errorf("target %s lost the incremental parent (%w)", dir, err)
	}
	return err
}

// onlySubvolume is the one subvolume a receive left in staging.
func onlySubvolume(staging string) (string, error) {
	subs, err := btrfs.List(staging)
	if err != nil {
		return "", err
	}
	if len(subs) != 1 {
		return "", fmt.Errorf("receive left %d subvolumes in %s, expected 1", len(subs), staging)
	}
	return subs[0].Path, nil
}

// checkpoint is what a native receive persists before it acks: where the
// stream continues and the digest of everything before.
type checkpoint struct {
	Attempt     int             `json:"attempt"`
	Next        int64           `json:"next_chunk"`
	Bytes       int64           `json:"bytes"`
	Redelivered int64           `json:"redelivered"`
	Digest      []byte          `json:"digest_state"`
	Scheme      string          `json:"digest_scheme"`
	Applier     json.RawMessage `json:"applier"`
}

// saveCheckpoint writes the checkpoint durably (temp file, fsync, rename,
// fsync of the directory), so a crash leaves the old one or the new one.
func saveCheckpoint(staging string, cp checkpoint, digest []byte) error {
	cp.Digest, cp.Scheme = digest, streams.DigestPrefix
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	path := filepath.Join(staging, checkpoints)
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	_, werr := f.Write(b)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	d, err := os.Open(staging)
	if err != nil {
		return fmt.Errorf("save checkpoint: %w", err)
	}
	defer d.Close()
	return d.Sync()
}

// loadCheckpoint reads the checkpoint of staging and the digest it carries.
// A checkpoint whose digest hashed something else (one written by an
// earlier snapjet) cannot be continued: its receive starts over.
func loadCheckpoint(staging string) (checkpoint, *streams.Digest, error) {
	var cp checkpoint
	b, err := os.ReadFile(filepath.Join(staging, checkpoints))
	if err != nil {
		return cp, nil, err
	}
	if err := json.Unmarshal(b, &cp); err != nil {
		return cp, nil, fmt.Errorf("read checkpoint: %w", err)
	}
	if cp.Scheme != streams.DigestPrefix {
		return cp, nil, fmt.Errorf("the checkpoint's digest is of another scheme (%q), written by an earlier snapjet", cp.Scheme)
	}
	d, err := streams.UnmarshalDigest(cp.Digest)
	if err != nil {
		return cp, nil, fmt.Errorf("read checkpoint: %w", err)
	}
	return cp, d, nil
}
