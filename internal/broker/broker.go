// Package broker provides snapjet's NATS connection: to an external server
// or cluster when a URL is given, otherwise to a nats-server embedded in
// the process with JetStream on a file store, so that one binary works
// alone on an edge NAS.
package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/filelock"
)

// Options choose the server.
type Options struct {
	Server string // external server URL; empty to embed one
	Store  string // embedded: JetStream file store directory
	Listen string // embedded: client address, HOST:PORT (port 0: any free port)
	Name   string // client connection name, shown by `nats server report connections`
	// JoinRunning connects to the server of another snapjet process that
	// holds Store, instead of failing (for read-only commands like status).
	JoinRunning bool
	// JoinOnly never starts a server: without Server it joins the
	// embedded server of the snapjet process that holds Store, and fails
	// with ErrNoServer when none does (for status: an empty new server
	// would only hide that the real one is down).
	JoinOnly bool
	Log      *slog.Logger
}

// ErrNoServer means no snapjet process serves the store.
var ErrNoServer = errors.New("no snapjet server is running")

// Broker is a connected client, and the embedded server if there is one.
type Broker struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	srv *Embedded
}

// ErrStoreInUse means another process runs an embedded server on the store.
var ErrStoreInUse = errors.New("store is in use by another snapjet process")

// Embedded is a running in-process server and the lock on its store.
type Embedded struct {
	*server.Server
	lock *filelock.Lock
}

// Stop shuts the server down and releases the store.
func (e *Embedded) Stop() {
	e.Shutdown()
	e.WaitForShutdown()
	_ = e.lock.Close()
}

const lockName = "snapjet.lock"

// lockStore makes sure one process at a time serves a store: two servers
// on one JetStream directory would corrupt it. The lock file holds the
// client URL, so that others can join.
func lockStore(store string) (*filelock.Lock, error) {
	l, err := filelock.TryLock(filepath.Join(store, lockName))
	if errors.Is(err, filelock.ErrHeld) {
		url := runningURL(store)
		return nil, fmt.Errorf("%w (%s, its server is at %s): pass --server %s to use it, or choose another --store", ErrStoreInUse, store, url, url)
	}
	if err != nil {
		return nil, fmt.Errorf("lock store %s: %w", store, err)
	}
	return l, nil
}

// joinOnly is the URL of the server that serves store now, or
// ErrNoServer. It takes the store's lock for a moment to see whether it is
// held, and creates nothing.
func joinOnly(store string) (string, error) {
	path := filepath.Join(store, lockName)
	noServer := fmt.Errorf("%w on store %s: start `snapjet daemon` or `snapjet server`, or pass --server URL of the running one", ErrNoServer, store)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return "", noServer
	}
	l, err := filelock.TryLock(path)
	switch {
	case err == nil:
		_ = l.Close()
		return "", noServer
	case !errors.Is(err, filelock.ErrHeld):
		return "", fmt.Errorf("store %s: %w", store, err)
	}
	url := runningURL(store)
	if url == "" {
		return "", fmt.Errorf("%w: the process holding %s did not note its URL; pass --server", ErrNoServer, store)
	}
	return url, nil
}

// HasState reports whether store holds a JetStream store (an embedded
// server ran on it), as opposed to a directory that would start empty.
func HasState(store string) bool {
	fi, err := os.Stat(filepath.Join(store, "jetstream"))
	return err == nil && fi.IsDir()
}

func runningURL(store string) string {
	return filelock.Note(filepath.Join(store, lockName))
}

// EmbeddedMaxPayload lets the embedded server carry 1 MiB chunks with room
// to spare; an external server's max_payload limits the chunk size instead.
const EmbeddedMaxPayload = 8 << 20

// StartServer runs an embedded JetStream server on store. Stop it with Stop.
func StartServer(store, listen string, log *slog.Logger) (*Embedded, error) {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: bad port", listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	if err := os.MkdirAll(store, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w (choose another with --store)", store, err)
	}
	lock, err := lockStore(store)
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "snapjet",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   store,
		MaxPayload: EmbeddedMaxPayload,
		NoSigs:     true,
	})
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		lock.Close()
		return nil, fmt.Errorf("embedded NATS server did not start on %s (is the port in use? choose another with --listen, or use --server)", listen)
	}
	// The URL only helps a refused process join; the lock holds without it.
	_ = lock.SetNote(srv.ClientURL())
	log.Info("embedded NATS server ready", "url", srv.ClientURL(), "store", store)
	return &Embedded{Server: srv, lock: lock}, nil
}

// Connect connects to the external server, or starts the embedded one.
func Connect(opt Options) (*Broker, error) {
	b := &Broker{}
	url := opt.Server
	if url == "" && opt.JoinOnly {
		u, err := joinOnly(opt.Store)
		if err != nil {
			return nil, err
		}
		url = u
	}
	if url == "" {
		srv, err := StartServer(opt.Store, opt.Listen, opt.Log)
		switch {
		case errors.Is(err, ErrStoreInUse) && opt.JoinRunning:
			url = runningURL(opt.Store)
		case err != nil:
			return nil, err
		default:
			b.srv, url = srv, srv.ClientURL()
		}
	}
	log := opt.Log
	nc, err := nats.Connect(url,
		nats.Name(opt.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS connection lost; reconnecting", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrl()) }),
	)
	if err != nil {
		b.Close()
		var hint string
		if errors.Is(err, nats.ErrNoServers) {
			hint = ": is the server running and reachable? (start one with `snapjet server`, or leave out --server to embed one)"
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w%s", url, err, hint)
	}
	b.NC = nc
	// A publish whose ack was lost with the connection must fail, not wait
	// for ever: the sender then resumes from what the stream holds.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("JetStream at %s: %w", url, err)
	}
	b.JS = js
	return b, nil
}

// URL is where clients reach the server.
func (b *Broker) URL() string { return b.NC.ConnectedUrl() }

// Close drains the connection and stops an embedded server.
func (b *Broker) Close() {
	if b.NC != nil {
		_ = b.NC.Drain()
		for i := 0; i < 50 && !b.NC.IsClosed(); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if b.srv != nil {
		b.srv.Stop()
	}
}
