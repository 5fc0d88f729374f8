// Package btrfs owns every interaction with btrfs: typed subvolume
// operations, subvolume inspection through ioctls, and the btrfs-progs
// send and receive processes. Every btrfs-progs call goes through run,
// which keeps stderr and turns it into a typed error.
package btrfs

import (
	"errors"
	"fmt"
	"strings"
)

// Kinds of failure that callers act on. Test them with errors.Is.
var (
	ErrNotBtrfs       = errors.New("not on a btrfs filesystem")
	ErrNotSubvolume   = errors.New("not a btrfs subvolume")
	ErrNoSpace        = errors.New("no space left on the target filesystem")
	ErrCommandMissing = errors.New("btrfs-progs is not installed (apt-get install btrfs-progs)")
	ErrNotFound       = errors.New("no such file or directory")
	ErrParentMissing  = errors.New("the incremental parent subvolume is missing on the receiving side")
	ErrExists         = errors.New("already exists")
)

// CmdError is a failed btrfs-progs invocation with the stderr it printed.
type CmdError struct {
	Args   []string
	Stderr string
	Err    error // the process error (exit status or start failure)
	Kind   error // one of the Err* sentinels, or nil when unclassified
}

func (e *CmdError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		msg = e.Err.Error()
	}
	if e.Kind != nil {
		return fmt.Sprintf("btrfs %s: %v: %s", strings.Join(e.Args, " "), e.Kind, msg)
	}
	return fmt.Sprintf("btrfs %s: %s", strings.Join(e.Args, " "), msg)
}

func (e *CmdError) Unwrap() []error {
	if e.Kind != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Err}
}

// classify maps btrfs-progs stderr to a sentinel. The texts are the ones
// btrfs-progs 5.x/6.x print; an unknown text stays unclassified.
func classify(stderr string) error {
	s := strings.ToLower(stderr)
	switch {
	case strings.Contains(s, "no space left"):
		return ErrNoSpace
	case strings.Contains(s, "cannot find parent subvolume"),
		strings.Contains(s, "could not find parent"),
		strings.Contains(s, "cannot find clone source"):
		return ErrParentMissing
	// Before ErrNotBtrfs: btrfs-progs 6.2 prints "Not a Btrfs subvolume",
	// which also contains "not a btrfs".
	case strings.Contains(s, "not a subvolume"),
		strings.Contains(s, "not a btrfs subvolume"),
		strings.Contains(s, "could not get subvolume flags: invalid argument"):
		return ErrNotSubvolume
	case strings.Contains(s, "not a btrfs filesystem"),
		strings.Contains(s, "not a btrfs"),
		strings.Contains(s, "doesn't belong to btrfs mount point"):
		return ErrNotBtrfs
	case strings.Contains(s, "file exists"),
		strings.Contains(s, "already exists"):
		return ErrExists
	case strings.Contains(s, "no such file or directory"):
		return ErrNotFound
	}
	return nil
}
