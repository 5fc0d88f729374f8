package receiver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/streams"
)

// A checkpoint carries the stream digest so far; one written with another
// digest scheme (by an earlier snapjet) is refused, so its receive starts
// over instead of ending in a digest that can never match the sender's.
func TestCheckpointDigest(t *testing.T) {
	dir := t.TempDir()
	d := streams.NewDigest()
	d.Add(0, 4, 0x1234)
	state, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := saveCheckpoint(dir, checkpoint{Attempt: 2, Next: 1, Bytes: 4}, state); err != nil {
		t.Fatal(err)
	}
	cp, got, err := loadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cp.Attempt != 2 || cp.Next != 1 || got.String() != d.String() {
		t.Errorf("loaded attempt %d, next %d, digest %s; want 2, 1, %s", cp.Attempt, cp.Next, got, d)
	}

	old := `{"attempt":2,"next_chunk":1,"bytes":4,"digest_state":"c2hhAw==","applier":{}}`
	if err := os.WriteFile(filepath.Join(dir, checkpoints), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadCheckpoint(dir); err == nil || !strings.Contains(err.Error(), "earlier snapjet") {
		t.Errorf("a checkpoint of the earlier digest scheme: %v, want a refusal naming it", err)
	}
}
