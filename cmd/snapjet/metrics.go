package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/snapjet/snapjet/metrics"
)

// startMetrics serves Prometheus /metrics and /healthz on addr until stop
// is called; with no addr there is nothing to serve and m is nil (which
// the drivers accept). /healthz fails while the NATS connection that
// setConn was given last is down.
func (g *globals) startMetrics(addr string) (m *metrics.Metrics, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, &exitError{2, fmt.Errorf("--metrics-listen %s: %w (choose a free HOST:PORT)", addr, err)}
	}
	m = metrics.New(time.Now)
	srv := &http.Server{Handler: m.Handler(g.health), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("metrics endpoint stopped", "error", err)
		}
	}()
	g.log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return m, func() {
		// Bounded: a scrape in progress gets 5 s to finish.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// setConn names the NATS connection /healthz checks.
func (g *globals) setConn(nc *nats.Conn) { g.natsConn.Store(nc) }

// health is /healthz: the NATS connection must be up (before it exists,
// the process is starting: healthy).
func (g *globals) health() error {
	nc := g.natsConn.Load()
	if nc != nil && !nc.IsConnected() {
		return fmt.Errorf("NATS connection is %s", nc.Status())
	}
	return nil
}
