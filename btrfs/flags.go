package btrfs

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	iocSubvolSetFlags = 0x4008941A // _IOW(0x94, 26, __u64)
	subvolRDONLY      = 1 << 1     // BTRFS_SUBVOL_RDONLY
)

// SetReadOnlyFlag flips the read-only flag with BTRFS_IOC_SUBVOL_SETFLAGS.
// Unlike `btrfs property set`, it keeps the received UUID, which is what a
// commit needs: the kernel refuses to move a read-only subvolume to another
// directory (its ".." would change), so a commit clears the flag, renames
// and sets it again without touching the contents.
func SetReadOnlyFlag(path string, ro bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("set read-only %v on %s: %w", ro, path, err)
	}
	defer f.Close()
	var flags uint64
	if ro {
		flags = subvolRDONLY
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), iocSubvolSetFlags, uintptr(unsafe.Pointer(&flags))); errno != 0 {
		return fmt.Errorf("set read-only %v on %s: %w", ro, path, errno)
	}
	return nil
}
