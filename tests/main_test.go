package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// snapjetBin is the binary under test, built once for the whole suite so
// that every scenario runs the same code a user would install.
var snapjetBin string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "snapjet-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "temp dir for the snapjet binary:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	snapjetBin = filepath.Join(dir, "snapjet")
	build := exec.Command("go", "build", "-o", snapjetBin, "github.com/snapjet/snapjet/cmd/snapjet")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build snapjet:", err)
		return 1
	}
	return m.Run()
}
