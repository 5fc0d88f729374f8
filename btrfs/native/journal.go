package native

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/snapjet/snapjet/btrfs"
	"golang.org/x/sys/unix"
)

// The journal is an xattr on the root of the subvolume being received. It
// holds the boot it was written in, the stream offset just past the last
// namespace command applied, and the stream's UUID, which marks the
// subvolume as a partial receive of that stream. Being metadata of the same filesystem,
// it is never more durable than the change it records. The name sits in
// the trusted namespace, which ordinary users cannot read or set; Finish
// removes it before the subvolume becomes read-only.
const journalXattr = "trusted.snapjet.receive"

// bootID identifies the running boot; it cannot change while we run.
var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
})

// journalAt records that every command before off was applied.
func (r *Receiver) journalAt(off int64) error {
	return writeJournal(r.cur.root, off, r.subs[r.cur.idx].StreamUUID)
}

func writeJournal(rootfd int, off int64, stream btrfs.UUID) error {
	v := fmt.Sprintf("%s %d %s", bootID(), off, stream)
	if err := unix.Fsetxattr(rootfd, journalXattr, []byte(v), 0); err != nil {
		return fmt.Errorf("write receive journal: %w", err)
	}
	return nil
}

// loadJournal reads the journal of a subvolume adopted on resume. A
// subvolume without a journal of this stream is not a partial receive of
// it and is never taken over. Commands before the journal's offset were
// applied by the process that wrote it; they are skipped. After a reboot
// the unsynced data of those commands may be lost while their namespace
// changes survived, which cannot be replayed safely.
func (r *Receiver) loadJournal() error {
	buf := make([]byte, 256)
	n, err := unix.Fgetxattr(r.cur.root, journalXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("%w: subvolume %s has no receive journal, so it is no partial receive of this stream", ErrNotResumable, r.subs[r.cur.idx].Name)
	}
	if err != nil {
		return fmt.Errorf("read receive journal: %w", err)
	}
	f := strings.Fields(string(buf[:n]))
	var off int64
	var perr error
	if len(f) == 3 {
		off, perr = strconv.ParseInt(f[1], 10, 64)
	}
	if len(f) != 3 || perr != nil {
		return fmt.Errorf("%w: unreadable receive journal %q", ErrNotResumable, buf[:n])
	}
	if want := r.subs[r.cur.idx].StreamUUID.String(); f[2] != want {
		return fmt.Errorf("%w: the subvolume is a partial receive of stream %s, not %s", ErrNotResumable, f[2], want)
	}
	if off <= r.offset {
		return nil
	}
	if f[0] != bootID() {
		return fmt.Errorf("%w: the machine restarted after namespace changes at stream offset %d, past the checkpoint at %d", ErrNotResumable, off, r.offset)
	}
	r.skipTo = off
	return nil
}

// clearJournal removes the journal from a complete subvolume.
func clearJournal(rootfd int) error {
	err := unix.Fremovexattr(rootfd, journalXattr)
	if err != nil && !errors.Is(err, unix.ENODATA) {
		return fmt.Errorf("remove receive journal: %w", err)
	}
	return nil
}
