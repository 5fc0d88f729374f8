package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// replicaJS gives every stream and KV bucket that snapjet creates or updates
// the deployment's replica count (--replicas), so that the wire layout in
// streams/ and coordinator/ need not carry it. With replicas 0 an existing
// stream keeps its count: a receiver started without --replicas must not
// scale the hub's R3 state bucket down to R1 by opening it.
type replicaJS struct {
	jetstream.JetStream
	replicas int
}

// replicasFor is the count to configure on stream name: the one asked for,
// else the existing stream's, else 1.
func (js replicaJS) replicasFor(ctx context.Context, name string, configured int) int {
	if configured > 0 {
		return configured
	}
	if js.replicas > 0 {
		return js.replicas
	}
	if s, err := js.JetStream.Stream(ctx, name); err == nil {
		return s.CachedInfo().Config.Replicas
	}
	// Not found (or the lookup failed, and so will the create that follows).
	return 1
}

// Error codes of the JetStream API for a replica count the servers cannot
// hold: a single server, or a cluster with fewer nodes.
const (
	errCodeReplicasNotSupported = 10074
	errCodeNoPeers              = 10005
)

// explain adds the fix to an error caused by the replica count.
func explain(err error, replicas int) error {
	var api *jetstream.APIError
	if errors.As(err, &api) && (api.ErrorCode == errCodeReplicasNotSupported || api.ErrorCode == errCodeNoPeers) {
		return fmt.Errorf("%w: --replicas %d needs a JetStream cluster of at least %d servers; leave it out (1) on a single server", err, replicas, replicas)
	}
	return err
}

func (js replicaJS) CreateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = js.replicasFor(ctx, cfg.Name, cfg.Replicas)
	s, err := js.JetStream.CreateStream(ctx, cfg)
	return s, explain(err, cfg.Replicas)
}

func (js replicaJS) CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	cfg.Replicas = js.replicasFor(ctx, cfg.Name, cfg.Replicas)
	s, err := js.JetStream.CreateOrUpdateStream(ctx, cfg)
	return s, explain(err, cfg.Replicas)
}

// kvStream is the stream behind a KV bucket (a nats.go convention).
func kvStream(bucket string) string { return "KV_" + bucket }

func (js replicaJS) CreateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = js.replicasFor(ctx, kvStream(cfg.Bucket), cfg.Replicas)
	kv, err := js.JetStream.CreateKeyValue(ctx, cfg)
	return kv, explain(err, cfg.Replicas)
}

func (js replicaJS) CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	cfg.Replicas = js.replicasFor(ctx, kvStream(cfg.Bucket), cfg.Replicas)
	kv, err := js.JetStream.CreateOrUpdateKeyValue(ctx, cfg)
	return kv, explain(err, cfg.Replicas)
}
