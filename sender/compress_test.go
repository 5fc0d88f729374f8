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
}

func TestNextLevel(t *testing.T) {
	ms := time.Millisecond
	const (
		none    = streams.LevelNone
		s2      = streams.LevelS2
		fastest = streams.LevelFastest
		def     = streams.LevelDefault
		better  = streams.LevelBetter
	)
	tests := []levelCase{
		{"waiting for compression: faster", def, waits{compress: 400 * ms, link: 10 * ms}, 1.5, fastest},
		{"waiting for compression at the fastest: stays", fastest, waits{compress: 400 * ms}, 0, fastest},
		{"waiting for the link with cores to spare: better", def, waits{link: 800 * ms, compress: 20 * ms}, 1.2, better},
		{"waiting for the link at the best: stays", better, waits{link: 800 * ms}, 1.9, better},
		{"waiting for the link without spare cores: holds (the wait may be a starved server or receiver)", def, waits{link: 800 * ms}, 0.3, def},
		{"waiting for the link, no core idle: holds", better, waits{link: 800 * ms}, 0, better},
		{"waiting for btrfs send: holds", def, waits{read: 2000 * ms, compress: 5 * ms, link: 5 * ms}, 1.8, def},
		{"waits under the noise floor: holds", def, waits{compress: 30 * ms}, 1.8, def},
		{"both waited alike: holds", def, waits{compress: 300 * ms, link: 400 * ms}, 1.8, def},
		{"compression is never switched off by the waits", fastest, waits{compress: 900 * ms}, 0, fastest},
		{"a level off the ladder holds (none, a fixed level, never auto)", none, waits{compress: 900 * ms}, 2, none},
	}
	// Targets that read S2: it is the step below fastest, and the floor.
	withS2 := []levelCase{
		{"waiting for compression at the fastest: s2", fastest, waits{compress: 400 * ms}, 0, s2},
		{"waiting for compression at s2: stays", s2, waits{compress: 900 * ms}, 0, s2},
		{"at s2, waiting for the link with cores to spare: fastest", s2, waits{link: 800 * ms}, 1.2, fastest},
		{"at s2, waiting for the link, cores busy: holds", s2, waits{link: 800 * ms}, 0.2, s2},
	}
	// A local stream's floor is none.
	local := []levelCase{
		{"waiting for compression at the fastest switches it off", fastest, waits{compress: 400 * ms, link: 10 * ms}, 0, none},
		{"without compression, waiting for the targets, cores busy: holds", none, waits{link: 800 * ms}, 0.2, none},
		{"without compression, waiting for the targets, cores idle: fastest", none, waits{link: 800 * ms}, 1.5, fastest},
	}
	localS2 := []levelCase{
		{"waiting for compression at the fastest: s2", fastest, waits{compress: 400 * ms}, 0, s2},
		{"waiting for compression at s2 switches it off", s2, waits{compress: 400 * ms}, 0, none},
		{"without compression, waiting for the targets, cores idle: s2", none, waits{link: 800 * ms}, 1.5, s2},
	}
	for _, lc := range []struct {
		name   string
		ladder []streams.Level
		cases  []levelCase
	}{
		{"link", ladder(false, false), tests},
		{"link, s2", ladder(false, true), withS2},
		{"local", ladder(true, false), local},
		{"local, s2", ladder(true, true), localS2},
	} {
		for _, tc := range lc.cases {
			t.Run(lc.name+"/"+tc.name, func(t *testing.T) {
				tc.w.chunks = periodChunks
				if got := nextLevel(tc.cur, lc.ladder, tc.w, tc.idleCores, false); got != tc.want {
					t.Errorf("nextLevel(%s, %v, %+v, %.2f) = %s, want %s", tc.cur, lc.ladder, tc.w, tc.idleCores, got, tc.want)
				}
			})
		}
	}
}

// While the targets fall behind the sender, waiting for compression costs
// nothing: the level holds. Everything else is as when they keep up.
func TestNextLevelWhileTheTargetsFallBehind(t *testing.T) {
	ms := time.Millisecond
	l := ladder(false, true)
	for _, tc := range []levelCase{
		{"waiting for compression: holds", streams.LevelDefault, waits{compress: 400 * ms}, 0, streams.LevelDefault},
		{"waiting for compression at the fastest: holds (no s2)", streams.LevelFastest, waits{compress: 900 * ms}, 0, streams.LevelFastest},
		{"waiting for the link with cores to spare: better", streams.LevelFastest, waits{link: 800 * ms}, 1.2, streams.LevelDefault},
		{"waiting for the link without spare cores: holds", streams.LevelS2, waits{link: 800 * ms}, 0.1, streams.LevelS2},
	} {
		tc.w.chunks = periodChunks
		if got := nextLevel(tc.cur, l, tc.w, tc.idleCores, true); got != tc.want {
			t.Errorf("%s: nextLevel(%s, %+v, %.2f, behind) = %s, want %s", tc.name, tc.cur, tc.w, tc.idleCores, got, tc.want)
		}
	}
}

// The pace is weighed over two seconds or more: stored chunks against the
// fastest target's applied ones. Until a first stretch is measured the
// targets count as behind; a local stream never does.
func TestPace(t *testing.T) {
	c, err := newCompression(streams.CompressAuto, false, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	steps := []struct {
		after         time.Duration
		sent, applied int64
		behind        bool
	}{
		{0, 10, 0, true},                      // first sample: not measured yet
		{1 * time.Second, 200, 190, true},     // too short a stretch to judge
		{2 * time.Second, 200, 190, false},    // 190 sent, 190 applied
		{4 * time.Second, 400, 300, true},     // 200 sent, 110 applied: behind
		{6 * time.Second, 600, 485, false},    // 200 sent, 185 applied: within 10 %
		{8 * time.Second, 600, 600, false},    // the sender waited: they caught up
		{10 * time.Second, 900, 600, true},    // a target stopped applying
		{12 * time.Second, 1000, 1000, false}, // and caught up
	}
	for i, s := range steps {
		c.targets(at.Add(s.after), s.sent, s.applied)
		if c.pace.behind != s.behind {
			t.Errorf("step %d (%v: %d sent, %d applied): behind %v, want %v", i, s.after, s.sent, s.applied, c.pace.behind, s.behind)
		}
	}
	local, err := newCompression(streams.CompressAuto, true, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	local.targets(at, 10, 0)
	local.targets(at.Add(3*time.Second), 500, 0)
	if local.pace.behind {
		t.Error("a local stream's targets counted as behind")
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
	c, err := newCompression(streams.CompressAuto, false, false, func(from, to streams.Level, _ waits, _ float64) { moves = append(moves, from.String()+">"+to.String()) })
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
// after a period of waiting for it (elsewhere auto never goes below
// fastest: TestNextLevel).
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

// S2 is used only when every target reads it: a fixed s2 mode for a
// record without it compresses at fastest, and with it the probe after
// incompressible chunks goes at S2, the cheapest.
func TestS2OnlyWhenTheTargetsReadIt(t *testing.T) {
	for _, tc := range []struct {
		mode           string
		s2             bool
		first, probing streams.Level
	}{
		{"s2", false, streams.LevelFastest, streams.LevelFastest},
		{"s2", true, streams.LevelS2, streams.LevelS2},
		{"better", true, streams.LevelBetter, streams.LevelS2},
		{streams.CompressAuto, false, streams.LevelDefault, streams.LevelFastest},
	} {
		c, err := newCompression(tc.mode, false, tc.s2, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.next(); got != tc.first {
			t.Errorf("mode %s, targets read s2 %v: first chunk at %s, want %s", tc.mode, tc.s2, got, tc.first)
		}
		c.gate.observe(1000, 1000)
		for i := 0; i < 15; i++ {
			c.next()
		}
		if got := c.next(); got != tc.probing {
			t.Errorf("mode %s, targets read s2 %v: probe at %s, want %s", tc.mode, tc.s2, got, tc.probing)
		}
	}
	// Auto never reaches S2 when the targets do not read it.
	c, err := newCompression(streams.CompressAuto, true, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		waitForCompression(c, periodChunks)
		if got := c.next(); got == streams.LevelS2 {
			t.Fatalf("auto stepped to s2 for targets that do not read it")
		}
	}
}

// Across a link a cheaper level is on probation: it stays only if the
// fastest target applies faster once it reaches the chunks at that level;
// otherwise the level goes back and no cheaper one is tried again.
func TestCheaperLevelOnProbation(t *testing.T) {
	at := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		after float64 // the fastest target's chunks per second at fastest
		want  streams.Level
	}{
		{"the link is full: back to default for good", 90, streams.LevelDefault},
		{"the targets were short of CPU: fastest stays, s2 may follow", 120, streams.LevelS2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var moves []string
			c, err := newCompression(streams.CompressAuto, false, true, func(from, to streams.Level, _ waits, _ float64) {
				moves = append(moves, from.String()+">"+to.String())
			})
			if err != nil {
				t.Fatal(err)
			}
			c.targets(at, 0, 0)
			c.targets(at.Add(2*time.Second), 200, 190) // the targets keep pace: 95 chunks/s
			waitForCompression(c, 2*periodChunks)      // the first period warms up
			if got := c.next(); got != streams.LevelFastest {
				t.Fatalf("after waiting for compression: %s, want fastest", got)
			}
			waitForCompression(c, 3*periodChunks)
			if got := c.next(); got != streams.LevelFastest {
				t.Fatalf("on probation: %s, want fastest held", got)
			}
			// This stretch began on chunks of the level before: no verdict.
			c.targets(at.Add(4*time.Second), 400, 240)
			if !c.trial.on {
				t.Fatal("judged on chunks compressed before the trial")
			}
			c.targets(at.Add(6*time.Second), 600, 240+int64(2*tc.after))
			if c.trial.on {
				t.Fatal("no verdict on a stretch of chunks at the new level")
			}
			waitForCompression(c, 3*periodChunks)
			c.targets(at.Add(8*time.Second), 800, 800) // keeping pace again
			waitForCompression(c, 3*periodChunks)
			if got := c.next(); got != tc.want {
				t.Errorf("level %s, want %s (moves %v)", got, tc.want, moves)
			}
		})
	}
}
