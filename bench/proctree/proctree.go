// Package proctree runs the processes of one benchmark row and measures
// them: CPU time of the whole tree from the wait4 rusage of the direct
// children, and the peak RSS of every process in the tree, including the
// ones the children start themselves (btrfs send under snapjet, the remote
// side under sshd), by sampling VmHWM in /proc. A process that lives for
// less than one sampling interval may go unseen; it then shows no peak.
package proctree

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Interval is how often /proc is sampled. VmHWM only grows, so a sample
// misses at most the growth of a process's last interval.
const Interval = 50 * time.Millisecond

// clockTick is the unit of utime and stime in /proc/PID/stat; the kernel
// exports USER_HZ, which is 100 on every Linux architecture.
const clockTick = 10 * time.Millisecond

// Proc is what was measured for one process label (e.g. "btrfs send"); when
// several processes share a label, PeakRSS is the largest and CPU the sum.
type Proc struct {
	Label   string        `json:"label"`
	Count   int           `json:"count"`
	PeakRSS int64         `json:"peak_rss_bytes"`
	CPU     time.Duration `json:"cpu_ns"`
	// Written is the bytes the processes sent towards storage (write_bytes
	// in /proc/PID/task/*/io, counted when pages are dirtied), as of their
	// last sample: a process's final 50 ms may be missing, and so are
	// threads that ended before it.
	Written int64 `json:"written_bytes"`
}

// Group is the process tree of one row. Start its processes with Start,
// reap each with Wait, then read Procs and CPU.
type Group struct {
	mu      sync.Mutex
	procs   map[int]*proc
	cpu     time.Duration // rusage of reaped direct children, their reaped descendants included
	stop    chan struct{}
	stopped chan struct{}
}

type proc struct {
	pid, ppid int
	start     uint64 // starttime in /proc/PID/stat: tells a reused pid apart
	comm      string
	label     string
	hwm       int64 // bytes
	written   int64 // write_bytes of /proc/PID/io: what it sent towards storage
	cpu       time.Duration
	direct    bool
	done      bool // reaped (direct) or vanished
}

// New starts sampling. Call Close when the row is over.
func New() *Group {
	g := &Group{procs: map[int]*proc{}, stop: make(chan struct{}), stopped: make(chan struct{})}
	go g.loop()
	return g
}

func (g *Group) loop() {
	defer close(g.stopped)
	t := time.NewTicker(Interval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-t.C:
			g.Sample()
		}
	}
}

// Close stops sampling after a last sample.
func (g *Group) Close() {
	select {
	case <-g.stop:
		return
	default:
	}
	close(g.stop)
	<-g.stopped
	g.Sample()
}

// Start starts cmd as a direct child of the group. The child is killed if
// the benchmark itself dies, so no measured process outlives it.
func (g *Group) Start(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", strings.Join(cmd.Args, " "), err)
	}
	g.mu.Lock()
	p := &proc{pid: cmd.Process.Pid, direct: true, label: label(cmd.Args, "")}
	g.procs[p.pid] = p
	g.mu.Unlock()
	g.Sample()
	return nil
}

// Wait reaps a child started with Start and adds its rusage (which includes
// every descendant it reaped itself) to the group's CPU.
func (g *Group) Wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	g.Sample()
	if cmd.ProcessState == nil {
		return err
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	g.mu.Lock()
	defer g.mu.Unlock()
	if ru != nil {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		g.cpu += cpu
		if p := g.procs[cmd.Process.Pid]; p != nil && p.direct {
			p.done = true
			p.cpu = cpu
		}
	}
	// ru.Maxrss is no measure of the child's own memory: it also covers the
	// descendants it reaped, and, since Go starts children with vfork,
	// the memory of the Go parent whose address space the child borrowed
	// until exec. Only the sampled VmHWM is the child's own.
	return err
}

// CPU is the user+system time of every reaped direct child and of the
// descendants they reaped.
func (g *Group) CPU() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cpu
}

// Procs summarises every process seen, grouped by label, largest peak first.
func (g *Group) Procs() []Proc {
	g.mu.Lock()
	defer g.mu.Unlock()
	by := map[string]*Proc{}
	for _, p := range g.procs {
		s := by[p.label]
		if s == nil {
			s = &Proc{Label: p.label}
			by[p.label] = s
		}
		s.Count++
		s.CPU += p.cpu
		s.PeakRSS = max(s.PeakRSS, p.hwm)
		s.Written += p.written
	}
	out := make([]Proc, 0, len(by))
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PeakRSS != out[j].PeakRSS {
			return out[i].PeakRSS > out[j].PeakRSS
		}
		return out[i].Label < out[j].Label
	})
	return out
}

// Live returns the pids of the processes of the tree still running under
// root (root included), as of a fresh sample.
func (g *Group) Live(root int) []int {
	g.Sample()
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []int
	for _, p := range g.procs {
		if !p.done && g.descends(p, root) {
			out = append(out, p.pid)
		}
	}
	return out
}

func (g *Group) descends(p *proc, root int) bool {
	for i := 0; p != nil && i < 64; i++ {
		if p.pid == root {
			return true
		}
		p = g.procs[p.ppid]
	}
	return false
}

// KillAll sends SIGKILL to every live process of the group, children of
// children included, so an aborted row leaves nothing running.
func (g *Group) KillAll() {
	g.Sample()
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.procs {
		if !p.done {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
}

// Sample reads /proc once: it adopts new descendants of tracked processes
// and updates every live one's peak RSS and CPU.
func (g *Group) Sample() {
	all := readAll()
	g.mu.Lock()
	defer g.mu.Unlock()
	children := map[int][]int{}
	for pid, s := range all {
		children[s.ppid] = append(children[s.ppid], pid)
	}
	var queue []int
	for pid, p := range g.procs {
		s, ok := all[pid]
		switch {
		case p.done:
		case !ok || (p.start != 0 && s.start != p.start):
			if !p.direct {
				p.done = true // exited; a direct child waits for Wait
			}
		default:
			queue = append(queue, pid)
		}
	}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		s := all[pid]
		p := g.procs[pid]
		if p == nil {
			p = &proc{pid: pid}
			g.procs[pid] = p
		}
		g.update(p, s)
		if kids := children[pid]; len(kids) > 0 {
			for _, k := range kids {
				if q := g.procs[k]; q == nil || q.done || q.start != all[k].start {
					if q != nil && q.done {
						// A pid reused after the tracked process ended.
						delete(g.procs, k)
					}
					queue = append(queue, k)
				}
			}
		}
	}
}

func (g *Group) update(p *proc, s stat) {
	if p.start == 0 {
		p.start = s.start
	}
	p.ppid = s.ppid
	if s.comm != p.comm {
		// A new comm means an exec: the label and the memory are the new
		// program's; what was seen before belonged to the forking parent.
		p.comm = s.comm
		// A zombie has no cmdline; keep the label it had while running.
		if args := readCmdline(p.pid); len(args) > 0 || p.label == "" {
			p.label = label(args, s.comm)
		}
		p.hwm = 0
		p.written = 0
	}
	if hwm := readHWM(p.pid); hwm > p.hwm {
		p.hwm = hwm
	}
	if w := readWritten(p.pid); w > p.written {
		p.written = w
	}
	if !p.direct || !p.done {
		p.cpu = time.Duration(s.ticks) * clockTick
	}
}

type stat struct {
	ppid  int
	comm  string
	start uint64
	ticks uint64
}

func readAll() map[int]stat {
	out := map[int]stat{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if s, err := readStat(pid); err == nil {
			out[pid] = s
		}
	}
	return out
}

func readStat(pid int) (stat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// comm is in parentheses and may itself contain spaces or parentheses.
	s := string(data)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return stat{}, errors.New("malformed stat")
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 20 {
		return stat{}, errors.New("short stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return stat{ppid: ppid, comm: s[open+1 : end], start: start, ticks: ut + st}, nil
}

func readHWM(pid int) int64 {
	return ReadKB("/proc/"+strconv.Itoa(pid)+"/status", "VmHWM")
}

// readWritten sums write_bytes over the threads of pid. The process-wide
// /proc/PID/io would not do: it also holds the I/O of every child the
// process reaped, which the children's own samples already count.
func readWritten(pid int) int64 {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var total int64
	for _, t := range tasks {
		data, err := os.ReadFile(dir + "/" + t.Name() + "/io")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "write_bytes:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				total += n
				break
			}
		}
	}
	return total
}

// ReadKB reads a "Key:   N kB" line of a /proc file such as status or
// meminfo and returns N in bytes, or 0 when there is none.
func ReadKB(path, key string) int64 {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func readCmdline(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil || len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// label names a process the way the results table shows it: the program,
// plus the subcommand for multi-command tools so that "btrfs send" and
// "btrfs receive" are told apart.
func label(args []string, comm string) string {
	if strings.HasPrefix(comm, "sshd") || (len(args) > 0 && strings.HasPrefix(args[0], "sshd")) {
		return "sshd" // sshd rewrites its argv ("sshd: root@notty")
	}
	if len(args) == 0 {
		return comm
	}
	name := filepath.Base(args[0])
	switch name {
	case "btrfs", "snapjet":
		for _, a := range args[1:] {
			if !strings.HasPrefix(a, "-") {
				return name + " " + a
			}
		}
	case "zstd":
		for _, a := range args[1:] {
			if a == "-d" || a == "--decompress" {
				return "zstd -d"
			}
		}
	}
	return name
}
