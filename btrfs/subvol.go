package btrfs

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UUID is a btrfs subvolume UUID.
type UUID [16]byte

// IsZero reports whether u is unset (btrfs shows it as "-").
func (u UUID) IsZero() bool { return u == UUID{} }

func (u UUID) String() string {
	if u.IsZero() {
		return ""
	}
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ParseUUID parses the canonical 36-character form; "" and "-" give the zero UUID.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if s == "" || s == "-" {
		return u, nil
	}
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("parse uuid %q: wrong form", s)
	}
	h := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:]
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("parse uuid %q: %w", s, err)
	}
	return u, nil
}

// Info describes one subvolume as the kernel reports it.
type Info struct {
	Path         string
	Name         string
	ID           uint64
	UUID         UUID
	ParentUUID   UUID
	ReceivedUUID UUID
	ReadOnly     bool
	Generation   uint64
	CTransID     uint64
	// STransID is, for a received subvolume, the ctransid its source had
	// when it was sent (0 otherwise).
	STransID uint64
	Created  time.Time
}

const (
	btrfsSuperMagic   = 0x9123683e
	firstFreeObjectID = 256 // inode number of every subvolume root
	rootSubvolRDONLY  = 1 << 0
	iocGetSubvolInfo  = 0x81f8943c // _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args)
)

type ioctlTimespec struct {
	Sec  uint64
	Nsec uint32
	_    uint32
}

// getSubvolInfoArgs mirrors struct btrfs_ioctl_get_subvol_info_args (504 bytes).
type getSubvolInfoArgs struct {
	TreeID       uint64
	Name         [256]byte
	ParentID     uint64
	DirID        uint64
	Generation   uint64
	Flags        uint64
	UUID         [16]byte
	ParentUUID   [16]byte
	ReceivedUUID [16]byte
	CTransID     uint64
	OTransID     uint64
	STransID     uint64
	RTransID     uint64
	CTime        ioctlTimespec
	OTime        ioctlTimespec
	STime        ioctlTimespec
	RTime        ioctlTimespec
	Reserved     [8]uint64
}

var _ [504 - unsafe.Sizeof(getSubvolInfoArgs{})]struct{} // layout guard

// IsBtrfs returns nil when path exists on a btrfs filesystem.
func IsBtrfs(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s: %w", path, ErrNotFound)
		}
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != btrfsSuperMagic {
		return fmt.Errorf("%s: %w", path, ErrNotBtrfs)
	}
	return nil
}

// Inspect reads a subvolume's identity and flags with BTRFS_IOC_GET_SUBVOL_INFO.
// It fails with ErrNotFound, ErrNotBtrfs or ErrNotSubvolume for anything else.
func Inspect(path string) (Info, error) {
	if err := IsBtrfs(path); err != nil {
		return Info{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Info{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Ino != firstFreeObjectID || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Info{}, fmt.Errorf("%s: %w", path, ErrNotSubvolume)
	}
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	var a getSubvolInfoArgs
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), iocGetSubvolInfo, uintptr(unsafe.Pointer(&a))); errno != 0 {
		return Info{}, fmt.Errorf("inspect subvolume %s: %w", path, errno)
	}
	n := 0
	for n < len(a.Name) && a.Name[n] != 0 {
		n++
	}
	return Info{
		Path:         path,
		Name:         string(a.Name[:n]),
		ID:           a.TreeID,
		UUID:         a.UUID,
		ParentUUID:   a.ParentUUID,
		ReceivedUUID: a.ReceivedUUID,
		ReadOnly:     a.Flags&rootSubvolRDONLY != 0,
		Generation:   a.Generation,
		CTransID:     a.CTransID,
		STransID:     a.STransID,
		Created:      time.Unix(int64(a.OTime.Sec), int64(a.OTime.Nsec)),
	}, nil
}

// IsSubvolume reports whether path is the root of a subvolume.
func IsSubvolume(path string) bool {
	var st unix.Stat_t
	return IsBtrfs(path) == nil && unix.Stat(path, &st) == nil &&
		st.Ino == firstFreeObjectID && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// List inspects the subvolumes that are direct children of dir, oldest first
// (by creation time, then name). Other entries are ignored.
func List(dir string) ([]Info, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list subvolumes in %s: %w", dir, err)
	}
	var out []Info
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if !IsSubvolume(p) {
			continue
		}
		info, err := Inspect(p)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

// CreateSubvolume creates an empty subvolume at path.
func CreateSubvolume(ctx context.Context, path string) error {
	_, err := run(ctx, "subvolume", "create", path)
	return err
}

// DeleteSubvolume deletes the subvolume at path, read-only or not, and
// every subvolume nested inside it. Deleting a missing path is not an error,
// so cleanup can be repeated.
func DeleteSubvolume(ctx context.Context, path string) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if !IsSubvolume(path) {
		return fmt.Errorf("delete %s: %w", path, ErrNotSubvolume)
	}
	// Nested subvolumes must go first or the kernel refuses (ENOTEMPTY).
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == path || !d.IsDir() {
			return nil
		}
		if IsSubvolume(p) {
			_ = DeleteSubvolume(ctx, p)
			return filepath.SkipDir
		}
		return nil
	})
	_, err := run(ctx, "subvolume", "delete", path)
	return err
}

// Snapshot creates a snapshot of the subvolume src at dst. An existing dst
// is ErrExists.
func Snapshot(ctx context.Context, src, dst string, readOnly bool) error {
	// btrfs-progs would put the snapshot inside an existing directory dst
	// instead of failing, and callers rely on dst being the snapshot.
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("snapshot %s: %s: %w", src, dst, ErrExists)
	}
	args := []string{"subvolume", "snapshot"}
	if readOnly {
		args = append(args, "-r")
	}
	_, err := run(ctx, append(args, src, dst)...)
	return err
}

// SetReadOnly sets or clears the read-only property of a subvolume.
func SetReadOnly(ctx context.Context, path string, ro bool) error {
	_, err := run(ctx, "property", "set", "-ts", path, "ro", fmt.Sprint(ro))
	return err
}

// Sync commits the filesystem holding path (syncfs), so that what was
// written before is durable.
func Sync(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
