package receiver_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/streams"
)

// A retention delete reaches the receiver on its prune subject and deletes
// only a committed snapshot with the received UUID named: never a name
// outside the target, a writable subvolume, a snapshot that was not
// received, or one received from another snapshot.
func TestDeleteOnlyWhatSnapjetCommitted(t *testing.T) {
	e := newEnv(t)
	ctx := e.ctx
	snap := filepath.Join(filepath.Dir(e.src), "snap")
	if err := btrfs.Snapshot(ctx, e.src, snap, true); err != nil {
		t.Fatal(err)
	}
	info, err := btrfs.Inspect(snap)
	if err != nil {
		t.Fatal(err)
	}
	stream, send, err := btrfs.Send(ctx, snap, btrfs.SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	recvErr := btrfs.Receive(ctx, e.target, stream)
	stream.Close()
	if err := send.Wait(); err != nil || recvErr != nil {
		t.Fatalf("send %v, receive %v", err, recvErr)
	}
	received := filepath.Join(e.target, "snap")
	if err := btrfs.CreateSubvolume(ctx, filepath.Join(e.target, "mine")); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Snapshot(ctx, e.src, filepath.Join(e.target, "local-ro"), true); err != nil {
		t.Fatal(err)
	}

	ask := func(name, uuid string) string {
		t.Helper()
		body, _ := json.Marshal(streams.DeleteRequest{Name: name, ReceivedUUID: uuid})
		msg, err := e.b.NC.Request(streams.PruneSubject(target), body, 10*time.Second)
		if err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
		return msg.Header.Get(micro.ErrorHeader)
	}
	other := "0b4fd3a2-0000-4000-8000-000000000001"
	for _, bad := range []struct{ name, uuid, why string }{
		{"../src", info.UUID.String(), "outside the target"},
		{".snapjet", info.UUID.String(), "the staging area"},
		{"snap", other, "another received UUID"},
		{"snap", "", "no received UUID"},
		{"mine", info.UUID.String(), "a writable subvolume"},
		{"local-ro", info.UUID.String(), "a snapshot that was not received"},
	} {
		if e := ask(bad.name, bad.uuid); !strings.Contains(e, "not a snapshot snapjet committed here") {
			t.Errorf("%s (%s): refusal %q, want one naming what was refused", bad.name, bad.why, e)
		}
	}
	for _, p := range []string{received, filepath.Join(e.target, "mine"), filepath.Join(e.target, "local-ro"), e.src} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s after the refused deletes: %v", p, err)
		}
	}
	if e := ask("snap", info.UUID.String()); e != "" {
		t.Fatalf("delete of the committed snapshot refused: %s", e)
	}
	if _, err := os.Stat(received); !os.IsNotExist(err) {
		t.Errorf("%s is still there: %v", received, err)
	}
	// Asked again (a retried request): what was asked holds.
	if e := ask("snap", info.UUID.String()); e != "" {
		t.Errorf("a repeated delete: %s", e)
	}
}
