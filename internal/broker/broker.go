// Package broker provides snapjet's NATS connection: to an external server
// or cluster when a URL is given, otherwise to a nats-server embedded in
// the process with JetStream on a file store, so that one binary works
// alone on an edge NAS.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/internal/filelock"
	"github.com/snapjet/snapjet/internal/retry"
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
	Credentials Credentials // for an external server
	// JSDomain is the JetStream domain to use, empty for the one of the
	// server connected to: a client of a site node reaches the hub's
	// streams with the hub's domain.
	JSDomain string
	// InboxPrefix is the subject prefix of the client's reply inboxes,
	// empty for _INBOX: a site whose permissions let it receive only its
	// own replies gives its clients a prefix of their own.
	InboxPrefix string
	// Replicas of the streams and buckets this client creates (see
	// replicaJS); 0 keeps an existing one's count and makes new ones R1.
	Replicas int
	// ConnectWait is how long a server that does not answer yet (being
	// restarted, its link down) is waited for at connect, with a log line
	// per try; 0 fails at once. Refused credentials or TLS fail at once.
	ConnectWait time.Duration
	// JoinOnly never starts a server: without Server it joins the
	// embedded server of the snapjet process that holds Store, and fails
	// with ErrNoServer when none does (for status: an empty new server
	// would only hide that the real one is down).
	JoinOnly bool
	// MonitorListen: see ServerConfig (embedded server only).
	MonitorListen string
	Log           *slog.Logger
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
	store string
	log   *slog.Logger
	// lock is guardStore's until it returned (it replaces a lost one);
	// Stop closes it only after that.
	lock    *filelock.Lock
	stopped chan struct{} // closed by Stop: guardStore returns
	guarded chan struct{} // closed when guardStore returned
	stop    sync.Once
}

// Stop shuts the server down and releases the store.
func (e *Embedded) Stop() {
	e.stop.Do(func() { close(e.stopped) })
	<-e.guarded
	e.Shutdown()
	e.WaitForShutdown()
	_ = e.lock.Close()
}

// storeLockCheckEvery is how often a running embedded server makes sure
// its store's lock file is still the one it locked.
var storeLockCheckEvery = 2 * time.Second

// guardStore keeps the store locked while the server runs. A flock belongs
// to the file, not its name: once the lock file is removed or replaced (a
// cleanup of the store directory, say), another process could lock a new
// one and start a second server on the same JetStream files, which would
// corrupt them. So it locks the path again when it can, and when another
// process got there first it shuts this server down: one of the two must
// stop writing, and this is the one it can stop. A path it cannot lock for
// another reason is only logged, and tried again. It returns when Stop is
// called or once it shut the server down.
func (e *Embedded) guardStore() {
	defer close(e.guarded)
	t := time.NewTicker(storeLockCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-e.stopped:
			return
		case <-t.C:
		}
		err := e.lock.Check()
		if !errors.Is(err, filelock.ErrLost) {
			if err != nil {
				e.log.Warn("check the store's lock", "store", e.store, "error", err)
			}
			continue
		}
		l, err := lockStore(e.store)
		if err == nil {
			_ = l.SetNote(e.ClientURL())
			_ = e.lock.Close()
			e.lock = l
			e.log.Warn("the store's lock file was removed or replaced: locked it again", "store", e.store)
			continue
		}
		if !errors.Is(err, ErrStoreInUse) {
			// Nobody else holds it (the directory may be gone with its
			// files): there is no second server to make room for.
			e.log.Warn("the store's lock file was removed or replaced and cannot be locked again", "store", e.store, "error", err)
			continue
		}
		e.log.Error("another process locked the store after its lock file was removed or replaced: stopping the embedded server so that two never write one store; restart it once no other snapjet process serves the store",
			"store", e.store, "error", err)
		e.Shutdown()
		return
	}
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

// Connect connects to the external server, or starts the embedded one.
func Connect(opt Options) (*Broker, error) {
	return ConnectContext(context.Background(), opt)
}

// ConnectContext is Connect, giving up waiting for the server
// (Options.ConnectWait) when ctx ends.
func ConnectContext(ctx context.Context, opt Options) (*Broker, error) {
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
		srv, err := StartServer(ServerConfig{Store: opt.Store, Listen: opt.Listen, MonitorListen: opt.MonitorListen, Log: opt.Log})
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
	url, user, password, token, err := SplitUser(url)
	if err != nil {
		b.Close()
		return nil, err
	}
	creds := opt.Credentials
	switch {
	case password != "":
		creds.User, creds.Password = user, password
	case token != "" && creds.Password != "":
		creds.User, token = token, "" // nats://USER@host with the password from elsewhere
	case creds.Password != "" && creds.User == "":
		b.Close()
		return nil, fmt.Errorf("%w: a password needs a user: name it in the server URL (nats://USER@HOST:PORT)", ErrCredentialFile)
	}
	copts, err := creds.natsOptions()
	if err != nil {
		b.Close()
		return nil, err
	}
	if token != "" {
		copts = append(copts, nats.Token(token))
	}
	if opt.InboxPrefix != "" {
		copts = append(copts, nats.CustomInboxPrefix(opt.InboxPrefix))
	}
	copts = append(copts,
		nats.Name(opt.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.RetryOnFailedConnect(false),
		// Asynchronous errors go to the log, not to stderr: a KV watch that
		// is stopped or rebuilt loses its consumer, which is expected.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			if strings.Contains(err.Error(), "consumer not found") {
				log.Debug("NATS subscription lost its consumer", "subject", subject, "error", err)
				return
			}
			log.Warn("NATS asynchronous error", "subject", subject, "error", Redact(err.Error()))
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("NATS connection lost; reconnecting", "error", Redact(err.Error()))
			}
		}),
		// The URLs were stripped of user information above; Redact also
		// covers servers that the cluster announced.
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", Redact(c.ConnectedUrl())) }),
	)
	nc, err := dial(ctx, url, copts, opt.ConnectWait, log)
	if err != nil {
		b.Close()
		return nil, err
	}
	b.NC = nc
	// A publish whose ack was lost with the connection must fail, not wait
	// for ever: the sender then resumes from what the stream holds.
	jsOpt := jetstream.WithPublishAsyncTimeout(10 * time.Second)
	var js jetstream.JetStream
	if opt.JSDomain != "" {
		js, err = jetstream.NewWithDomain(nc, opt.JSDomain, jsOpt)
	} else {
		js, err = jetstream.New(nc, jsOpt)
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("JetStream at %s: %w", url, err)
	}
	b.JS = replicaJS{JetStream: js, replicas: opt.Replicas}
	return b, nil
}

// URL is where clients reach the server, without user information.
func (b *Broker) URL() string { return Redact(b.NC.ConnectedUrl()) }

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

// dial connects to url, waiting up to wait for a server that does not
// answer yet. A refusal of the credentials or of TLS is final at once.
func dial(ctx context.Context, url string, copts []nats.Option, wait time.Duration, log *slog.Logger) (*nats.Conn, error) {
	since := time.Now()
	b := retry.New(250*time.Millisecond, 5*time.Second)
	for {
		nc, err := nats.Connect(url, copts...)
		if err == nil {
			return nc, nil
		}
		cerr := connectError(url, err)
		if wait <= 0 || time.Since(since) > wait || errors.Is(cerr, ErrAuth) || errors.Is(cerr, ErrTLS) || errors.Is(cerr, ErrCredentialFile) {
			return nil, cerr
		}
		log.Warn("NATS server does not answer; waiting for it", "url", Redact(url), "since", since.Format(time.RFC3339),
			"gives_up_in", (wait - time.Since(since)).Round(time.Second), "error", Redact(err.Error()))
		if err := b.Wait(ctx); err != nil {
			return nil, fmt.Errorf("%w (then: %v)", cerr, err)
		}
	}
}
