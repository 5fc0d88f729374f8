package native

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl numbers from <linux/btrfs.h> (x86-64 and arm64 share the encoding).
const (
	iocSubvolCreate      = 0x5000940e // _IOW(0x94, 14, struct btrfs_ioctl_vol_args)
	iocSnapCreateV2      = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
	iocSubvolGetflags    = 0x80089419 // _IOR(0x94, 25, __u64)
	iocSubvolSetflags    = 0x4008941a // _IOW(0x94, 26, __u64)
	iocFsInfo            = 0x8400941f // _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
	iocSetReceivedSubvol = 0xc0c89425 // _IOWR(0x94, 37, struct btrfs_ioctl_received_subvol_args)
	iocEncodedWrite      = 0x40809440 // _IOW(0x94, 64, struct btrfs_ioctl_encoded_io_args)

	subvolRDONLY = 1 << 1 // BTRFS_SUBVOL_RDONLY as SUBVOL_GETFLAGS reports it
)

type volArgs struct {
	Fd   int64
	Name [4088]byte
}

type volArgsV2 struct {
	Fd      int64
	Transid uint64
	Flags   uint64
	Unused  [4]uint64
	Name    [4040]byte
}

type ioctlTimespec struct {
	Sec  uint64
	Nsec uint32
	_    uint32
}

type receivedSubvolArgs struct {
	UUID     [16]byte
	Stransid uint64
	Rtransid uint64
	Stime    ioctlTimespec
	Rtime    ioctlTimespec
	Flags    uint64
	Reserved [16]uint64
}

type fsInfoArgs struct {
	MaxID      uint64
	NumDevices uint64
	FSID       [16]byte
	Rest       [1024 - 32]byte
}

type encodedIOArgs struct {
	Iov             uintptr
	Iovcnt          uint64
	Offset          int64
	Flags           uint64
	Len             uint64
	UnencodedLen    uint64
	UnencodedOffset uint64
	Compression     uint32
	Encryption      uint32
	Reserved        [64]byte
}

// Layout guards: a wrong size would make the kernel read or write past the
// struct.
var (
	_ [4096 - unsafe.Sizeof(volArgs{})]struct{}
	_ [unsafe.Sizeof(volArgs{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(volArgsV2{})]struct{}
	_ [unsafe.Sizeof(volArgsV2{}) - 4096]struct{}
	_ [200 - unsafe.Sizeof(receivedSubvolArgs{})]struct{}
	_ [unsafe.Sizeof(receivedSubvolArgs{}) - 200]struct{}
	_ [1024 - unsafe.Sizeof(fsInfoArgs{})]struct{}
	_ [128 - unsafe.Sizeof(encodedIOArgs{})]struct{}
	_ [unsafe.Sizeof(encodedIOArgs{}) - 128]struct{}
)

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		return nil
	}
}

// createSubvolume creates an empty subvolume name inside the directory dirfd.
func createSubvolume(dirfd int, name string) error {
	var a volArgs
	if len(name) >= len(a.Name) {
		return fmt.Errorf("subvolume name of %d bytes: %w", len(name), unix.ENAMETOOLONG)
	}
	copy(a.Name[:], name)
	return ioctl(dirfd, iocSubvolCreate, unsafe.Pointer(&a))
}

// createSnapshot creates a writable snapshot of the subvolume open at srcfd
// as name inside dirfd, which is what btrfs receive does for SNAPSHOT.
func createSnapshot(dirfd, srcfd int, name string) error {
	var a volArgsV2
	if len(name) >= len(a.Name) {
		return fmt.Errorf("snapshot name of %d bytes: %w", len(name), unix.ENAMETOOLONG)
	}
	a.Fd = int64(srcfd)
	copy(a.Name[:], name)
	return ioctl(dirfd, iocSnapCreateV2, unsafe.Pointer(&a))
}

// setReceived records the sender's UUID and ctransid on the subvolume open
// at fd (its root directory).
func setReceived(fd int, uuid [16]byte, stransid uint64) error {
	a := receivedSubvolArgs{UUID: uuid, Stransid: stransid}
	return ioctl(fd, iocSetReceivedSubvol, unsafe.Pointer(&a))
}

// setReadOnly sets BTRFS_SUBVOL_RDONLY on the subvolume open at fd.
func setReadOnly(fd int) error {
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("get subvolume flags: %w", err)
	}
	if flags&subvolRDONLY != 0 {
		return nil
	}
	flags |= subvolRDONLY
	if err := ioctl(fd, iocSubvolSetflags, unsafe.Pointer(&flags)); err != nil {
		return fmt.Errorf("set subvolume read-only: %w", err)
	}
	return nil
}

// fsid identifies the btrfs filesystem holding fd; clone sources and
// snapshot parents must share it with the target.
func fsid(fd int) ([16]byte, error) {
	var a fsInfoArgs
	if err := ioctl(fd, iocFsInfo, unsafe.Pointer(&a)); err != nil {
		return [16]byte{}, fmt.Errorf("btrfs fs info: %w", err)
	}
	return a.FSID, nil
}

// encodedWrite hands an already compressed extent to the kernel.
func encodedWrite(fd int, data []byte, a encodedIOArgs) error {
	if len(data) == 0 {
		return unix.EINVAL
	}
	iov := unix.Iovec{Base: &data[0]}
	iov.SetLen(len(data))
	a.Iov = uintptr(unsafe.Pointer(&iov))
	a.Iovcnt = 1
	err := ioctl(fd, iocEncodedWrite, unsafe.Pointer(&a))
	// The kernel reads iov and data through the uintptr above.
	runtime.KeepAlive(&iov)
	runtime.KeepAlive(data)
	return err
}
