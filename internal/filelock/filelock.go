// Package filelock gives one process at a time the use of something on
// disk (a JetStream store, a target directory) through an advisory lock
// (flock(2), by github.com/gofrs/flock) on a file, and lets the holder
// leave a note in that file (its pid, its server URL) for the processes it
// refuses, so their error can name it.
//
// Contract: TryLock never waits. It fails with an error wrapping ErrHeld
// while another open of the file holds the lock, in this process or
// another; the kernel drops the lock when the holder closes it or dies, so
// a crashed holder never blocks the next one. The note is advisory text:
// a refused process may read it empty while the holder is writing it.
//
// A flock belongs to the file, not to its name: if the file is removed or
// replaced while held, the next TryLock creates and locks a new file at
// the same path and succeeds. Check tells the holder that this happened;
// TryLock never returns a lock on a file that no longer has the path.
package filelock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/gofrs/flock"
)

// ErrHeld means another holder has the lock.
var ErrHeld = errors.New("locked by another holder")

// ErrLost means the path no longer names the locked file (it was removed
// or replaced), so another process can take a lock on it.
var ErrLost = errors.New("lock file removed or replaced while locked")

// lockAttempts bounds TryLock's retries when the file it locked loses its
// path before the lock is checked (another process removing it).
const lockAttempts = 3

// Lock is a held lock; Close releases it.
type Lock struct {
	fl   *flock.Flock
	path string
}

// TryLock takes the lock on path (created with mode 0600 if missing)
// without waiting. Other errors are the open's or flock's, which name the
// path.
func TryLock(path string) (*Lock, error) {
	for range lockAttempts {
		fl := flock.New(path, flock.SetPermissions(0o600))
		ok, err := fl.TryLock()
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("%s: %w", path, ErrHeld)
		}
		l := &Lock{fl: fl, path: path}
		err = l.Check()
		if err == nil {
			return l, nil
		}
		_ = fl.Close()
		if !errors.Is(err, ErrLost) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("%s: %w %d times in a row: is something removing it?", path, ErrLost, lockAttempts)
}

// Check returns an error wrapping ErrLost when the lock's path no longer
// names the file this lock holds, and nil while it does. A holder that
// must stay the only one checks it from time to time.
func (l *Lock) Check() error {
	held, err := l.fl.Stat()
	if err != nil {
		return fmt.Errorf("lock %s: %w", l.path, err)
	}
	named, err := os.Stat(l.path)
	if errors.Is(err, fs.ErrNotExist) || (err == nil && !os.SameFile(held, named)) {
		return fmt.Errorf("%s: %w", l.path, ErrLost)
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", l.path, err)
	}
	return nil
}

// SetNote replaces the note that Note returns to others.
func (l *Lock) SetNote(note string) error {
	if err := os.WriteFile(l.path, []byte(note), 0o600); err != nil {
		return fmt.Errorf("lock %s: write note: %w", l.path, err)
	}
	return nil
}

// Close releases the lock; the note stays for the next holder to replace.
func (l *Lock) Close() error { return l.fl.Close() }

// Note returns the note the holder of the lock on path left, or "" when
// there is none or it cannot be read: it only decorates an error message.
func Note(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
