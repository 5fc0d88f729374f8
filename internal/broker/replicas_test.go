package broker

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// On a single server, --replicas 3 fails with the fix, and without
// --replicas a new stream is R1 (the cluster case runs as processes in
// deploy/nats).
func TestReplicasOnASingleServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	log := slog.New(slog.DiscardHandler)
	b, err := Connect(Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: "r1", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s, err := b.JS.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "R", Subjects: []string{"r"}})
	if err != nil || s.CachedInfo().Config.Replicas != 1 {
		t.Fatalf("new stream without --replicas: %v", err)
	}
	r3, err := Connect(Options{Server: b.URL(), Name: "r3", Replicas: 3, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	_, err = r3.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "b"})
	if err == nil || !strings.Contains(err.Error(), "--replicas 3 needs a JetStream cluster") {
		t.Errorf("an R3 bucket on a single server: %v; want the fix", err)
	}
}
