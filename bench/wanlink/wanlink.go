// Package wanlink builds the emulated wide-area link of the benchmark's
// WAN section: a network namespace for the receiving side, joined to the
// host by a veth pair whose host end is shaped with tbf, and a sampler of
// that end's transmit counter that finds the link's idle gaps. The round
// trip is added by wire.DelayRelay (this kernel has no sch_netem).
//
// Everything is named after the benchmark's pid, so a later run can tell
// what a killed run left behind (RemoveStale) from what a live one uses.
package wanlink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const prefix = "snapbench-"

// Link is the namespace, the veth pair and the addresses on it.
type Link struct {
	NS      string // network namespace name, under /run/netns
	Host    string // host end of the veth pair (shaped)
	Peer    string // namespace end
	HostIP  string
	PeerIP  string
	rateBit int64
}

// names for a benchmark process: veth names have at most 15 bytes.
func names(pid int) (ns, host, peer string) {
	return prefix + strconv.Itoa(pid), "sbw" + strconv.Itoa(pid) + "h", "sbw" + strconv.Itoa(pid) + "n"
}

// Create makes the namespace and the veth pair, addresses both ends and
// brings them up. On error everything made so far is removed.
func Create(ctx context.Context) (l *Link, err error) {
	pid := os.Getpid()
	ns, host, peer := names(pid)
	// A /30 of its own per pid, so concurrent runs do not collide.
	net3 := pid % 250
	l = &Link{NS: ns, Host: host, Peer: peer, HostIP: fmt.Sprintf("10.231.%d.1", net3), PeerIP: fmt.Sprintf("10.231.%d.2", net3)}
	defer func() {
		if err != nil {
			l.Destroy()
		}
	}()
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", host, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", ns},
		{"ip", "addr", "add", l.HostIP + "/30", "dev", host},
		{"ip", "link", "set", host, "up"},
		{"ip", "-n", ns, "addr", "add", l.PeerIP + "/30", "dev", peer},
		{"ip", "-n", ns, "link", "set", peer, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return l, err
		}
	}
	return l, nil
}

// Shape replaces the host end's root qdisc with tbf at rateMbit. The
// bucket holds about a millisecond at the rate (at least 64 KiB, a GSO
// packet); the queue about 20 ms (at least 256 KiB), a modest router
// buffer, so the link neither bursts far above the rate nor hides a
// stalled sender behind a long queue.
func (l *Link) Shape(ctx context.Context, rateMbit int) error {
	bytesPerSec := int64(rateMbit) * 1e6 / 8
	burst := max(64<<10, bytesPerSec/1000)
	limit := max(256<<10, bytesPerSec/50)
	l.rateBit = int64(rateMbit) * 1e6
	return run(ctx, "tc", "qdisc", "replace", "dev", l.Host, "root", "tbf",
		"rate", strconv.Itoa(rateMbit)+"mbit", "burst", strconv.FormatInt(burst, 10), "limit", strconv.FormatInt(limit, 10))
}

// Command runs name in the link's namespace (network only: the
// filesystems stay as they are). nsenter execs name, so the pid and
// PR_SET_PDEATHSIG of the started process are name's.
func (l *Link) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join("/run/netns", l.NS), "--", name}, args...)...)
}

// TxBytes reads the host end's transmit counter: every byte towards the
// namespace, headers included, which is what tbf shapes.
func (l *Link) TxBytes() (int64, error) {
	data, err := os.ReadFile(filepath.Join("/sys/class/net", l.Host, "statistics", "tx_bytes"))
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
}

// Destroy removes the veth pair (with its qdisc) and the namespace. The
// caller must have ended the processes in the namespace first, or the
// namespace lives on, unnamed, until they exit.
func (l *Link) Destroy() error {
	return destroy(l.NS, l.Host)
}

func destroy(ns, host string) error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := os.Stat(filepath.Join("/sys/class/net", host)); err == nil {
		// Deleting one end of a veth pair deletes both.
		errs = append(errs, run(ctx, "ip", "link", "del", host))
	}
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
		errs = append(errs, run(ctx, "ip", "netns", "del", ns))
	}
	return errors.Join(errs...)
}

// RemoveStale removes the namespaces and veth pairs of benchmark runs
// whose process is gone (killed with SIGKILL, which leaves no chance to
// clean up).
func RemoveStale() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(rest)
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil {
			continue
		}
		ns, host, _ := names(pid)
		if err := destroy(ns, host); err != nil {
			fmt.Fprintf(os.Stderr, "wanlink: removing what run %d left: %v\n", pid, err)
		}
	}
}

func run(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Sampler reads the link's transmit counter at a fixed interval while a
// row runs.
type Sampler struct {
	link     *Link
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}
	mu       sync.Mutex
	samples  []sample
}

type sample struct {
	at    time.Time
	bytes int64
}

// Sample starts sampling every interval until Stop.
func (l *Link) Sample(interval time.Duration) *Sampler {
	s := &Sampler{link: l, interval: interval, stop: make(chan struct{}), done: make(chan struct{})}
	s.take()
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				s.take()
				return
			case <-t.C:
				s.take()
			}
		}
	}()
	return s
}

func (s *Sampler) take() {
	n, err := s.link.TxBytes()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.samples = append(s.samples, sample{time.Now(), n})
	s.mu.Unlock()
}

// Stats is what a row's samples say about the link.
type Stats struct {
	Bytes      int64         // transmitted between the first and last sample
	LongestGap time.Duration // longest stretch without traffic between the first and the last busy interval
	Gaps100    int           // stretches without traffic of 100 ms or more
	// SteadyGap and SteadyGaps100 count only the gaps after the first and
	// before the last steadyMargin bytes: the stalls of a running transfer,
	// apart from its start (connections, the first pull) and its end.
	SteadyGap     time.Duration
	SteadyGaps100 int
}

// steadyMargin is what a transfer carries at each end before it counts
// as steady.
const steadyMargin = 4 << 20

// idleBytes is what an interval may carry and still count as idle: less
// than two full-size frames (a NATS ping, a stray ack), nothing of the
// stream.
const idleBytes = 3000

// Stop ends sampling and summarises the samples.
func (s *Sampler) Stop() Stats {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return summarise(s.samples)
}

// WriteTrace writes the samples after Stop as "ms bytes" lines, the
// milliseconds since the first sample and the bytes of each interval, to
// look at a row's gaps afterwards.
func (s *Sampler) WriteTrace(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for i := 1; i < len(s.samples); i++ {
		fmt.Fprintf(&b, "%d %d\n", s.samples[i].at.Sub(s.samples[0].at).Milliseconds(), s.samples[i].bytes-s.samples[i-1].bytes)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func summarise(samples []sample) Stats {
	var st Stats
	if len(samples) < 2 {
		return st
	}
	st.Bytes = samples[len(samples)-1].bytes - samples[0].bytes
	st.LongestGap, st.Gaps100 = gaps(samples, 0, st.Bytes)
	st.SteadyGap, st.SteadyGaps100 = gaps(samples, steadyMargin, st.Bytes-steadyMargin)
	return st
}

// gaps finds the stretches without traffic between busy intervals that
// end while the bytes carried so far are within [from, to]. Only gaps
// between busy intervals count: before the first byte the processes are
// starting, after the last one the target is syncing.
func gaps(samples []sample, from, to int64) (longest time.Duration, n100 int) {
	var gap time.Duration
	busySeen := false
	for i := 1; i < len(samples); i++ {
		d := samples[i].at.Sub(samples[i-1].at)
		if samples[i].bytes-samples[i-1].bytes >= idleBytes {
			carried := samples[i-1].bytes - samples[0].bytes
			if busySeen && gap > 0 && carried >= from && carried <= to {
				longest = max(longest, gap)
				if gap >= 100*time.Millisecond {
					n100++
				}
			}
			busySeen, gap = true, 0
			continue
		}
		if busySeen {
			gap += d
		}
	}
	return longest, n100
}
