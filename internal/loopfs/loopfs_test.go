package loopfs_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

const size = 128 << 20

// mountedFS asks findmnt, not loopfs, what is mounted at dir.
func mountedFS(t *testing.T, dir string) string {
	t.Helper()
	out, err := exec.Command("findmnt", "-n", "-o", "FSTYPE", "--mountpoint", dir).Output()
	if err != nil && len(out) > 0 {
		t.Fatalf("findmnt %s: %v", dir, err)
	}
	return strings.TrimSpace(string(out)) // findmnt exits 1 with no output when nothing is mounted
}

// loopDevicesOf lists the loop devices still backed by image.
func loopDevicesOf(t *testing.T, image string) string {
	t.Helper()
	out, err := exec.Command("losetup", "--associated", image).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		t.Fatalf("losetup --associated %s: %v: %s", image, err, out)
	}
	if err != nil {
		return "" // the image is gone, so nothing can be attached to it by name
	}
	return strings.TrimSpace(string(out))
}

// assertGone checks that nothing of fs is left: mount, loop device, image.
func assertGone(t *testing.T, fs loopfs.FS) {
	t.Helper()
	if got := mountedFS(t, fs.Dir); got != "" {
		t.Errorf("%s still mounted (%s)", fs.Dir, got)
	}
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Fatalf("losetup --list: %v", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, fs.Image) {
			t.Errorf("loop device still attached: %s", line)
		}
	}
	if _, err := os.Stat(fs.Image); !os.IsNotExist(err) {
		t.Errorf("image %s still there: %v", fs.Image, err)
	}
}

func TestNewMountsAndCleansUp(t *testing.T) {
	var created loopfs.FS
	t.Run("use", func(t *testing.T) {
		fs := loopfs.New(t, size)
		created = *fs
		if got := mountedFS(t, fs.Dir); got != "btrfs" {
			t.Fatalf("%s: mounted filesystem %q, want btrfs", fs.Dir, got)
		}
		if devs := loopDevicesOf(t, fs.Image); !strings.Contains(devs, fs.Device) {
			t.Errorf("losetup does not show %s backed by %s: %q", fs.Device, fs.Image, devs)
		}
		if err := btrfs.IsBtrfs(fs.Dir); err != nil {
			t.Error(err)
		}
		if err := os.WriteFile(filepath.Join(fs.Dir, "data"), make([]byte, 1<<20), 0o644); err != nil {
			t.Error(err)
		}
	})
	if created.Dir == "" {
		t.Fatal("New did not return a filesystem")
	}
	assertGone(t, created)
}

func TestCreateFailureLeavesNothing(t *testing.T) {
	if why := loopfs.Available(); why != "" {
		t.Skip(why)
	}
	base := t.TempDir()
	// Far below what mkfs.btrfs accepts.
	if fs, err := loopfs.Create(base, 1<<20); err == nil {
		fs.Destroy()
		t.Fatal("Create of a 1 MiB btrfs succeeded")
	}
	assertGone(t, loopfs.FS{Dir: filepath.Join(base, "mnt"), Image: filepath.Join(base, "btrfs.img")})
}

func TestDestroy(t *testing.T) {
	if why := loopfs.Available(); why != "" {
		t.Skip(why)
	}
	tests := []struct {
		name    string
		holdFor time.Duration // a file on the filesystem stays open this long (-1: until Destroy returned)
		wantErr bool
	}{
		{"idle", 0, false},
		// A killed child process may still hold a file for a moment.
		{"briefly busy", 500 * time.Millisecond, false},
		// Still busy after the retries: detached lazily, and reported. The
		// file is held until Destroy has returned, however long its retries
		// take on a loaded machine.
		{"busy past the retries", -1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs, err := loopfs.Create(t.TempDir(), size)
			if err != nil {
				t.Fatal(err)
			}
			snapshot := *fs
			released := make(chan struct{})
			destroyed := make(chan struct{})
			if tt.holdFor != 0 {
				f, err := os.Create(filepath.Join(fs.Dir, "held"))
				if err != nil {
					fs.Destroy()
					t.Fatal(err)
				}
				go func() {
					if tt.holdFor > 0 {
						time.Sleep(tt.holdFor) // the fault: a file held for a while
					} else {
						<-destroyed
					}
					f.Close()
					close(released)
				}()
			} else {
				close(released)
			}
			err = fs.Destroy()
			close(destroyed)
			if (err != nil) != tt.wantErr {
				t.Errorf("Destroy = %v, want error %v", err, tt.wantErr)
			}
			if mountedFS(t, snapshot.Dir) != "" {
				t.Errorf("%s still mounted right after Destroy", snapshot.Dir)
			}
			<-released
			// A lazily unmounted filesystem lets go of its loop device once
			// the last file closes; give the kernel a moment for that.
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) && loopDevicesOf(t, snapshot.Image) != "" {
				time.Sleep(100 * time.Millisecond)
			}
			assertGone(t, snapshot)
			if err := fs.Destroy(); err != nil {
				t.Errorf("second Destroy: %v", err)
			}
		})
	}
}
