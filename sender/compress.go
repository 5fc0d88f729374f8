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
// level the publisher's waits call for. Workers call next; only the
// publisher calls observe.
type compression struct {
	gate   compressGate
	auto   bool
	ladder []streams.Level // the levels auto may take, cheapest first
	probe  streams.Level   // the level that tries whether data shrinks again
	level  atomic.Int32    // a streams.Level

	period waits
	warm   bool // the first period is over
	pace   pace
	trial  trial
	seen   int64 // chunks observed
	local  bool
	idle   *idleMeter
	log    func(from, to streams.Level, w waits, idleCores float64)
	used   [streams.LevelBetter + 1]atomic.Int64 // chunks per level
}

// newCompression starts in mode: streams.CompressAuto, or a level's name.
// s2 says every target reads S2 (the record's Decodes): without it S2 is
// never used, and a fixed s2 mode compresses at fastest instead. With
// local (the stream stays in memory beside its targets: no link, no disk
// before them) auto starts at fastest and may step down to none.
func newCompression(mode string, local, s2 bool, log func(from, to streams.Level, w waits, idleCores float64)) (*compression, error) {
	start, auto, err := streams.ParseCompression(mode)
	if err != nil {
		return nil, err
	}
	c := &compression{log: log, auto: auto, local: local, ladder: ladder(local, s2), probe: streams.LevelFastest}
	if s2 {
		c.probe = streams.LevelS2
	} else if start == streams.LevelS2 {
		start = streams.LevelFastest
	}
	if auto {
		c.idle = newIdleMeter()
		if local {
			start = streams.LevelFastest
		}
	}
	c.level.Store(int32(start))
	return c, nil
}

// ladder is the levels auto moves between, cheapest first. A stream that
// crosses a link keeps some compression: its bytes cost the link, which
// the sender cannot see until the window is full. S2, when the targets
// read it, is the cheapest compression.
func ladder(local, s2 bool) []streams.Level {
	var l []streams.Level
	if local {
		l = append(l, streams.LevelNone)
	}
	if s2 {
		l = append(l, streams.LevelS2)
	}
	return append(l, streams.LevelFastest, streams.LevelDefault, streams.LevelBetter)
}

func (c *compression) next() streams.Level {
	l := streams.Level(c.level.Load())
	switch {
	case l == streams.LevelNone:
	case !c.gate.should():
		l = streams.LevelNone
	case c.gate.probing.Load():
		// Whether the data compresses again shows at any level; the
		// cheapest costs the least when it still does not.
		l = c.probe
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
	c.seen++
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
	next := nextLevel(cur, c.ladder, c.period, idleCores, c.pace.behind)
	switch {
	case c.trial.on:
		// A cheaper level on probation holds until the targets judge it.
	case next < cur && !c.local:
		c.trial = trial{on: true, from: cur, at: c.seen + c.pace.offset, before: c.pace.rate}
		fallthrough
	case next != cur:
		c.level.Store(int32(next))
		if c.log != nil {
			c.log(cur, next, c.period, idleCores)
		}
	}
	c.period = waits{}
}

// trial is a step to a cheaper level on probation. Across a link the
// sender cannot tell a link that is full from targets short of CPU: both
// show as targets that keep pace with it. A cheaper level helps the
// second and costs the first bytes on the link, so it stays only if the
// fastest target applies at least trialGain faster once the chunks at the
// new level reach it; otherwise the level goes back, and no cheaper one
// is tried again in this send.
type trial struct {
	on     bool
	from   streams.Level
	at     int64   // the first chunk at the new level
	before float64 // the fastest target's chunks per second before
}

// trialGain is how much faster a cheaper level must make the targets.
const trialGain = 1.05

// judge ends the trial on a stretch of the targets' pace at rate chunks
// per second, which began with the fastest target at chunk applied.
func (c *compression) judge(applied int64, rate float64) {
	t := c.trial
	if !t.on || applied < t.at {
		return // the targets are still on chunks of the level before
	}
	c.trial.on = false
	if rate >= trialGain*t.before {
		return
	}
	cur := streams.Level(c.level.Load())
	c.ladder = c.ladder[slices.Index(c.ladder, t.from):]
	c.level.Store(int32(t.from))
	if c.log != nil {
		c.log(cur, t.from, waits{}, 0)
	}
}

// paceEvery is the shortest stretch over which the sender's pace is
// weighed against its targets': their counters come once a second.
const paceEvery = 2 * time.Second

// pace tells whether the targets fall behind the sender. A stream that
// crosses a link holds up to its window (1 GiB by default): a sender
// that races ahead of a slow link never waits for it, so its waits alone
// would take the link's bottleneck for its own and pick cheaper levels,
// whose extra bytes the link then carries. Only the publisher uses it.
type pace struct {
	at            time.Time
	sent, applied int64
	// behind: over the last stretch the sender stored more than 10 %
	// more chunks than the fastest target applied. True until measured:
	// no target has shown yet that it keeps up.
	behind bool
	rate   float64 // the fastest target's chunks applied per second
	ready  bool    // at, sent and applied hold a first sample
	offset int64   // sent less the chunks observe saw
}

// targets takes the sender's chunks stored and the fastest target's
// chunks applied at now. A stream in memory beside its targets (local)
// is never ahead by more than its small window: its waits tell.
func (c *compression) targets(now time.Time, sent, applied int64) {
	p := &c.pace
	p.offset = sent - c.seen
	switch {
	case !c.auto || c.local:
		return
	case !p.ready:
		p.at, p.sent, p.applied, p.ready, p.behind = now, sent, applied, true, true
		return
	case now.Sub(p.at) < paceEvery:
		return
	}
	p.behind = 10*(sent-p.sent) > 11*(applied-p.applied)
	p.rate = float64(applied-p.applied) / now.Sub(p.at).Seconds()
	c.judge(p.applied, p.rate)
	p.at, p.sent, p.applied = now, sent, applied
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
// on average, behind telling whether the targets fall behind the sender.
// Waiting for compression means the level costs throughput: one step
// cheaper, unless the targets fall behind anyway (the stream holds what
// the sender is ahead by, so its wait costs nothing and a cheaper level
// only adds bytes for the link). Waiting for the link with cores to spare means the CPU
// can buy fewer bytes on the wire: one step better. Waiting for the link
// without spare cores holds the level: the wait may be a server or a
// receiver on this machine short of CPU, which a higher level would starve
// further. Anything else holds too.
func nextLevel(cur streams.Level, ladder []streams.Level, w waits, idleCores float64, behind bool) streams.Level {
	i := slices.Index(ladder, cur)
	noise := time.Duration(w.chunks) * noiseWait
	switch {
	case i < 0:
		return cur
	case w.compress > noise && w.compress > 2*w.link:
		if behind {
			return cur
		}
		return ladder[max(i-1, 0)]
	case w.link > noise && w.link > 2*w.compress && idleCores >= spareCores:
		return ladder[min(i+1, len(ladder)-1)]
	}
	return cur
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
