package sender

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/driver"
)

// Source produces the send stream of a snapshot. The contract, which
// source_test.go checks against the btrfs adapter (with a stand-in for the
// btrfs binary) and the in-memory stream of the sender's tests:
//   - Open starts the stream of snapshot, incremental from parent unless
//     parent is "". An error no retry can cure is marked driver.Permanent.
//   - The caller reads the stream to its end (io.EOF), then calls Close
//     exactly once. Close waits for the producer and returns its error:
//     after a complete read it is nil only if the producer succeeded; one
//     that failed after writing all of the stream still failed.
//   - ctx is the producer's life: cancelling it kills the producer. So ctx
//     must not be cancelled before Close when the read succeeded: a
//     producer killed after it exited 0 reports "context canceled" instead
//     of its success (a bug once). To abandon a stream before its end,
//     cancel ctx, then Close.
type Source interface {
	Open(ctx context.Context, snapshot, parent string) (io.ReadCloser, error)
}

// BtrfsSource runs `btrfs send`: the production Source.
type BtrfsSource struct{}

var _ Source = BtrfsSource{}

// Open implements Source.
func (BtrfsSource) Open(ctx context.Context, snapshot, parent string) (io.ReadCloser, error) {
	out, proc, err := btrfs.Send(ctx, snapshot, btrfs.SendOptions{Parent: parent})
	if err != nil {
		return nil, driver.Permanent(fmt.Errorf("start btrfs send of %s: %w", snapshot, err))
	}
	return &btrfsStream{Reader: out, proc: proc, snapshot: snapshot}, nil
}

// btrfsStream is the stdout of a running btrfs send.
type btrfsStream struct {
	io.Reader
	proc     *btrfs.Process
	snapshot string
}

// Close waits for btrfs send, which closes the pipe, and classifies its
// error: a snapshot that is gone or no subvolume stays so.
func (s *btrfsStream) Close() error {
	err := s.proc.Wait()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, btrfs.ErrNotFound) || errors.Is(err, btrfs.ErrNotSubvolume):
		return driver.Permanent(fmt.Errorf("btrfs send of %s: %w", s.snapshot, err))
	}
	return fmt.Errorf("btrfs send of %s: %w", s.snapshot, err)
}
