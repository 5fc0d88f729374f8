package sender

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/procfs"

	"github.com/snapjet/snapjet/streams"
)

// compression chooses the level of each chunk: none while the gate has
// seen the data not shrink, else the fixed level or, in auto mode, the
// level the publisher's waits and the targets' pace call for. Workers call
// next; only the publisher calls observe and targets.
type compression struct {
	gate   compressGate
	auto   bool
	ladder []streams.Level // the levels auto may take, cheapest first
	level  atomic.Int32    // a streams.Level
	// s2Refused: s2 was asked for, but not every target reads it.
	s2Refused bool

	period waits
	warm   bool // the first period is over
	idle   *idleMeter
	// pace is what holds the transfer back, judged every paceWindow from
	// the record's target counters since paceFrom (see judgePace); only
	// for auto across a link (paced): a local stream has no link to fill.
	paced    bool
	pace     pace
	paceFrom paceSample
	log      func(from, to streams.Level, w waits, idleCores float64, p pace)
	used     [streams.LevelBetter + 1]atomic.Int64 // chunks per level
}

// newCompression starts in mode: streams.CompressAuto, or a level's name.
// s2 says every target reads S2 (the record's Decodes): without it a fixed
// s2 mode compresses at fastest instead. With local (the stream stays in
// memory beside its targets: no link, no disk before them) auto starts at
// fastest and may step down to none.
func newCompression(mode string, local, s2 bool, log func(from, to streams.Level, w waits, idleCores float64, p pace)) (*compression, error) {
	start, auto, err := streams.ParseCompression(mode)
	if err != nil {
		return nil, err
	}
	c := &compression{log: log, auto: auto, ladder: ladder(local, s2)}
	if start == streams.LevelS2 && !s2 {
		start, c.s2Refused = streams.LevelFastest, true
	}
	if auto {
		c.idle = newIdleMeter()
		c.paced = !local
		if local {
			start = streams.LevelFastest
		}
	}
	c.level.Store(int32(start))
	return c, nil
}

// ladder is the levels auto moves between, cheapest first. A local
// stream may go without compression. A stream that crosses a link may go
// down to S2 where every target reads it (s2), but only while the link has
// room (nextLevel): S2's 40 % more bytes than zstd's fastest cost time on
// a full link.
func ladder(local, s2 bool) []streams.Level {
	l := []streams.Level{streams.LevelFastest, streams.LevelDefault, streams.LevelBetter}
	switch {
	case local:
		return append([]streams.Level{streams.LevelNone}, l...)
	case s2:
		return append([]streams.Level{streams.LevelS2}, l...)
	}
	return l
}

func (c *compression) next() streams.Level {
	l := streams.Level(c.level.Load())
	switch {
	case l == streams.LevelNone:
	case !c.gate.should():
		l = streams.LevelNone
	case c.gate.probing.Load():
		// Whether the data compresses again shows at any level; the
		// fastest costs the least when it still does not.
		l = streams.LevelFastest
	}
	c.used[l].Add(1)
	return l
}

// String is how many chunks went at each level, for the log.
func (c *compression) String() string {
	var b strings.Builder
	for l := range c.used {
		if n := c.used[l].Load(); n > 0 {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s:%d", streams.Level(l), n)
		}
	}
	return b.String()
}

// periodChunks is how many chunks the auto level holds before it is
// weighed again: long enough that one slow ack does not move it.
const periodChunks = 16

// observe adds the publisher's waits for one chunk and, in auto mode, sets
// the level for the chunks read from now on.
func (c *compression) observe(w waits) {
	if !c.auto {
		return
	}
	c.period.add(w)
	if c.period.chunks < periodChunks {
		return
	}
	idleCores := c.idle.sample()
	if !c.warm {
		// The first chunks wait for btrfs send and the workers to start,
		// whatever the level: they tell nothing.
		c.warm, c.period = true, waits{}
		return
	}
	cur := streams.Level(c.level.Load())
	if next := nextLevel(cur, c.ladder, c.period, idleCores, c.pace); next != cur {
		c.level.Store(int32(next))
		if c.log != nil {
			c.log(cur, next, c.period, idleCores, c.pace)
		}
	}
	c.period = waits{}
}

// paceWindow is how much of the targets' history judgePace weighs at a
// time: receivers report about once a second, so it spans several reports.
// At S2 the window is paceWindowS2, about one report: S2 is taken on a
// whole window's judgment and left on the first report that shows a
// target falling behind, because S2 on a full link adds 40 % more bytes
// per chunk for as long as it lasts (bench/README.md: one 2-s episode per
// run, 170-320 chunks, with the whole window).
const (
	paceWindow   = 2 * time.Second
	paceWindowS2 = 900 * time.Millisecond
)

// targets takes the targets' counters the publisher read from the record
// (about once a second) and judges the pace every paceWindow, or every
// paceWindowS2 at S2.
func (c *compression) targets(s paceSample) {
	if !c.paced {
		return
	}
	if len(c.paceFrom.targets) == 0 {
		c.paceFrom = s
		return
	}
	window := paceWindow
	if streams.Level(c.level.Load()) == streams.LevelS2 {
		window = paceWindowS2
	}
	if s.at.Sub(c.paceFrom.at) < window {
		return
	}
	c.pace, c.paceFrom = judgePace(c.paceFrom, s), s
}

// waits is where the publisher spent its time over some chunks: waiting
// for btrfs send to produce them, for the workers to compress them, and
// for the link (the rate limit, the server's acks, room in the window,
// which the slowest target makes).
type waits struct {
	read, compress, link time.Duration
	chunks               int
}

func (w *waits) add(o waits) {
	w.read += o.read
	w.compress += o.compress
	w.link += o.link
	w.chunks += o.chunks
}

// Thresholds of nextLevel. A wait under noiseWait per chunk is no
// bottleneck; a side dominates when it waited twice as long as the other;
// spareCores is the idle CPU a higher level may take.
const (
	noiseWait  = 2 * time.Millisecond
	spareCores = 0.5
)

// nextLevel is the auto level, one of ladder (cheapest first, holding
// cur), after a period of waits w on a machine with idleCores cores idle
// on average, the targets' pace being p.
//
// The sender's own waits see the link only once its window is full: until
// then the stream buffers its lead. So a pace of paceLink (targets waiting
// for chunks while they fall behind) comes first: the link is full, a
// cheaper level only adds bytes to it, and with cores to spare a better one
// takes bytes off. S2 is taken only while every target keeps up
// (paceSender) and left as soon as one falls behind, busy or not: on
// shared or loaded cores a receiver behind a full link can look busy
// (bench/README.md, the grid of 17:04), and S2's bytes cost a full link
// more than its CPU saves. Otherwise waiting for compression means the
// level costs throughput: one step cheaper. Waiting for the link with
// cores to spare means the CPU can buy fewer bytes on the wire: one step
// better. Waiting for the link without spare cores holds the level: the
// wait may be a server or a receiver on this machine short of CPU, which a
// higher level would starve further. Anything else holds too.
func nextLevel(cur streams.Level, ladder []streams.Level, w waits, idleCores float64, p pace) streams.Level {
	i := slices.Index(ladder, cur)
	noise := time.Duration(w.chunks) * noiseWait
	up := ladder[min(i+1, len(ladder)-1)]
	switch {
	case i < 0:
		return cur
	case cur == streams.LevelS2 && (p == paceLink || p == paceTargets):
		return up
	case p == paceLink && idleCores >= spareCores:
		return up
	case p == paceLink:
		return cur
	case w.compress > noise && w.compress > 2*w.link:
		down := ladder[max(i-1, 0)]
		if down == streams.LevelS2 && p != paceSender {
			return cur
		}
		return down
	case w.link > noise && w.link > 2*w.compress && idleCores >= spareCores:
		return up
	}
	return cur
}

// pace is what holds a transfer back, as the targets' counters show it.
type pace int

const (
	paceUnknown pace = iota // no two reports of a target to compare yet
	paceSender              // every target keeps up with the sender
	paceTargets             // a target falls behind, busy with the chunks it has
	paceLink                // a target falls behind, waiting for chunks: the link is full
)

func (p pace) String() string {
	return [...]string{"unknown", "sender", "targets", "link"}[p]
}

// paceSample is the sender's count of chunks stored and its targets'
// counters from the record, at one moment by the sender's clock.
type paceSample struct {
	at      time.Time
	sent    int64
	targets map[string]targetCounters
	// mute counts the targets that report progress but no pace: receivers
	// older than the pace, whose lag nothing shows.
	mute int
}

// targetCounters are one target's counters from its latest report; busy
// and elapsed are by the receiver's clock.
type targetCounters struct {
	applied       int64
	busy, elapsed time.Duration
}

// Thresholds of judgePace: a target falls behind when the sender stored
// more than behindMargin faster than the target applied; it is busy when
// it handled chunks more than busyShare of the time.
const (
	behindMargin = 0.10
	busyShare    = 0.9
)

// judgePace compares the sender's rate between two samples with each
// target's own, measured between the same two of its reports by its own
// clock (so neither clock skew nor the reports' age matters). A target
// that falls behind is either busy all along, always with a chunk at hand
// (the targets are the bottleneck), or waits for chunks now and then
// (more than 1-busyShare of its time): the chunks that would keep it busy
// are stored but not there, so the link is full. All keeping up means the
// sender is the bottleneck. Receivers on a link measured at 200 Mbit/s
// were busy 0.74-0.85 of the time while falling behind, with the cores
// shared with the sender (bench/README.md).
//
// A mute target (one reporting no pace) makes the pace unknown: S2 is taken
// only while every target is seen to keep up, and an old receiver that
// reads S2 could otherwise be sent it while it falls behind.
func judgePace(from, to paceSample) pace {
	dt := to.at.Sub(from.at)
	if dt <= 0 || to.mute > 0 {
		return paceUnknown
	}
	sent := float64(to.sent-from.sent) / dt.Seconds()
	p := paceUnknown
	for name, t := range to.targets {
		f, ok := from.targets[name]
		el := t.elapsed - f.elapsed
		if !ok || el <= 0 {
			continue // a new receiver process, or no report in between
		}
		applied := float64(t.applied-f.applied) / el.Seconds()
		switch {
		case sent <= applied*(1+behindMargin):
			p = max(p, paceSender)
		case float64(t.busy-f.busy) < busyShare*float64(el):
			return paceLink
		default:
			p = paceTargets
		}
	}
	return p
}

// idleMeter measures the machine's idle cores between two samples, from
// the kernel's CPU time counters (idle and iowait). Without them (no
// /proc) it reports no idle core, which never raises the level.
type idleMeter struct {
	fs    procfs.FS
	err   error
	at    time.Time
	total float64 // idle+iowait seconds at the last sample
}

func newIdleMeter() *idleMeter {
	fs, err := procfs.NewDefaultFS()
	m := &idleMeter{fs: fs, err: err}
	m.sample()
	return m
}

// sample is the average number of idle cores since the last sample.
func (m *idleMeter) sample() float64 {
	if m.err != nil {
		return 0
	}
	st, err := m.fs.Stat()
	if err != nil {
		return 0
	}
	now, total := time.Now(), st.CPUTotal.Idle+st.CPUTotal.Iowait
	idle := 0.0
	if el := now.Sub(m.at).Seconds(); !m.at.IsZero() && el > 0 {
		idle = (total - m.total) / el
	}
	m.at, m.total = now, total
	return idle
}

// compressGate skips compression for a while after chunks that did not
// shrink: random data costs zstd time for nothing. Until a chunk shrinks
// again it is probing.
type compressGate struct {
	skip    atomic.Int32
	probing atomic.Bool
}

func (g *compressGate) should() bool {
	if g.skip.Load() > 0 {
		g.skip.Add(-1)
		return false
	}
	return true
}

func (g *compressGate) observe(wire, raw int) {
	shrank := wire*100 < raw*97
	g.probing.Store(!shrank)
	if !shrank {
		g.skip.Store(15) // probe again after 15 chunks
	}
}
