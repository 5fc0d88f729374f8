package receiver_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/coordinator"
)

// A stream the native receive does not support (here a protocol version 3
// header, which this kernel never sends) is not refused outright: the
// receiver replays it through btrfs-progs, and the outcome is btrfs
// receive's. btrfs-progs 6.2 refuses version 3 too, so the attempt fails,
// but with its words, which proves the fallback ran; and nothing is applied.
func TestUnsupportedStreamFallsBackToBtrfsProgs(t *testing.T) {
	e := newEnv(t)
	s := e.snapshot("src.1")
	v3 := append([]byte(nil), s.stream...)
	binary.LittleEndian.PutUint32(v3[13:17], 3) // after the 13-byte magic
	s.stream = v3
	e.plan("src-1", s)
	// No MarkSent: the receiver refuses the stream, and the coordinator
	// may restart the attempt, before a sender would get to it.
	chunks := e.chunks("src-1", 1, s)
	e.publish(chunks...)
	e.end("src-1", 1, s, chunks)
	r := e.wait("src-1", "the attempt to end", func(r *coordinator.Replication) bool {
		return r.State.Terminal() || r.Attempt > 1
	})
	if r.State == coordinator.Done {
		t.Fatal("committed a stream of an unsupported version")
	}
	if strings.Contains(r.Error, "unsupported send stream") {
		t.Errorf("refused by the native receive (%q): it should have fallen back to btrfs-progs", r.Error)
	}
	if !strings.Contains(r.Error, "btrfs receive") {
		t.Errorf("reason %q is not btrfs receive's", r.Error)
	}
	e.assertNothingApplied(s.name)
}
