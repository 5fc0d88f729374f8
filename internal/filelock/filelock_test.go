package filelock

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestSecondHolderIsRefusedUntilRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	first, err := TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.SetNote("1234"); err != nil {
		t.Fatal(err)
	}
	// flock locks belong to an open file, so a second open in the same
	// process is refused like another process would be.
	if _, err := TryLock(path); !errors.Is(err, ErrHeld) {
		t.Fatalf("second TryLock while held: %v, want ErrHeld", err)
	}
	if got := Note(path); got != "1234" {
		t.Fatalf("Note = %q, want the holder's %q", got, "1234")
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	second, err := TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after release: %v", err)
	}
	defer second.Close()
	if err := second.SetNote("5678"); err != nil {
		t.Fatal(err)
	}
	if got := Note(path); got != "5678" {
		t.Fatalf("Note = %q after a shorter note, want %q", got, "5678")
	}
}

func TestNoteOfMissingFile(t *testing.T) {
	if got := Note(filepath.Join(t.TempDir(), "none")); got != "" {
		t.Fatalf("Note of a missing file = %q, want empty", got)
	}
}

func TestTryLockReportsUnusablePath(t *testing.T) {
	_, err := TryLock(filepath.Join(t.TempDir(), "missing-dir", "x.lock"))
	if err == nil || errors.Is(err, ErrHeld) {
		t.Fatalf("TryLock in a missing directory: %v, want an open error", err)
	}
}

// A removed or replaced lock file lets a second holder in; Check is how
// the first one learns it.
func TestCheckSeesTheFileRemovedOrReplaced(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(path string) error
	}{
		{"removed", os.Remove},
		{"replaced", func(path string) error {
			tmp := path + ".new"
			if err := os.WriteFile(tmp, nil, 0o600); err != nil {
				return err
			}
			return os.Rename(tmp, path)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.lock")
			first, err := TryLock(path)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			if err := first.Check(); err != nil {
				t.Fatalf("Check of an intact lock: %v", err)
			}
			if err := first.SetNote("1234"); err != nil {
				t.Fatal(err)
			}
			if err := first.Check(); err != nil {
				t.Fatalf("Check after SetNote: %v, want nil (the note rewrites the same file)", err)
			}
			if err := tc.change(path); err != nil {
				t.Fatal(err)
			}
			if err := first.Check(); !errors.Is(err, ErrLost) {
				t.Fatalf("Check after the file was %s: %v, want ErrLost", tc.name, err)
			}
			second, err := TryLock(path)
			if err != nil {
				t.Fatalf("TryLock of the new file: %v", err)
			}
			defer second.Close()
			if err := second.Check(); err != nil {
				t.Fatalf("Check of the new holder: %v", err)
			}
		})
	}
}
