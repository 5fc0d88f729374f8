// Command snapjet replicates btrfs snapshots over NATS JetStream. It only
// wires the packages together; see docs/ARCHITECTURE.md.
package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/internal/broker"
)

// exitError carries the process exit code: 1 a replication failed, 2 the
// input was wrong.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

type globals struct {
	store, server, listen, logFormat, cpuprofile string
	memprofile                                   string
	metricsListen                                string
	verbose                                      bool
	conn                                         connFlags
	log                                          *slog.Logger
	natsConn                                     atomic.Pointer[nats.Conn] // for /healthz
}

func main() {
	g := &globals{}
	root := newRoot(g)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if g.cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapjet:", err)
		var ee *exitError
		switch {
		case errors.As(err, &ee):
			os.Exit(ee.code)
		case driver.IsPermanent(err):
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// newRoot is snapjet's command tree, its flags bound to g.
func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "snapjet",
		Short:         "Replicate btrfs snapshots over NATS JetStream, resuming after every failure",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.conn.resolve(cmd, &g.server); err != nil {
				return err
			}
			return g.setup()
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.store, "store", "/var/lib/snapjet", "JetStream file store of the embedded NATS server")
	pf.StringVar(&g.server, "server", "", "URL(s) of an external NATS server or cluster, comma-separated (env SNAPJET_SERVER; default: embed one)")
	pf.StringVar(&g.listen, "listen", "127.0.0.1:4222", "client address of the embedded server (port 0: any free port)")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "debug logging")
	pf.StringVar(&g.metricsListen, "metrics-listen", "", "serve Prometheus /metrics and /healthz on HOST:PORT (send, receive, replicate, run, daemon)")
	pf.StringVar(&g.cpuprofile, "cpuprofile", "", "write a pprof CPU profile to this file")
	pf.StringVar(&g.memprofile, "memprofile", "", "write a pprof heap profile to this file, as of the highest heap in use")
	g.conn.add(pf)
	// A flag that does not parse is bad input, like any other: exit 2.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{2, err} })
	root.AddCommand(replicateCmd(g), sendCmd(g), receiveCmd(g), serverCmd(g), statusCmd(g), daemonCmd(g))
	root.AddCommand(opsCommands(g)...)
	return root
}

// streamingMemoryLimit is the soft heap limit of `send` and `receive`
// unless GOMEMLIMIT says otherwise: their live data is bounded (chunks in
// flight), so the GC need not let the heap grow to twice that. 1 GiB of
// random data: sender 61 MB and receiver 63 MB RSS at the same speed as
// with 64 MiB (75 and 75 MB). Below their live heap a limit makes the GC
// run once per chunk: at 64 MiB, before the sender's heap shrank, that
// doubled its CPU.
const streamingMemoryLimit = 48 << 20

// limitMemory applies streamingMemoryLimit to a streaming-only process.
func limitMemory() { limitMemoryTo(streamingMemoryLimit) }

// replicateWindow and replicateMemoryLimit are replicate's defaults. All of
// replicate's stream lives in its own process: with the file store, which
// keeps 8 MiB blocks of it cached, 1 GiB of incompressible data peaked at
// 792–945 MiB RSS with the sender's 1 GiB window. A heap limit alone does
// not help (256 MiB: 431 MiB and three times slower, the GC running without
// end). With the stream in memory (StreamsInMemory) and a 32 MiB window the
// live heap after each collection is 85–107 MB on 1 GiB of random data;
// the limit caps the heap, and the RSS is the limit and 14–22 MB of
// program text and runtime: 181 MB at 160 MiB (5.2–5.8 s), 161–162 MB at
// 140 MiB (6.1–7.4 s, but 161 MiB on the 2 GiB bench set), 155–156 MB at
// 132 MiB (8.2–9.2 s, the GC busy). A 16 MiB window takes about 12 MB off
// the live heap: at 132 MiB it ran in 6.9–7.2 s at 153 MB; an 8 MiB window
// was too short a pipeline (8.5 s).
const (
	replicateWindow      = 16 << 20
	replicateMemoryLimit = 132 << 20
)

// replicateInflight is how many chunks replicate's sender may have
// unconfirmed (sender.Options.Inflight): twice send's default, which its
// heap limit has room for. 1 GiB of random data, three alternating runs:
// 6.4-6.9 s with 16, 6.5-7.5 s with 8.
const replicateInflight = 16

// replicateMemoryWindow is the largest window whose stream replicate's
// embedded server keeps in memory (coordinator.StreamsInMemory) rather than
// in its file store. A larger --window is a wish to buffer more than RAM
// should hold.
const replicateMemoryWindow = 64 << 20

// replicatePull is the pull budget of replicate's in-process receivers:
// no round trip to cover, so four chunks keep them busy, and the 32 MiB
// default would only be memory (measured on 1 GiB of random data).
func replicatePull(chunkSize int) int { return max(8<<20, 4*chunkSize+(1<<20)) }

// serverMemoryLimit is the soft heap limit of `snapjet server` unless
// GOMEMLIMIT says otherwise. The file store keeps recently read blocks
// (8 MiB each) cached for 10 s, and freed ones wait in a pool for the next
// garbage collection; the heap limit makes that happen sooner. 1 GiB of
// random data at 165 MB/s through it: 370 MB RSS without a limit, 220 MB
// with 200 MiB at the same speed, 183 MB with 160 MiB but 35 % slower
// (the live data is what the senders' trims and the receivers' pulls hold).
const serverMemoryLimit = 200 << 20

// daemonMemoryLimit is the soft heap limit of the daemon unless GOMEMLIMIT
// says otherwise. It hosts the embedded server, whose file store caches
// recent messages, next to a sender and receivers: a 300 MB incompressible
// run peaked at 583 MiB RSS without a limit (725 MiB on the next one) and
// at 321 MiB with 256 MiB.
const daemonMemoryLimit = 256 << 20

func limitMemoryTo(n int64) {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(n)
	}
}

func (g *globals) setup() error {
	level := slog.LevelInfo
	if g.verbose {
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		g.log = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		g.log = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		return &exitError{2, fmt.Errorf("--log-format %q: use text or json", g.logFormat)}
	}
	slog.SetDefault(g.log)
	if g.memprofile != "" {
		go profileHeapPeak(context.Background(), g.memprofile)
	}
	if g.cpuprofile != "" {
		f, err := os.Create(g.cpuprofile)
		if err != nil {
			return err
		}
		return pprof.StartCPUProfile(f)
	}
	return nil
}

// connect reaches NATS: the external server when --server is set,
// otherwise (when embed is true) an embedded one. An external server that
// does not answer yet (restarting, its link down) is waited for up to wait.
func (g *globals) connect(ctx context.Context, name string, embed bool, wait time.Duration) (*broker.Broker, error) {
	server := g.server
	if server == "" && !embed {
		server = "nats://127.0.0.1:4222"
	}
	return g.brokerConnect(ctx, broker.Options{Server: server, Store: g.store, Listen: g.listen, Name: name, ConnectWait: wait})
}

// brokerConnect connects with the connection flags applied.
func (g *globals) brokerConnect(ctx context.Context, opt broker.Options) (*broker.Broker, error) {
	return g.brokerConnectConfig(ctx, opt, config.Server{})
}

// brokerConnectConfig is brokerConnect with the config file's credentials
// for what the flags and environment leave empty.
func (g *globals) brokerConnectConfig(ctx context.Context, opt broker.Options, s config.Server) (*broker.Broker, error) {
	creds, err := g.conn.credentials()
	if err == nil {
		creds, err = fromConfig(creds, s)
	}
	if err != nil {
		return nil, err
	}
	opt.Credentials, opt.JSDomain, opt.InboxPrefix, opt.Replicas, opt.Log = creds, cmp.Or(g.conn.jsDomain, s.JSDomain), cmp.Or(g.conn.inboxPrefix, s.InboxPrefix), g.conn.replicaCount(), g.log
	b, err := broker.ConnectContext(ctx, opt)
	if err == nil {
		g.setConn(b.NC)
	}
	return b, err
}
