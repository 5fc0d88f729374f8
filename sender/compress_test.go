package sender

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/streams"
)

func TestCompressGate(t *testing.T) {
	tests := []struct {
		name      string
		wire, raw int
		skips     int // chunks sent uncompressed after this observation
	}{
		{"text shrinks a lot", 250, 1000, 0},
		{"just worth it", 969, 1000, 0},
		{"3% saving is not worth it", 970, 1000, 15},
		{"random data", 1000, 1000, 15},
		{"grew", 1010, 1000, 15},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g compressGate
			if !g.should() {
				t.Fatal("a new gate skips compression")
			}
			g.observe(tc.wire, tc.raw)
			skipped := 0
			for i := 0; i < 40 && !g.should(); i++ {
				skipped++
			}
			if skipped != tc.skips {
				t.Errorf("skipped %d chunks, want %d", skipped, tc.skips)
			}
			// After the pause it probes again and keeps compressing.
			for i := 0; i < 5; i++ {
				if !g.should() {
					t.Fatalf("chunk %d after the pause skipped", i)
				}
			}
		})
	}
}

// The probe after a pause that is incompressible again pauses again.
func TestCompressGateProbeCycle(t *testing.T) {
	var g compressGate
	g.observe(1000, 1000)
	for i := 0; i < 15; i++ {
		if g.should() {
			t.Fatalf("chunk %d of the pause compressed", i)
		}
	}
	if !g.should() {
		t.Fatal("no probe after the pause")
	}
	g.observe(1000, 1000)
	skipped := 0
	for i := 0; i < 40 && !g.should(); i++ {
		skipped++
	}
	if skipped != 15 {
		t.Errorf("after a second bad probe skipped %d, want 15", skipped)
	}
}

// levelCase is a row of TestNextLevel.
type levelCase struct {
	name      string
	cur       streams.Level
	w         waits // over 16 chunks: the noise floor is 32 ms
	idleCores float64
	want      streams.Level
	pace      pace // paceUnknown where not given
}

func TestNextLevel(t *testing.T) {
	ms := time.Millisecond
	const (
		none    = streams.LevelNone
		fastest = streams.LevelFastest
		def     = streams.LevelDefault
		better  = streams.LevelBetter
		s2      = streams.LevelS2
	)
	tests := []levelCase{
		{"waiting for compression: faster", def, waits{compress: 400 * ms, link: 10 * ms}, 1.5, fastest, paceUnknown},
		{"waiting for compression at the fastest: stays", fastest, waits{compress: 400 * ms}, 0, fastest, paceUnknown},
		{"waiting for the link with cores to spare: better", def, waits{link: 800 * ms, compress: 20 * ms}, 1.2, better, paceUnknown},
		{"waiting for the link at the best: stays", better, waits{link: 800 * ms}, 1.9, better, paceUnknown},
		{"waiting for the link without spare cores: holds (the wait may be a starved server or receiver)", def, waits{link: 800 * ms}, 0.3, def, paceUnknown},
		{"waiting for the link, no core idle: holds", better, waits{link: 800 * ms}, 0, better, paceUnknown},
		{"waiting for btrfs send: holds", def, waits{read: 2000 * ms, compress: 5 * ms, link: 5 * ms}, 1.8, def, paceUnknown},
		{"waits under the noise floor: holds", def, waits{compress: 30 * ms}, 1.8, def, paceUnknown},
		{"both waited alike: holds", def, waits{compress: 300 * ms, link: 400 * ms}, 1.8, def, paceUnknown},
		{"compression is never switched off by the waits", fastest, waits{compress: 900 * ms}, 0, fastest, paceUnknown},
		{"a level off the ladder holds (none, a fixed level, never auto)", none, waits{compress: 900 * ms}, 2, none, paceUnknown},
		{"the link full with cores to spare: better, though compression was waited for", def, waits{compress: 400 * ms}, 1.5, better, paceLink},
		{"the link full without spare cores: holds, never cheaper", def, waits{compress: 400 * ms}, 0.2, def, paceLink},
		{"targets keeping up, no S2 to read: fastest is the floor", fastest, waits{compress: 400 * ms}, 0, fastest, paceSender},
	}
	// Where every target reads S2 it is the floor, taken only once the
	// targets were seen to keep up, and left when one falls behind.
	withS2 := []levelCase{
		{"waiting for compression, targets keeping up: s2", fastest, waits{compress: 400 * ms}, 0, s2, paceSender},
		{"waiting for compression, a target behind and busy: holds", fastest, waits{compress: 400 * ms}, 0, fastest, paceTargets},
		{"at s2, a target behind and busy: back to fastest", s2, waits{compress: 400 * ms}, 0, fastest, paceTargets},
		{"waiting for compression, the targets' pace not known yet: holds", fastest, waits{compress: 400 * ms}, 0, fastest, paceUnknown},
		{"waiting for compression, the link full: holds", fastest, waits{compress: 400 * ms}, 0, fastest, paceLink},
		{"at s2, the link full, no core idle: back to fastest", s2, waits{compress: 400 * ms}, 0, fastest, paceLink},
		{"at s2, targets keeping up: stays", s2, waits{compress: 400 * ms}, 0, s2, paceSender},
		{"at s2, waiting for the link with cores to spare: fastest", s2, waits{link: 800 * ms}, 1.5, fastest, paceSender},
		{"above the floor nothing changes: default to fastest", def, waits{compress: 400 * ms}, 0, fastest, paceUnknown},
	}
	// A local stream's floor is none.
	local := []levelCase{
		{"waiting for compression at the fastest switches it off", fastest, waits{compress: 400 * ms, link: 10 * ms}, 0, none, paceUnknown},
		{"without compression, waiting for the targets, cores busy: holds", none, waits{link: 800 * ms}, 0.2, none, paceUnknown},
		{"without compression, waiting for the targets, cores idle: fastest", none, waits{link: 800 * ms}, 1.5, fastest, paceUnknown},
	}
	for _, lc := range []struct {
		name   string
		ladder []streams.Level
		cases  []levelCase
	}{
		{"link", ladder(false, false), tests},
		{"link, targets read s2", ladder(false, true), withS2},
		{"local", ladder(true, false), local},
		{"local, targets read s2", ladder(true, true), local},
	} {
		for _, tc := range lc.cases {
			t.Run(lc.name+"/"+tc.name, func(t *testing.T) {
				tc.w.chunks = periodChunks
				if got := nextLevel(tc.cur, lc.ladder, tc.w, tc.idleCores, tc.pace); got != tc.want {
					t.Errorf("nextLevel(%s, %v, %+v, %.2f, %s) = %s, want %s", tc.cur, lc.ladder, tc.w, tc.idleCores, tc.pace, got, tc.want)
				}
			})
		}
	}
}

// A fixed level is used for every chunk and never moves; auto starts at
// the default, ignores the first period and moves only after a whole one;
// a bad mode is refused.
func TestCompressionModes(t *testing.T) {
	for _, local := range []bool{false, true} {
		fixed, err := newCompression("better", local, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		waitForCompression(fixed, 3*periodChunks)
		if got := fixed.next(); got != streams.LevelBetter {
			t.Errorf("fixed level better (local stream %v) gave %s", local, got)
		}
	}

	var moves []string
	c, err := newCompression(streams.CompressAuto, false, false, func(from, to streams.Level, _ waits, _ float64, _ pace) {
		moves = append(moves, from.String()+">"+to.String())
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.next(); got != streams.LevelDefault {
		t.Errorf("auto starts at %s, want default", got)
	}
	waitForCompression(c, periodChunks)
	if got := c.next(); got != streams.LevelDefault {
		t.Errorf("auto moved to %s on the first period (the start)", got)
	}
	waitForCompression(c, periodChunks-1)
	if got := c.next(); got != streams.LevelDefault {
		t.Errorf("auto moved to %s before a whole period", got)
	}
	c.observe(waits{compress: time.Second, chunks: 1})
	if got := c.next(); got != streams.LevelFastest {
		t.Errorf("auto after a period of compression waits: %s, want fastest", got)
	}
	if len(moves) != 1 || moves[0] != "default>fastest" {
		t.Errorf("logged moves %v, want [default>fastest]", moves)
	}
	if got := c.String(); got != "fastest:1 default:3" {
		t.Errorf("chunks per level %q", got)
	}

	if _, err := newCompression("max", false, false, nil); err == nil || !strings.Contains(err.Error(), "auto, none, s2, fastest, default or better") {
		t.Errorf("mode max: %v, want a refusal naming the levels", err)
	}
}

// The idle meter reads this machine's counters: between two samples no
// more cores are idle than there are.
func TestIdleMeter(t *testing.T) {
	m := newIdleMeter()
	if m.err != nil {
		t.Fatalf("no /proc/stat: %v", m.err)
	}
	time.Sleep(100 * time.Millisecond) // the interval measured, not a synchronisation
	if idle, n := m.sample(), runtime.NumCPU(); idle < 0 || idle > float64(n)+0.5 {
		t.Errorf("idle cores %.2f on a machine of %d", idle, n)
	}
}

// A local stream's auto starts at fastest and switches compression off
// after a period of waiting for it (elsewhere auto goes below fastest only
// to S2, where every target reads it: TestNextLevel).
func TestLocalStreamCompressionMaySwitchOff(t *testing.T) {
	c, err := newCompression(streams.CompressAuto, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.next(); got != streams.LevelFastest {
		t.Errorf("auto on a local stream starts at %s, want fastest", got)
	}
	waitForCompression(c, 3*periodChunks)
	if got := c.next(); got != streams.LevelNone {
		t.Errorf("auto on a local stream after periods of compression waits: %s, want none", got)
	}
}

// After incompressible chunks the probe goes at the fastest level, whatever
// auto chose; once a chunk shrinks again the chosen level is back.
func TestProbeAtTheFastestLevel(t *testing.T) {
	c, err := newCompression("better", false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.next(); got != streams.LevelBetter {
		t.Fatalf("first chunk at %s, want better", got)
	}
	c.gate.observe(1000, 1000)
	for i := 0; i < 15; i++ {
		if got := c.next(); got != streams.LevelNone {
			t.Fatalf("chunk %d of the pause at %s, want none", i, got)
		}
	}
	if got := c.next(); got != streams.LevelFastest {
		t.Errorf("probe at %s, want fastest", got)
	}
	c.gate.observe(250, 1000)
	if got := c.next(); got != streams.LevelBetter {
		t.Errorf("after a chunk that shrank: %s, want better", got)
	}
}

// waitForCompression tells c that the publisher waited a second for the
// compressing workers on each of n chunks.
func waitForCompression(c *compression, n int) {
	for i := 0; i < n; i++ {
		c.observe(waits{compress: time.Second, chunks: 1})
	}
}

// S2 is used only where every target reads it: a fixed s2 mode for a
// record without it compresses at fastest. Auto never picks it before the
// targets' pace is known, and the probe after incompressible chunks goes at
// fastest.
func TestS2OnlyWhereEveryTargetReadsIt(t *testing.T) {
	for _, tc := range []struct {
		mode  string
		s2    bool
		first streams.Level
	}{
		{"s2", false, streams.LevelFastest},
		{"s2", true, streams.LevelS2},
		{"better", true, streams.LevelBetter},
		{streams.CompressAuto, true, streams.LevelDefault},
	} {
		c, err := newCompression(tc.mode, false, tc.s2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.next(); got != tc.first {
			t.Errorf("mode %s, targets read s2 %v: first chunk at %s, want %s", tc.mode, tc.s2, got, tc.first)
		}
		if refused := tc.mode == "s2" && !tc.s2; c.s2Refused != refused {
			t.Errorf("mode %s, targets read s2 %v: s2 refused %v, want %v (the sender warns on it)", tc.mode, tc.s2, c.s2Refused, refused)
		}
		c.gate.observe(1000, 1000)
		for i := 0; i < 15; i++ {
			c.next()
		}
		if got := c.next(); got != streams.LevelFastest {
			t.Errorf("mode %s, targets read s2 %v: probe at %s, want fastest", tc.mode, tc.s2, got)
		}
	}
	for _, local := range []bool{false, true} {
		c, err := newCompression(streams.CompressAuto, local, true, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 10; i++ {
			waitForCompression(c, periodChunks)
			if got := c.next(); got == streams.LevelS2 {
				t.Fatalf("auto (local stream %v) stepped to s2 before the targets' pace was known", local)
			}
		}
	}
}

// Auto on a stream across a link reaches S2 once the records show the
// targets keeping up with a sender that waits for compression, and leaves
// it when they show a full link; the pace is judged over paceWindow.
func TestAutoTakesS2OnlyWhileTheLinkHasRoom(t *testing.T) {
	c, err := newCompression(streams.CompressAuto, false, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	// sample is the record at n seconds: the sender stored sent chunks a
	// second, the target applied applied of them, busy busy of its time.
	sample := func(n int, sent, applied int64, busy float64) paceSample {
		sec := time.Duration(n) * time.Second
		return paceSample{at: at.Add(sec), sent: sent * int64(n), targets: map[string]targetCounters{
			"a": {applied: applied * int64(n), busy: time.Duration(busy * float64(sec)), elapsed: sec}}}
	}
	level := func() streams.Level {
		waitForCompression(c, 3*periodChunks)
		return c.next()
	}
	c.targets(sample(1, 100, 100, 0.3))
	c.targets(sample(2, 100, 100, 0.3))
	if got := level(); got != streams.LevelFastest {
		t.Fatalf("before a whole pace window: %s, want fastest", got)
	}
	c.targets(sample(4, 100, 100, 0.3))
	if got := level(); got != streams.LevelS2 {
		t.Fatalf("targets keeping up with a sender short of CPU: %s, want s2", got)
	}
	c.targets(sample(7, 100, 100, 0.3))
	if got := level(); got != streams.LevelS2 {
		t.Fatalf("still keeping up: %s, want s2", got)
	}
	// From 7 s on the sender stores 100 chunks a second, the target applies
	// 60 while waiting most of the time: the link is full. At S2 the first
	// report that shows it is judged, 1 s on, not a whole window later.
	full := paceSample{at: at.Add(8 * time.Second), sent: 800, targets: map[string]targetCounters{
		"a": {applied: 700 + 60, busy: 2100*time.Millisecond + 300*time.Millisecond, elapsed: 8 * time.Second}}}
	c.targets(full)
	if c.pace != paceLink {
		t.Fatalf("pace %s one report after the link filled at s2, want link", c.pace)
	}
	if got := level(); got != streams.LevelFastest {
		t.Errorf("the link full: %s, want fastest", got)
	}
	// Off S2 the window is whole again: one report of keeping up does not
	// take S2 back.
	c.targets(paceSample{at: at.Add(9 * time.Second), sent: 900, targets: map[string]targetCounters{
		"a": {applied: 860, busy: 2700 * time.Millisecond, elapsed: 9 * time.Second}}})
	if c.pace != paceLink {
		t.Errorf("pace %s after one report off s2, want it held (link) until a whole window", c.pace)
	}

	// A local stream crosses no link: its pace is never judged.
	local, err := newCompression(streams.CompressAuto, true, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	local.targets(sample(7, 100, 100, 0.3))
	local.targets(full)
	if local.pace != paceUnknown {
		t.Errorf("a local stream's pace judged %s", local.pace)
	}
}

func TestJudgePace(t *testing.T) {
	at := time.Now()
	sec := time.Second
	// from: the sender had stored 100 chunks, target a applied 90 after
	// 10 s of which it was busy 4.
	from := paceSample{at: at, sent: 100, targets: map[string]targetCounters{"a": {applied: 90, busy: 4 * sec, elapsed: 10 * sec}}}
	to := func(sent int64, t map[string]targetCounters) paceSample {
		return paceSample{at: at.Add(3 * sec), sent: sent, targets: t}
	}
	tests := []struct {
		name string
		to   paceSample
		want pace
	}{
		{"keeping up, by the target's own clock", to(400, map[string]targetCounters{"a": {applied: 390, busy: 5 * sec, elapsed: 13 * sec}}), paceSender},
		{"keeping up within the margin", to(400, map[string]targetCounters{"a": {applied: 365, busy: 5 * sec, elapsed: 13 * sec}}), paceSender},
		{"the report 2 s late: its own 1 s counts", to(400, map[string]targetCounters{"a": {applied: 190, busy: 4500 * time.Millisecond, elapsed: 11 * sec}}), paceSender},
		{"falling behind, waiting for chunks: the link", to(400, map[string]targetCounters{"a": {applied: 240, busy: 5 * sec, elapsed: 13 * sec}}), paceLink},
		{"falling behind, busy all along: the targets", to(400, map[string]targetCounters{"a": {applied: 240, busy: 6900 * time.Millisecond, elapsed: 13 * sec}}), paceTargets},
		{"falling behind, waiting a fifth of the time: the link", to(400, map[string]targetCounters{"a": {applied: 240, busy: 6400 * time.Millisecond, elapsed: 13 * sec}}), paceLink},
		{"no report since: unknown", to(400, map[string]targetCounters{"a": {applied: 90, busy: 4 * sec, elapsed: 10 * sec}}), paceUnknown},
		{"a new receiver process (its clock from zero): unknown", to(400, map[string]targetCounters{"a": {applied: 300, busy: sec, elapsed: 2 * sec}}), paceUnknown},
		{"the target gone: unknown", to(400, map[string]targetCounters{}), paceUnknown},
		{"the sender stored nothing (its window full): keeping up", to(100, map[string]targetCounters{"a": {applied: 100, busy: 5 * sec, elapsed: 13 * sec}}), paceSender},
		{"keeping up, next to a receiver that reports no pace: unknown", paceSample{at: at.Add(3 * sec), sent: 400, mute: 1,
			targets: map[string]targetCounters{"a": {applied: 390, busy: 5 * sec, elapsed: 13 * sec}}}, paceUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := judgePace(from, tc.to); got != tc.want {
				t.Errorf("judgePace = %s, want %s", got, tc.want)
			}
		})
	}
	// Of two targets, one waiting on a full link outweighs one keeping up.
	two := from
	two.targets = map[string]targetCounters{"a": from.targets["a"], "b": {applied: 50, busy: sec, elapsed: 10 * sec}}
	got := judgePace(two, to(400, map[string]targetCounters{
		"a": {applied: 390, busy: 5 * sec, elapsed: 13 * sec},
		"b": {applied: 150, busy: 1500 * time.Millisecond, elapsed: 13 * sec}}))
	if got != paceLink {
		t.Errorf("a keeping up, b behind and waiting: %s, want link", got)
	}
}
