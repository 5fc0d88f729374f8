package native

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"golang.org/x/sys/unix"
)

// ErrNotResumable means the partial subvolume cannot be continued (the
// machine rebooted after namespace changes that the checkpoint does not
// cover, or the partial subvolume is not the one the checkpoint names).
// The caller deletes the partial subvolume and starts over.
var ErrNotResumable = errors.New("partial receive cannot be resumed")

// Options tune a Receiver. The zero value is usable.
type Options struct {
	// Sync makes everything written under dir durable. Checkpoint and
	// Finish call it first. Default btrfs.Sync (syncfs).
	Sync func(dir string) error
	// Logger gets one line per subvolume and per resume. Default slog.Default().
	Logger *slog.Logger
	// SearchDirs are the directories whose subvolumes (direct children)
	// are candidates for a snapshot parent or an external clone source.
	// Default: the receive directory itself.
	SearchDirs []string
	// MaxCommandLen caps one command (0: sendstream.DefaultMaxCommandLen).
	MaxCommandLen int
	// ForceDecompress applies encoded writes by decompressing them even
	// where the kernel would take them as they are (tests, and targets
	// without ENCODED_WRITE).
	ForceDecompress bool
}

// Subvolume is one subvolume a stream creates.
type Subvolume struct {
	Name       string     // name inside the receive directory
	StreamUUID btrfs.UUID // the sender's UUID: becomes the received UUID
	CTransID   uint64     // the sender's ctransid: becomes stransid
	UUID       btrfs.UUID // local UUID of the subvolume
	ParentUUID btrfs.UUID // local UUID of the snapshot parent, zero for a full stream
	Ended      bool       // END seen; finished (received UUID, read-only) at the next subvolume or in Finish
	// Locked holds immutable/append-only flags by local inode number,
	// applied just before the subvolume becomes read-only.
	Locked map[uint64]uint32 `json:",omitempty"`
}

// Checkpoint is everything needed to continue a receive after the process
// died. It is a plain struct; Marshal and UnmarshalCheckpoint give a
// stable JSON form.
type Checkpoint struct {
	// Offset is the stream offset of the first command not known to be
	// applied; everything before it is applied and was synced.
	Offset int64 `json:"offset"`
	// Index counts the commands before Offset.
	Index int64 `json:"index"`
	// Tail holds the stream bytes after Offset that were fed but form no
	// complete command yet; at most one command long.
	Tail []byte `json:"tail,omitempty"`
	// Version is the protocol version of the stream being applied, 0 when
	// a stream header comes next.
	Version uint32 `json:"version"`
	// Subvolumes are the subvolumes created so far, the current one last.
	Subvolumes []Subvolume `json:"subvolumes,omitempty"`
}

// Fed is the stream offset the next Write after Resume must start at.
func (c Checkpoint) Fed() int64 { return c.Offset + int64(len(c.Tail)) }

// Marshal encodes the checkpoint as JSON.
func (c Checkpoint) Marshal() ([]byte, error) { return json.Marshal(c) }

// UnmarshalCheckpoint decodes what Marshal produced.
func UnmarshalCheckpoint(b []byte) (Checkpoint, error) {
	var c Checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("decode receive checkpoint: %w", err)
	}
	return c, nil
}

// Result describes a finished receive.
type Result struct {
	Path         string     // the last (usually only) received subvolume
	UUID         btrfs.UUID // its local UUID
	ReceivedUUID btrfs.UUID // the sender's UUID it now carries
	Subvolumes   []Subvolume
}

// Stats count the work a Receiver did, for tests and metrics.
type Stats struct {
	Commands  int64 // commands applied
	Skipped   int64 // commands skipped on resume because the journal shows them applied
	DataBytes int64 // file data bytes written (WRITE, ENCODED_WRITE after decoding, CLONE lengths excluded)
	Syncs     int64
}

// Receiver applies one send stream (or several concatenated ones) into a
// directory. It is not safe for concurrent use.
type Receiver struct {
	ctx   context.Context
	dir   string
	dirfd int
	fsid  [16]byte
	opt   Options
	log   *slog.Logger

	dec    sendstream.Decoder
	buf    []byte // fed bytes not yet applied, starting at offset
	offset int64
	index  int64
	subs   []Subvolume

	cur        *subvol                    // open current subvolume, nil before SUBVOL/SNAPSHOT
	lenient    bool                       // the next namespace command may find itself already done
	resumed    bool                       // replayed data commands may find themselves done
	skipTo     int64                      // commands before this offset are already applied (journal)
	skipStream bool                       // the current subvolume was finished: skip to its END
	found      map[btrfs.UUID]*btrfs.Info // snapshot parents and clone sources by stream UUID
	stats      Stats
	err        error // sticky: a Receiver that failed stays failed
}

// New starts a fresh receive into dir, which must be a directory on btrfs.
// The stream's subvolume must not exist there yet.
func New(ctx context.Context, dir string, opt Options) (*Receiver, error) {
	return open(ctx, dir, opt)
}

// Resume continues a receive that stopped after cp was taken. Feed it the
// stream from cp.Fed() on. Commands between cp and where the old process
// stopped are skipped when the receive journal proves them applied and
// replayed otherwise; every replay is safe (see the package doc).
func Resume(ctx context.Context, dir string, cp Checkpoint, opt Options) (*Receiver, error) {
	r, err := open(ctx, dir, opt)
	if err != nil {
		return nil, err
	}
	if err := r.dec.SetVersion(cp.Version); err != nil {
		r.Abort()
		return nil, fmt.Errorf("resume receive in %s: %w", dir, err)
	}
	r.offset, r.index = cp.Offset, cp.Index
	r.buf = append(r.buf, cp.Tail...)
	r.subs = append(r.subs, cp.Subvolumes...)
	r.lenient, r.resumed = true, true
	if n := len(r.subs); n > 0 && !r.subs[n-1].Ended {
		if err := r.adopt(n - 1); err != nil {
			r.Abort()
			return nil, fmt.Errorf("resume receive in %s: %w", dir, err)
		}
	}
	r.log.Info("resuming btrfs receive", "dir", dir, "offset", r.offset, "index", r.index, "skip_to", r.skipTo, "subvolume_finished", r.skipStream)
	// The tail may already complete commands the old process applied.
	if _, err := r.Write(nil); err != nil {
		r.Abort()
		return nil, err
	}
	return r, nil
}

func open(ctx context.Context, dir string, opt Options) (*Receiver, error) {
	if opt.Sync == nil {
		opt.Sync = btrfs.Sync
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if len(opt.SearchDirs) == 0 {
		opt.SearchDirs = []string{dir}
	}
	if err := btrfs.IsBtrfs(dir); err != nil {
		return nil, fmt.Errorf("receive into %s: %w", dir, err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("receive into %s: %w", dir, err)
	}
	id, err := fsid(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("receive into %s: %w", dir, err)
	}
	r := &Receiver{ctx: ctx, dir: dir, dirfd: fd, fsid: id, opt: opt, log: opt.Logger}
	r.dec.MaxCommandLen = opt.MaxCommandLen
	return r, nil
}

// Write feeds raw stream bytes. It applies every command that is complete
// and keeps the incomplete tail for the next call. After an error the
// Receiver is unusable: Abort it and resume from the last checkpoint, or
// discard the partial subvolume.
func (r *Receiver) Write(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	// Decode straight from p unless a partial command is pending, which
	// saves copying every byte once.
	data := p
	if len(r.buf) > 0 {
		r.buf = append(r.buf, p...)
		data = r.buf
	}
	pos := 0
	for {
		if err := r.ctx.Err(); err != nil {
			r.err = fmt.Errorf("btrfs receive at stream offset %d: %w", r.offset, err)
			break
		}
		cmd, n, err := r.dec.Decode(data[pos:])
		if err != nil {
			r.err = fmt.Errorf("btrfs receive at stream offset %d: %w", r.offset, err)
			break
		}
		if n == 0 {
			break
		}
		if cmd != nil {
			if err := r.apply(cmd); err != nil {
				r.err = fmt.Errorf("apply command %d (%s) at stream offset %d: %w", r.index, cmd.Type, r.offset, err)
				break
			}
			r.index++
		}
		pos += n
		r.offset += int64(n)
	}
	if len(r.buf) > 0 {
		r.buf = r.buf[:copy(r.buf, data[pos:])]
	} else {
		r.buf = append(r.buf, data[pos:]...)
	}
	if r.err != nil {
		return 0, r.err
	}
	return len(p), nil
}

// Checkpoint syncs the target filesystem through Options.Sync and then
// returns the state a restart needs. It never runs ahead of durable data:
// a sync failure returns an error and no checkpoint.
func (r *Receiver) Checkpoint() (Checkpoint, error) {
	cp, err := r.Mark()
	if err != nil {
		return Checkpoint{}, err
	}
	if err := r.Sync(); err != nil {
		return Checkpoint{}, err
	}
	return cp, nil
}

// Mark returns the state a restart needs to continue after everything fed
// so far, without waiting for it to be durable: it is a valid checkpoint
// only once a Sync that began after Mark returned nil. Mark and Sync split
// Checkpoint so that the caller can feed on while the filesystem syncs.
func (r *Receiver) Mark() (Checkpoint, error) {
	if r.err != nil {
		return Checkpoint{}, r.err
	}
	if r.cur != nil {
		r.cur.closeWriter()
	}
	r.stats.Syncs++
	return Checkpoint{
		Offset:     r.offset,
		Index:      r.index,
		Tail:       append([]byte(nil), r.buf...),
		Version:    r.dec.Version(),
		Subvolumes: append([]Subvolume(nil), r.subs...),
	}, nil
}

// Sync makes everything written so far durable (Options.Sync). Unlike the
// other methods it may run while another goroutine feeds the Receiver: it
// reads nothing that changes after New.
func (r *Receiver) Sync() error {
	if err := r.opt.Sync(r.dir); err != nil {
		return fmt.Errorf("sync %s before checkpoint: %w", r.dir, err)
	}
	return nil
}

// sync makes what Finish did so far durable.
func (r *Receiver) sync() error {
	if r.cur != nil {
		r.cur.closeWriter()
	}
	r.stats.Syncs++
	return r.Sync()
}

// Stats returns what the Receiver did so far.
func (r *Receiver) Stats() Stats { return r.stats }

// Finish completes the receive once the whole stream was fed: the last
// stream must have ended with END and nothing may be left over. Every
// received subvolume then carries the sender's UUID as its received UUID
// and is read-only, as after `btrfs receive`; the data is synced before
// that, so a read-only received subvolume is never a partial one.
func (r *Receiver) Finish() (Result, error) {
	if r.err != nil {
		return Result{}, r.err
	}
	switch {
	case len(r.buf) > 0:
		return Result{}, fmt.Errorf("finish receive: stream ends inside a command at offset %d (%d bytes left over)", r.offset, len(r.buf))
	case !r.dec.AtHeader() || len(r.subs) == 0:
		return Result{}, fmt.Errorf("finish receive: stream ended at offset %d before its END command", r.offset)
	}
	if err := r.sync(); err != nil {
		return Result{}, err
	}
	for i := range r.subs {
		if err := r.finishSubvolume(&r.subs[i]); err != nil {
			r.err = err
			return Result{}, err
		}
	}
	if err := r.sync(); err != nil {
		return Result{}, err
	}
	r.closeAll()
	r.err = errors.New("btrfs receive already finished")
	last := r.subs[len(r.subs)-1]
	return Result{
		Path:         filepath.Join(r.dir, last.Name),
		UUID:         last.UUID,
		ReceivedUUID: last.StreamUUID,
		Subvolumes:   append([]Subvolume(nil), r.subs...),
	}, nil
}

// Abort stops without finishing. The partial subvolume stays as it is, for
// Resume or for the caller to delete.
func (r *Receiver) Abort() error {
	r.closeAll()
	if r.err == nil {
		r.err = errors.New("btrfs receive aborted")
	}
	return nil
}

func (r *Receiver) closeAll() {
	if r.cur != nil {
		r.cur.close()
		r.cur = nil
	}
	if r.dirfd >= 0 {
		unix.Close(r.dirfd)
		r.dirfd = -1
	}
}
