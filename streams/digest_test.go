package streams_test

import (
	"strings"
	"testing"

	"github.com/snapjet/snapjet/streams"
)

// TestDigest: the digest changes with any chunk's index, length, checksum
// or order, and a state saved midway (a receiver's checkpoint) continues to
// the same digest.
func TestDigest(t *testing.T) {
	type chunk struct {
		idx int64
		n   int
		sum uint64
	}
	of := func(cs ...chunk) string {
		d := streams.NewDigest()
		for _, c := range cs {
			d.Add(c.idx, c.n, c.sum)
		}
		return d.String()
	}
	a, b := chunk{0, 1 << 20, 0xaaaa}, chunk{1, 1 << 20, 0xbbbb}
	want := of(a, b)
	if !strings.HasPrefix(want, streams.DigestPrefix) {
		t.Errorf("digest %q does not name its scheme", want)
	}
	for name, other := range map[string]string{
		"reordered":      of(b, a),
		"another index":  of(a, chunk{2, 1 << 20, 0xbbbb}),
		"another length": of(a, chunk{1, 1<<20 - 1, 0xbbbb}),
		"another sum":    of(a, chunk{1, 1 << 20, 0xbbbc}),
		"a chunk short":  of(a),
		"a chunk more":   of(a, b, chunk{2, 5, 1}),
	} {
		if other == want {
			t.Errorf("%s: same digest", name)
		}
	}

	d := streams.NewDigest()
	d.Add(a.idx, a.n, a.sum)
	state, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	resumed, err := streams.UnmarshalDigest(state)
	if err != nil {
		t.Fatal(err)
	}
	resumed.Add(b.idx, b.n, b.sum)
	if got := resumed.String(); got != want {
		t.Errorf("resumed digest %s, want %s", got, want)
	}
	if _, err := streams.UnmarshalDigest([]byte("not a state")); err == nil {
		t.Error("a corrupt state was restored")
	}
}
