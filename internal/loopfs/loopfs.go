// Package loopfs gives tests real btrfs filesystems on loop devices backed by
// image files, and guarantees they are unmounted and detached afterwards,
// also when the test fails or panics.
package loopfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FS is one mounted loop-backed btrfs filesystem.
type FS struct {
	Dir    string // mount point
	Image  string // backing image file
	Device string // /dev/loopN
}

// Available reports why real btrfs cannot be used here, or "" when it can.
func Available() string {
	if os.Geteuid() != 0 {
		return "needs root for loop devices and mount"
	}
	for _, bin := range []string{"mkfs.btrfs", "btrfs", "losetup", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " not installed (apt-get install btrfs-progs)"
		}
	}
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil || !strings.Contains(string(data), "btrfs") {
		if exec.Command("modprobe", "btrfs").Run() != nil {
			return "the kernel has no btrfs support"
		}
	}
	return ""
}

// New creates a btrfs filesystem of size bytes on a fresh loop device and
// mounts it under a temporary directory. It skips the test where real btrfs
// is unavailable; the cleanup runs even when the test fails.
func New(t testing.TB, size int64) *FS {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip("real btrfs unavailable: " + why)
	}
	base := t.TempDir()
	fs, err := Create(base, size)
	if err != nil {
		t.Fatalf("loop btrfs: %v", err)
	}
	t.Cleanup(func() {
		if err := fs.Destroy(); err != nil {
			t.Errorf("cleanup loop btrfs: %v", err)
		}
	})
	return fs
}

// Create makes the image under base, attaches and mounts it. On error
// nothing is left attached or mounted.
func Create(base string, size int64) (_ *FS, err error) {
	fs := &FS{Image: filepath.Join(base, "btrfs.img"), Dir: filepath.Join(base, "mnt")}
	defer func() {
		if err != nil {
			_ = fs.Destroy()
		}
	}()
	if err := os.MkdirAll(fs.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(fs.Image)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	if out, err := exec.Command("mkfs.btrfs", "-q", "-f", fs.Image).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.btrfs: %v: %s", err, out)
	}
	out, err := exec.Command("losetup", "--find", "--show", fs.Image).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup: %v: %s", err, out)
	}
	fs.Device = strings.TrimSpace(string(out))
	if out, err := exec.Command("mount", "-t", "btrfs", fs.Device, fs.Dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mount %s: %v: %s", fs.Device, err, out)
	}
	return fs, nil
}

// Destroy unmounts, detaches and removes the image. It retries a busy
// unmount briefly (a killed child may still hold a file open) and is safe to
// call more than once.
func (fs *FS) Destroy() error {
	var errs []string
	if mounted(fs.Dir) {
		var err error
		for i := 0; i < 50; i++ {
			var out []byte
			if out, err = exec.Command("umount", fs.Dir).CombinedOutput(); err == nil {
				break
			} else {
				err = fmt.Errorf("%v: %s", err, out)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			// Last resort: detach lazily so the next run is not blocked.
			_ = exec.Command("umount", "-l", fs.Dir).Run()
			errs = append(errs, "umount "+fs.Dir+": "+err.Error())
		}
	}
	if fs.Device != "" {
		if out, err := exec.Command("losetup", "-d", fs.Device).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such device") {
			errs = append(errs, fmt.Sprintf("losetup -d %s: %v: %s", fs.Device, err, out))
		}
		fs.Device = ""
	}
	_ = os.Remove(fs.Image)
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

func mounted(dir string) bool {
	data, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}
