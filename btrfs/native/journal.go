package native

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// The journal is an xattr on the root of the subvolume being received. It
// holds the stream offset just past the last namespace command applied
// and the boot it was applied in. Being metadata of the same filesystem,
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
	v := bootID() + " " + strconv.FormatInt(off, 10)
	if err := unix.Fsetxattr(r.cur.root, journalXattr, []byte(v), 0); err != nil {
		return fmt.Errorf("write receive journal: %w", err)
	}
	return nil
}

// journal records the command being applied (a SUBVOL or SNAPSHOT) as
// done; the offset of the command itself is enough since both replay
// safely.
func (r *Receiver) journal() error { return r.journalAt(r.offset) }

// loadJournal reads the journal of a subvolume adopted on resume. Commands
// before its offset were applied by the process that wrote it; they are
// skipped. After a reboot the unsynced data of those commands may be lost
// while their namespace changes survived, which cannot be replayed safely.
func (r *Receiver) loadJournal() error {
	buf := make([]byte, 128)
	n, err := unix.Fgetxattr(r.cur.root, journalXattr, buf)
	if errors.Is(err, unix.ENODATA) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read receive journal: %w", err)
	}
	boot, offs, ok := strings.Cut(string(buf[:n]), " ")
	off, perr := strconv.ParseInt(offs, 10, 64)
	if !ok || perr != nil {
		return fmt.Errorf("%w: unreadable receive journal %q", ErrNotResumable, buf[:n])
	}
	if off <= r.offset {
		return nil
	}
	if boot != bootID() {
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
