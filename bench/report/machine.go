package report

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapjet/snapjet/bench/proctree"
)

// Machine is what the figures were measured on.
type Machine struct {
	CPU         string            `json:"cpu"`
	Cores       int               `json:"cores"`
	MemoryBytes int64             `json:"memory_bytes"`
	Kernel      string            `json:"kernel"`
	Disk        string            `json:"disk"`
	Versions    map[string]string `json:"versions"`
}

// Describe inspects this machine. dir is where the loop images live, so
// the disk described is the one they are on. tools maps a name to the
// command that prints its version.
func Describe(ctx context.Context, dir string, tools map[string][]string) Machine {
	m := Machine{Cores: runtime.NumCPU(), Versions: map[string]string{"go": runtime.Version()}}
	m.CPU = cpuModel()
	m.MemoryBytes = proctree.ReadKB("/proc/meminfo", "MemTotal")
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	m.Disk = disk(dir)
	for name, argv := range tools {
		m.Versions[name] = version(ctx, argv)
	}
	return m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// disk names the block device holding dir, with its size and whether it
// rotates, from sysfs.
func disk(dir string) string {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return ""
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	target, err := filepath.EvalSymlinks(sys)
	if err != nil {
		return fmt.Sprintf("device %d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	// A partition's attributes of interest live on its parent disk.
	diskDir := target
	if _, err := os.Stat(filepath.Join(target, "partition")); err == nil {
		diskDir = filepath.Dir(target)
	}
	read := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(diskDir, name))
		return strings.TrimSpace(string(b))
	}
	desc := filepath.Base(target)
	if model := read("device/model"); model != "" {
		desc += " " + model
	}
	if sectors, err := strconv.ParseInt(read("size"), 10, 64); err == nil {
		desc += fmt.Sprintf(", %.0f GB", float64(sectors*512)/1e9)
	}
	switch read("queue/rotational") {
	case "0":
		desc += ", non-rotational"
	case "1":
		desc += ", rotational"
	}
	return desc
}

func version(ctx context.Context, argv []string) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "unknown (" + err.Error() + ")"
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(line)
}
