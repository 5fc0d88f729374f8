package native

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is returned for stream paths that would leave the
// subvolume: absolute, "..", empty components, or through a symlink.
var ErrUnsafePath = errors.New("unsafe path in send stream")

// beneath confines every lookup to the subvolume root: no "..", no
// symlinks (not even ones staying inside, so a later rename cannot turn a
// resolved path into an escape), no /proc magic links, no mount crossing.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// checkPath validates a stream path; "" is the subvolume root.
func checkPath(p string) error {
	if p == "" {
		return nil
	}
	if strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: %q", ErrUnsafePath, p)
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return fmt.Errorf("%w: %q", ErrUnsafePath, p)
		}
	}
	return nil
}

// openBeneath opens p relative to the directory root with openat2, never
// leaving it.
func openBeneath(root int, p string, flags int) (int, error) {
	if err := checkPath(p); err != nil {
		return -1, err
	}
	if p == "" {
		p = "."
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: beneath}
	for {
		fd, err := unix.Openat2(root, p, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue // EAGAIN: a concurrent rename raced the lookup
		}
		if err == unix.ELOOP || err == unix.EXDEV {
			return -1, fmt.Errorf("%w: %q crosses a symlink or mount: %v", ErrUnsafePath, p, err)
		}
		if err != nil {
			return -1, fmt.Errorf("open %q: %w", p, err)
		}
		return fd, nil
	}
}

// entry is the parent directory of a stream path, opened beneath the
// subvolume, plus the final name. The subvolume root itself is
// {dir: root, name: "."}.
type entry struct {
	dir   int
	name  string
	owned bool // dir must be closed
	path  string
}

func (e entry) close() {
	if e.owned {
		unix.Close(e.dir)
	}
}

// procPath names the entry for syscalls that have no *at form (xattrs);
// the parent comes from our own fd, the last component is not followed.
func (e entry) procPath() string {
	return "/proc/self/fd/" + strconv.Itoa(e.dir) + "/" + e.name
}

func resolve(root int, p string) (entry, error) {
	if err := checkPath(p); err != nil {
		return entry{}, err
	}
	if p == "" {
		return entry{dir: root, name: ".", path: p}, nil
	}
	i := strings.LastIndexByte(p, '/')
	if i < 0 {
		return entry{dir: root, name: p, path: p}, nil
	}
	fd, err := openBeneath(root, p[:i], unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return entry{}, err
	}
	return entry{dir: fd, name: p[i+1:], owned: true, path: p}, nil
}

func lstatAt(e entry) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(e.dir, e.name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}
