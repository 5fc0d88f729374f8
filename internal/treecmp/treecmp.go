// Package treecmp compares two directory trees the way a replication user
// cares about: file types, content, modes, owners, times, xattrs, symlink
// targets, device numbers and the hard-link structure.
package treecmp

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Options tune what counts as a difference.
type Options struct {
	// Times compares mtimes of everything but the root (send/receive keeps them).
	Times bool
	// MaxDiffs stops after this many differences (0: 20).
	MaxDiffs int
}

type entry struct {
	mode   uint32
	uid    uint32
	gid    uint32
	size   int64
	rdev   uint64
	mtime  unix.Timespec
	link   string
	sum    [32]byte
	xattrs map[string]string
	inode  uint64
}

// Compare returns the differences between trees a and b; none means equal.
func Compare(a, b string, opt Options) ([]string, error) {
	ta, err := scan(a)
	if err != nil {
		return nil, err
	}
	tb, err := scan(b)
	if err != nil {
		return nil, err
	}
	max := opt.MaxDiffs
	if max == 0 {
		max = 20
	}
	var diffs []string
	add := func(format string, args ...any) {
		if len(diffs) < max {
			diffs = append(diffs, fmt.Sprintf(format, args...))
		}
	}
	for _, p := range sortedKeys(ta) {
		ea, eb := ta[p], tb[p]
		if eb == nil {
			add("%s: only in %s", p, a)
			continue
		}
		switch {
		case ea.mode != eb.mode:
			add("%s: mode %o != %o", p, ea.mode, eb.mode)
		case ea.uid != eb.uid || ea.gid != eb.gid:
			add("%s: owner %d:%d != %d:%d", p, ea.uid, ea.gid, eb.uid, eb.gid)
		case ea.size != eb.size && ea.mode&unix.S_IFMT == unix.S_IFREG:
			add("%s: size %d != %d", p, ea.size, eb.size)
		case ea.sum != eb.sum:
			add("%s: content differs", p)
		case ea.link != eb.link:
			add("%s: symlink %q != %q", p, ea.link, eb.link)
		case ea.rdev != eb.rdev:
			add("%s: device %d != %d", p, ea.rdev, eb.rdev)
		case !equalXattrs(ea.xattrs, eb.xattrs):
			add("%s: xattrs %v != %v", p, ea.xattrs, eb.xattrs)
		case opt.Times && p != "." && ea.mtime != eb.mtime:
			add("%s: mtime %v != %v", p, ea.mtime, eb.mtime)
		}
	}
	for _, p := range sortedKeys(tb) {
		if ta[p] == nil {
			add("%s: only in %s", p, b)
		}
	}
	if la, lb := linkGroups(ta), linkGroups(tb); la != lb {
		add("hard-link structure differs:\n%s\nvs\n%s", la, lb)
	}
	return diffs, nil
}

func scan(root string) (map[string]*entry, error) {
	out := map[string]*entry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := &entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, size: st.Size, mtime: st.Mtim, inode: st.Ino}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if e.sum, err = fileSum(p); err != nil {
				return err
			}
		case unix.S_IFLNK:
			if e.link, err = os.Readlink(p); err != nil {
				return err
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			e.rdev = st.Rdev
		}
		if e.xattrs, err = xattrs(p); err != nil {
			return err
		}
		out[rel] = e
		return nil
	})
	return out, err
}

func fileSum(p string) ([32]byte, error) {
	var sum [32]byte
	f, err := os.Open(p)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, err
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

func xattrs(p string) (map[string]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return nil, nil // not supported here, or none
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return nil, fmt.Errorf("listxattr %s: %w", p, err)
	}
	out := map[string]string{}
	for _, name := range strings.Split(string(buf[:size]), "\x00") {
		if name == "" {
			continue
		}
		vs, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		v := make([]byte, vs)
		vs, err = unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		out[name] = string(v[:vs])
	}
	return out, nil
}

func equalXattrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal([]byte(v), []byte(w)) {
			return false
		}
	}
	return true
}

// linkGroups renders the sets of paths that share an inode (non-directories
// with more than one name), independent of inode numbers.
func linkGroups(t map[string]*entry) string {
	byInode := map[uint64][]string{}
	for p, e := range t {
		if e.mode&unix.S_IFMT != unix.S_IFDIR {
			byInode[e.inode] = append(byInode[e.inode], p)
		}
	}
	var groups []string
	for _, ps := range byInode {
		if len(ps) > 1 {
			sort.Strings(ps)
			groups = append(groups, strings.Join(ps, " = "))
		}
	}
	sort.Strings(groups)
	return strings.Join(groups, "\n")
}

func sortedKeys(m map[string]*entry) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
