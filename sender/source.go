package sender

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

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
type BtrfsSource struct {
	// CompressedData sends compressed extents as they are on the source
	// (send protocol 2) instead of decompressed: see CompressedData.
	CompressedData bool
}

var _ Source = BtrfsSource{}

// Open implements Source.
func (s BtrfsSource) Open(ctx context.Context, snapshot, parent string) (io.ReadCloser, error) {
	out, proc, err := btrfs.Send(ctx, snapshot, btrfs.SendOptions{Parent: parent, CompressedData: s.CompressedData})
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

// sendsCompressed reports whether src sends compressed extents as they
// are, which makes the stream about as large as the data on disk.
func sendsCompressed(src Source) bool {
	b, ok := src.(BtrfsSource)
	return ok && b.CompressedData
}

// NewBtrfsSource is the BtrfsSource of a compressed-data mode on this
// machine; it logs what it chose and why.
func NewBtrfsSource(mode string, log *slog.Logger) (BtrfsSource, error) {
	on, err := CompressedData(mode, btrfs.CompressedSendSupported)
	if err != nil {
		return BtrfsSource{}, err
	}
	if on {
		log.Info("sending compressed extents as they are (btrfs send --compressed-data, protocol 2)")
	} else if mode != CompressedNever {
		log.Info("sending compressed extents decompressed (protocol 1)", "reason", btrfs.CompressedSendSupported())
	}
	return BtrfsSource{CompressedData: on}, nil
}

// Compressed-data modes (--compressed-data, a job's compressed_data).
const (
	CompressedAuto   = "auto"   // when this machine can: the default
	CompressedAlways = "always" // or refuse to send
	CompressedNever  = "never"  // for targets whose btrfs-progs cannot take protocol 2
)

// CompressedData resolves a compressed-data mode ("" is auto) against
// supported, the machine's answer (btrfs.CompressedSendSupported).
//
// With compressed data, extents that btrfs compressed on the source
// (compress=zstd and the like) travel as they are: the kernel does not
// decompress them, snapjet's chunks of them barely compress, and the
// target writes them compressed (BTRFS_IOC_ENCODED_WRITE, decompressed
// only where it cannot). The stream is then of protocol 2, which the
// native receive and btrfs-progs 5.19 and later apply.
func CompressedData(mode string, supported func() error) (bool, error) {
	switch mode {
	case CompressedNever:
		return false, nil
	case CompressedAuto, "":
		return supported() == nil, nil
	case CompressedAlways:
		if err := supported(); err != nil {
			return false, driver.Permanent(fmt.Errorf("compressed data was asked for (always), but %w; send without it (auto or never)", err))
		}
		return true, nil
	}
	return false, fmt.Errorf("%q is not a compressed-data mode: write auto, always or never", mode)
}
