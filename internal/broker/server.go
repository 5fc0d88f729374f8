package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// EmbeddedMaxPayload lets the embedded server carry 1 MiB chunks with room
// to spare; an external server's max_payload limits the chunk size instead.
const EmbeddedMaxPayload = 8 << 20

// DefaultHubDomain is the JetStream domain of the hub that site nodes
// assume unless told otherwise.
const DefaultHubDomain = "hub"

// ServerConfig describes an embedded server: standalone (only Store and
// Listen), a hub that site nodes connect to (LeafListen), or a site node
// (Hub), a leaf node of the hub with a JetStream of its own.
type ServerConfig struct {
	Store  string // JetStream file store directory
	Listen string // client address, HOST:PORT (port 0: any free port)
	// Domain is the JetStream domain. A hub and its sites each need their
	// own, so that clients can address either JetStream across the link.
	Domain string
	// TLS of the client and leaf node listeners: with CA, peers must show
	// a certificate it signed.
	TLSCert, TLSKey, TLSCA string
	LeafListen             string // accept site nodes here (the hub's role)
	// MonitorListen serves the server's HTTP monitoring (/varz, /jsz,
	// /connz, /leafz) on HOST:PORT; empty: not at all. It has no
	// authentication: keep it on localhost or a management network.
	MonitorListen        string
	Hub                  string // leaf remote URL(s) of the hub (a site's role)
	HubDomain            string // JetStream domain of the hub, checked for clashes
	HubCreds             string // creds file for the link to the hub
	HubTLSCA, HubTLSCert string
	HubTLSKey            string
	Log                  *slog.Logger
}

// tlsTimeout is the TLS handshake limit of the listeners, in seconds; the
// server's default (2 s) fails on a loaded NAS.
const tlsTimeout = 5

func splitAddr(flag, addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: %w (want HOST:PORT)", flag, addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q: bad port", flag, addr)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	return host, port, nil
}

// options turns the configuration into nats-server options, checking
// every file and flag combination first.
func (c ServerConfig) options() (*server.Options, error) {
	host, port, err := splitAddr("--listen", c.Listen)
	if err != nil {
		return nil, err
	}
	opts := &server.Options{
		ServerName:      "snapjet",
		Host:            host,
		Port:            port,
		JetStream:       true,
		JetStreamDomain: c.Domain,
		StoreDir:        c.Store,
		MaxPayload:      EmbeddedMaxPayload,
		NoSigs:          true,
	}
	if c.MonitorListen != "" {
		if opts.HTTPHost, opts.HTTPPort, err = splitAddr("--monitor-listen", c.MonitorListen); err != nil {
			return nil, err
		}
	}
	if c.Domain != "" {
		// Servers linked by leaf connections must have distinct names.
		opts.ServerName = "snapjet-" + c.Domain
	}
	var listenTLS *tls.Config
	if c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "" {
		if c.TLSCert == "" || c.TLSKey == "" {
			return nil, fmt.Errorf("%w: a TLS listener needs --server-tls-cert and --server-tls-key", ErrCredentialFile)
		}
		for _, f := range [][3]string{{"certificate", "--server-tls-cert", c.TLSCert}, {"key", "--server-tls-key", c.TLSKey}, {"CA file", "--server-tls-ca", c.TLSCA}} {
			if f[2] == "" {
				continue
			}
			if _, err := readFile(f[0], f[1], f[2]); err != nil {
				return nil, err
			}
		}
		listenTLS, err = server.GenTLSConfig(&server.TLSConfigOpts{CertFile: c.TLSCert, KeyFile: c.TLSKey, CaFile: c.TLSCA, Verify: c.TLSCA != ""})
		if err != nil {
			return nil, fmt.Errorf("%w: server certificate %s, key %s, CA %s: %v: pass PEM files that belong together", ErrCredentialFile, c.TLSCert, c.TLSKey, c.TLSCA, err)
		}
		opts.TLS, opts.TLSVerify, opts.TLSConfig, opts.TLSTimeout = true, c.TLSCA != "", listenTLS, tlsTimeout
	}
	if c.LeafListen != "" {
		lhost, lport, err := splitAddr("--leaf-listen", c.LeafListen)
		if err != nil {
			return nil, err
		}
		opts.LeafNode.Host, opts.LeafNode.Port = lhost, lport
		// Sites dial the address they were given (a WAN name, a NAT's
		// port): the hub's own listen address is no use to them, and a
		// site that switched to it after a cut would bypass that route.
		opts.LeafNode.NoAdvertise = true
		if listenTLS != nil {
			opts.LeafNode.TLSConfig, opts.LeafNode.TLSTimeout = listenTLS.Clone(), tlsTimeout
		}
	}
	if c.Hub != "" {
		if c.Domain == "" {
			return nil, fmt.Errorf("--hub: a site node needs its own JetStream domain: add --domain SITE")
		}
		hubDomain := c.HubDomain
		if hubDomain == "" {
			hubDomain = DefaultHubDomain
		}
		if c.Domain == hubDomain {
			return nil, fmt.Errorf("--domain %s is the hub's domain: give the site a name of its own", c.Domain)
		}
		remote := &server.RemoteLeafOpts{Credentials: c.HubCreds, TLSTimeout: tlsTimeout}
		for _, s := range strings.Split(c.Hub, ",") {
			u, err := url.Parse(strings.TrimSpace(s))
			if err != nil || u.Host == "" {
				return nil, fmt.Errorf("--hub %q: want nats-leaf://HOST:PORT or tls://HOST:PORT", Redact(s))
			}
			if _, ok := u.User.Password(); ok {
				return nil, fmt.Errorf("%w: --hub %s: pass the link's credentials with --hub-creds", ErrSecretInArgs, Redact(s))
			}
			remote.URLs = append(remote.URLs, u)
		}
		if c.HubCreds != "" {
			if _, err := readFile("creds file", "--hub-creds", c.HubCreds); err != nil {
				return nil, err
			}
		}
		hubTLS, err := TLSConfig(c.HubTLSCA, c.HubTLSCert, c.HubTLSKey, "--hub-tls")
		if err != nil {
			return nil, err
		}
		if hubTLS != nil {
			remote.TLS, remote.TLSConfig = true, hubTLS
		}
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{remote}
	}
	return opts, nil
}

// StartServer runs an embedded JetStream server on cfg.Store. Stop it with
// Stop.
func StartServer(cfg ServerConfig) (*Embedded, error) {
	opts, err := cfg.options()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Store, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w (choose another with --store)", cfg.Store, err)
	}
	lock, err := lockStore(cfg.Store)
	if err != nil {
		return nil, err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("embedded NATS server: %s", Redact(err.Error()))
	}
	srv.SetLoggerV2(serverLog{cfg.Log}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		lock.Close()
		return nil, fmt.Errorf("embedded NATS server did not start on %s (is the port in use? choose another with --listen, or use --server)", cfg.Listen)
	}
	// The URL only helps a refused process join; the lock holds without it.
	_ = lock.SetNote(srv.ClientURL())
	attrs := []any{"url", srv.ClientURL(), "store", cfg.Store}
	if cfg.Domain != "" {
		attrs = append(attrs, "domain", cfg.Domain)
	}
	if cfg.LeafListen != "" {
		attrs = append(attrs, "leaf_listen", cfg.LeafListen)
	}
	if cfg.Hub != "" {
		attrs = append(attrs, "hub", Redact(cfg.Hub))
	}
	if a := srv.MonitorAddr(); a != nil {
		attrs = append(attrs, "monitor", "http://"+a.String())
	}
	cfg.Log.Info("embedded NATS server ready", attrs...)
	e := &Embedded{Server: srv, store: cfg.Store, log: cfg.Log, lock: lock, stopped: make(chan struct{}), guarded: make(chan struct{})}
	go e.guardStore()
	return e, nil
}

// WatchHub logs when the site node's link to its hub comes up and goes
// down, so that an operator sees a site cut off from its hub (the server's
// own messages about it are debug-level noise otherwise). It returns when
// ctx ends.
func (e *Embedded) WatchHub(ctx context.Context, hub string, log *slog.Logger) {
	up, since := false, time.Now()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		linked := e.NumLeafNodes() > 0
		switch {
		case linked && !up:
			log.Info("link to hub up", "hub", Redact(hub))
		case !linked && up:
			log.Warn("link to hub down; reconnecting", "hub", Redact(hub))
			since = time.Now()
		case !linked && time.Since(since) > 30*time.Second:
			log.Warn("no link to hub: check --hub, --hub-creds and the --hub-tls options against the hub's leafnodes settings (run with -v for the server's messages)", "hub", Redact(hub))
			since = time.Now()
		}
		up = linked
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serverLog passes nats-server's messages to slog, with the user
// information of URLs removed. Its notices are routine start-up and
// connection chatter, so they go to debug.
type serverLog struct{ log *slog.Logger }

func (l serverLog) Noticef(format string, v ...any) { l.emit(slog.LevelDebug, format, v) }
func (l serverLog) Warnf(format string, v ...any)   { l.emit(slog.LevelWarn, format, v) }
func (l serverLog) Fatalf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l serverLog) Errorf(format string, v ...any)  { l.emit(slog.LevelError, format, v) }
func (l serverLog) Debugf(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }
func (l serverLog) Tracef(format string, v ...any)  { l.emit(slog.LevelDebug, format, v) }

func (l serverLog) emit(level slog.Level, format string, v []any) {
	l.log.Log(context.Background(), level, "nats-server: "+Redact(fmt.Sprintf(format, v...)))
}
