package dataset

import (
	"math"
	"math/rand/v2"
)

// textGen produces prose- and source-like text. Words come from a
// pseudo-word vocabulary with a Zipf-like frequency, which gives the
// redundancy of real text (zstd -3 compresses it about 3-5x) without
// storing any corpus.
type textGen struct {
	rng   *rand.Rand
	words [][]byte
	zipf  [1 << 16]uint16 // uniform 16-bit value -> word index
}

var syllables = []string{"ka", "to", "re", "mi", "na", "lo", "su", "pe", "di", "ra", "ve", "no",
	"shi", "ta", "en", "ar", "co", "de", "li", "ma", "or", "um", "in", "st", "tr", "ex", "al", "on"}

const (
	vocabulary = 4096
	zipfS      = 1.25
)

func newTextGen(seed, stream uint64) *textGen {
	g := &textGen{rng: rand.New(rand.NewPCG(seed, stream))}
	// The vocabulary depends only on the seed, so every file of a data set
	// shares it, as files of one project share their words.
	vr := rand.New(rand.NewPCG(seed, 0x766f636162))
	g.words = make([][]byte, vocabulary)
	for i := range g.words {
		n := 1 + vr.IntN(3)
		if i < 64 {
			n = 1 // frequent words are short, as in natural language
		}
		var w []byte
		for j := 0; j < n; j++ {
			w = append(w, syllables[vr.IntN(len(syllables))]...)
		}
		g.words[i] = w
	}
	var total float64
	for k := 1; k <= vocabulary; k++ {
		total += 1 / math.Pow(float64(k), zipfS)
	}
	cdf, k := 0.0, 0
	for u := range g.zipf {
		target := (float64(u) + 0.5) / float64(len(g.zipf)) * total
		for k < vocabulary-1 && cdf+1/math.Pow(float64(k+1), zipfS) < target {
			cdf += 1 / math.Pow(float64(k+1), zipfS)
			k++
		}
		g.zipf[u] = uint16(k)
	}
	return g
}

func (g *textGen) word() []byte { return g.words[g.zipf[uint16(g.rng.Uint32())]] }

// appendProse appends one paragraph.
func (g *textGen) appendProse(b []byte) []byte {
	sentences := 2 + g.rng.IntN(6)
	for s := 0; s < sentences; s++ {
		n := 5 + g.rng.IntN(15)
		for i := 0; i < n; i++ {
			w := g.word()
			if i == 0 {
				b = append(b, w[0]-'a'+'A')
				b = append(b, w[1:]...)
			} else {
				b = append(b, ' ')
				b = append(b, w...)
			}
			if i < n-1 && g.rng.IntN(12) == 0 {
				b = append(b, ',')
			}
		}
		b = append(b, ". "...)
	}
	return append(b, "\n\n"...)
}

// appendSource appends one function-like block of code: statement
// templates (as repetitive as real code) with identifiers from the
// vocabulary filled in.
func (g *textGen) appendSource(b []byte) []byte {
	b = append(b, "func "...)
	b = g.appendIdent(b)
	b = append(b, '(')
	b = g.appendIdent(b)
	b = append(b, " *Context) error {\n"...)
	lines := 3 + g.rng.IntN(20)
	for l := 0; l < lines; l++ {
		r := g.rng.Uint64()
		depth := 1 + int(r%3)
		for i := 0; i < depth; i++ {
			b = append(b, '\t')
		}
		for _, c := range statements[(r>>8)%uint64(len(statements))] {
			switch c {
			case '$':
				b = g.appendIdent(b)
			case '#':
				b = appendInt(b, g.rng.IntN(4096))
			case '~':
				for i := 0; i < 4+int(r>>40)%8; i++ {
					b = append(b, ' ')
					b = append(b, g.word()...)
				}
			default:
				b = append(b, byte(c))
			}
		}
		b = append(b, '\n')
	}
	return append(b, "\treturn nil\n}\n\n"...)
}

// statements are code line templates: $ is an identifier, # a number and
// ~ a few words of comment.
var statements = []string{
	"if err != nil {",
	"return fmt.Errorf(\"$ $: %w\", err)",
	"}",
	"$ := $($, $)",
	"$.$ = $",
	"for i := 0; i < len($); i++ {",
	"defer $.Close()",
	"//~",
	"if $ == nil {",
	"$, err := $.$(ctx, $)",
	"$ = append($, $[#])",
	"case $:",
	"return $, nil",
	"} else {",
	"var $ []$",
	"$.$($, #)",
}

func (g *textGen) appendIdent(b []byte) []byte {
	b = append(b, g.word()...)
	if g.rng.IntN(2) == 0 {
		w := g.word()
		b = append(b, w[0]-'a'+'A')
		b = append(b, w[1:]...)
	}
	return b
}

func appendInt(b []byte, v int) []byte {
	var d [8]byte
	i := len(d)
	for {
		i--
		d[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

// fill appends text of exactly n bytes to b: source-like when source is
// set, prose otherwise.
func (g *textGen) fill(b []byte, n int, source bool) []byte {
	end := len(b) + n
	for len(b) < end {
		if source {
			b = g.appendSource(b)
		} else {
			b = g.appendProse(b)
		}
	}
	return b[:end]
}
