package btrfs

import (
	"errors"
	"os/exec"
	"testing"
)

// The stderr texts are the ones btrfs-progs 6.2 printed on a loop-mounted
// btrfs for each situation; classify must map them as callers expect.
func TestClassify(t *testing.T) {
	tests := []struct {
		situation string
		stderr    string
		want      error
	}{
		{"receive into a full filesystem", "At subvol s2\nERROR: writing to big failed: No space left on device\n", ErrNoSpace},
		{"incremental receive without parent", "ERROR: cannot find parent subvolume\n", ErrParentMissing},
		{"clone source missing", "ERROR: cannot find clone source subvol 1234\n", ErrParentMissing},
		{"subvolume command on /tmp", "ERROR: not a btrfs filesystem: /tmp\n", ErrNotBtrfs},
		{"snapshot of a dir on ext4", "ERROR: Not a Btrfs filesystem: Invalid argument\n", ErrNotBtrfs},
		{"receive into ext4", "ERROR: /tmp doesn't belong to btrfs mount point\n", ErrNotBtrfs},
		{"delete or snapshot of a plain directory", "ERROR: Not a Btrfs subvolume: Invalid argument\n", ErrNotSubvolume},
		{"property ro on a plain directory", "ERROR: Could not get subvolume flags: Invalid argument\n", ErrNotSubvolume},
		{"snapshot onto an existing name", "ERROR: cannot snapshot 'a': File exists\n", ErrExists},
		{"create an existing subvolume", "ERROR: target path already exists: a\n", ErrExists},
		{"delete of a missing path", "ERROR: Could not statfs: No such file or directory\n", ErrNotFound},
		{"property on a missing path", "ERROR: Could not open: No such file or directory\n", ErrNotFound},
		{"create under a missing directory", "ERROR: cannot access 'nodir': No such file or directory\n", ErrNotFound},
		{"delete of a non-empty subvolume", "ERROR: Could not destroy subvolume/snapshot: Directory not empty\n", nil},
		{"send of a writable subvolume", "ERROR: subvolume /m/a is not read-only\n", nil},
		{"truncated stream", "ERROR: short read from stream: expected 17 read 8\n", nil},
		{"flags on a subvolume without permission", "ERROR: Could not get subvolume flags: Permission denied\n", nil},
		{"empty stderr", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.situation, func(t *testing.T) {
			if got := classify(tt.stderr); got != tt.want {
				t.Errorf("classify(%q) = %v, want %v", tt.stderr, got, tt.want)
			}
		})
	}
}

func TestCmdErrorWrapsKindAndCause(t *testing.T) {
	exit := exec.Command("false").Run()
	if exit == nil {
		t.Fatal("`false` succeeded")
	}
	err := cmdError([]string{"receive", "/t"}, "ERROR: cannot find parent subvolume\n", exit)
	var exitErr *exec.ExitError
	if !errors.Is(err, ErrParentMissing) || !errors.As(err, &exitErr) {
		t.Errorf("%v: want both ErrParentMissing and the *exec.ExitError in its chain", err)
	}
	if want := "btrfs receive /t: " + ErrParentMissing.Error() + ": ERROR: cannot find parent subvolume"; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}

	unknown := cmdError([]string{"send", "/s"}, "", exit)
	if unknown.Kind != nil || unknown.Error() != "btrfs send /s: "+exit.Error() {
		t.Errorf("unclassified error with empty stderr: kind %v, message %q", unknown.Kind, unknown.Error())
	}
}
