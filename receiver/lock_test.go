package receiver

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/driver"
)

// A second receiver on a target is refused for good, with the first one's
// pid and the fix; once the first stops, the target can be served again.
func TestLockRefusesSecondReceiverWithPID(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".snapjet"), 0o700); err != nil {
		t.Fatal(err)
	}
	first, err := (&Receiver{dir: dir}).lock()
	if err != nil {
		t.Fatal(err)
	}
	_, err = (&Receiver{dir: dir}).lock()
	if err == nil {
		t.Fatal("a second receiver locked the same target")
	}
	pid := "(pid " + strconv.Itoa(os.Getpid()) + ")"
	if !driver.IsPermanent(err) || !strings.Contains(err.Error(), pid) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("second lock: %v (permanent %v); want a permanent error naming %s and saying \"stop it first\"", err, driver.IsPermanent(err), pid)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	again, err := (&Receiver{dir: dir}).lock()
	if err != nil {
		t.Fatalf("lock after the first receiver stopped: %v", err)
	}
	again.Close()
}
