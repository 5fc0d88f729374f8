package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/receiver"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

type sendFlags struct {
	chunkSize int64
	window    int64
	snapDir   string
	wait      time.Duration
	outage    time.Duration
	stall     time.Duration
	retention time.Duration
	rateLimit string
	compress  string
	// compressedData is the --compressed-data mode (sender.CompressedAuto...).
	compressedData string
}

func (f *sendFlags) add(cmd *cobra.Command) {
	f.chunkSize, f.window = sender.DefaultChunkSize, sender.DefaultWindow
	cmd.Flags().Var(sizeFlag{&f.chunkSize}, "chunk-size", "send stream per chunk, e.g. 1MiB or bytes")
	cmd.Flags().Var(sizeFlag{&f.window}, "window", "what the replication stream may hold before the sender waits for receivers, e.g. 1GiB or bytes")
	cmd.Flags().StringVar(&f.snapDir, "snapshot-dir", "", "where source snapshots are kept (default <dir of SOURCE>/.snapjet/<name>)")
	cmd.Flags().DurationVar(&f.wait, "receiver-wait", 30*time.Second, "how long to wait for the targets' receivers to answer")
	cmd.Flags().DurationVar(&f.outage, "outage-timeout", sender.DefaultOutageTimeout, "give up after the NATS server was unreachable this long")
	cmd.Flags().DurationVar(&f.stall, "stall-timeout", sender.DefaultStallTimeout, "drop a target from the run when it made no progress this long (its receiver or its link is down); the next run retries it")
	cmd.Flags().DurationVar(&f.retention, "record-retention", coordinator.DefaultRecordRetention, "how long records of finished replications are kept")
	cmd.Flags().StringVar(&f.rateLimit, "rate-limit", "", "bytes per second on the wire, e.g. 50MB/s (default: no limit)")
	cmd.Flags().StringVar(&f.compress, "compress", streams.CompressAuto, "compression of the chunks: none, s2, fastest, default, better (zstd levels from fastest), or auto (follows whether the link or the CPU holds the transfer back); s2 only where every target reads it")
	cmd.Flags().StringVar(&f.compressedData, "compressed-data", sender.CompressedAuto, "send extents that btrfs compressed as they are (btrfs send --compressed-data, protocol 2): auto (when kernel and btrfs-progs can), always, or never (for targets using a btrfs receive older than 5.19)")
}

// source is the send stream's producer that the flags ask for.
func (f *sendFlags) source(log *slog.Logger) (sender.Source, error) {
	src, err := sender.NewBtrfsSource(f.compressedData, log)
	if err != nil {
		return nil, &exitError{2, fmt.Errorf("--compressed-data: %w", err)}
	}
	return src, nil
}

func (f *sendFlags) options(source string, targets []string) (sender.Options, error) {
	limit, err := config.ParseRate(f.rateLimit)
	if err != nil {
		return sender.Options{}, &exitError{2, fmt.Errorf("--rate-limit: %w", err)}
	}
	if _, _, err := streams.ParseCompression(f.compress); err != nil {
		return sender.Options{}, &exitError{2, fmt.Errorf("--compress: %w", err)}
	}
	return sender.Options{Source: source, Targets: targets, SnapshotDir: f.snapDir, ChunkSize: int(f.chunkSize), Window: f.window, InventoryTimeout: f.wait, OutageTimeout: f.outage, StallTimeout: f.stall, RecordRetention: f.retention, RateLimit: limit, Compress: f.compress}, nil
}

func replicateCmd(g *globals) *cobra.Command {
	f := &sendFlags{}
	var applier string
	cmd := &cobra.Command{
		Use:   "replicate [flags] SOURCE TARGET...",
		Short: "Snapshot SOURCE and replicate it to every TARGET directory, then commit",
		Long: `Takes a read-only snapshot of the btrfs subvolume SOURCE and replicates it to
every TARGET directory (each on btrfs) through an embedded NATS server (or
--server). Exits 0 only when every target committed. Running the same
command again after a crash or interruption completes the unfinished
replication first: it resumes, or discards the partial and starts over.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			opt, err := f.options(args[0], nil)
			if err != nil {
				return err
			}
			limitMemoryTo(replicateMemoryLimit)
			if _, _, err := sender.CheckSource(args[0]); err != nil {
				return err
			}
			src, err := f.source(g.log)
			if err != nil {
				return err
			}
			var names []string
			for _, t := range args[1:] {
				if _, err := receiver.CheckTarget(t); err != nil {
					return err
				}
				names = append(names, targetName(t))
			}
			m, stopMetrics, err := g.startMetrics(g.metricsListen)
			if err != nil {
				return err
			}
			defer stopMetrics()
			b, err := g.connect(ctx, "snapjet replicate", true, f.outage)
			if err != nil {
				return err
			}
			defer b.Close()
			rctx, stopReceivers := context.WithCancel(ctx)
			var wg sync.WaitGroup
			defer func() { stopReceivers(); wg.Wait() }()
			for i, t := range args[1:] {
				rc, err := receiver.New(ctx, b.NC, b.JS, names[i], t, g.log, receiver.WithApplier(applier), receiver.WithMetrics(m),
					receiver.WithPullBytes(replicatePull(opt.ChunkSize)))
				if err != nil {
					return err
				}
				wg.Add(1)
				go func() { defer wg.Done(); _ = rc.Run(rctx) }()
			}
			opt.Targets = names
			var copts []coordinator.Option
			if g.server == "" {
				copts = append(copts, coordinator.StreamsInMemory(replicateMemoryWindow))
				// The window that the coordinator keeps in memory.
				opt.LocalStream = opt.Window <= replicateMemoryWindow
			}
			opt.Inflight = replicateInflight
			return runSend(ctx, g, b, m, src, opt, copts...)
		},
	}
	f.add(cmd)
	// The targets are local: a small window costs no speed, and it is what
	// the stream in memory holds at most.
	f.window = replicateWindow
	cmd.Flags().Lookup("window").DefValue = config.FormatSize(replicateWindow)
	cmd.Flags().Lookup("compress").Usage += "; with the stream in the embedded server's memory auto starts at fastest and may switch compression off"
	addApplierFlag(cmd, &applier)
	return cmd
}

func addApplierFlag(cmd *cobra.Command, applier *string) {
	cmd.Flags().StringVar(applier, "receiver", receiver.Native,
		"how targets apply streams: native (resumes after a crash) or btrfs-progs (the external btrfs receive)")
}

func sendCmd(g *globals) *cobra.Command {
	f := &sendFlags{}
	var to string
	cmd := &cobra.Command{
		Use:   "send --server URL --to NAME[,NAME...] SOURCE",
		Short: "Snapshot SOURCE and send it to running receivers; return when all committed or failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return &exitError{2, fmt.Errorf("--to: name at least one target")}
			}
			limitMemory()
			opt, err := f.options(args[0], strings.Split(to, ","))
			if err != nil {
				return err
			}
			if _, _, err := sender.CheckSource(args[0]); err != nil {
				return err
			}
			src, err := f.source(g.log)
			if err != nil {
				return err
			}
			m, stopMetrics, err := g.startMetrics(g.metricsListen)
			if err != nil {
				return err
			}
			defer stopMetrics()
			b, err := g.connect(cmd.Context(), "snapjet send", false, f.outage)
			if err != nil {
				return err
			}
			defer b.Close()
			return runSend(cmd.Context(), g, b, m, src, opt)
		},
	}
	cmd.Flags().StringVar(&to, "to", "", "comma-separated target names")
	f.add(cmd)
	return cmd
}

// runSend runs the coordinator and the sender, and reports the outcome.
func runSend(ctx context.Context, g *globals, b *broker.Broker, m *metrics.Metrics, src sender.Source, opt sender.Options, copts ...coordinator.Option) error {
	coord, err := coordinator.New(ctx, b.NC, b.JS, g.log, copts...)
	if err != nil {
		return err
	}
	defer coord.Close()
	prog := newProgress(g.log)
	s := &sender.Sender{NC: b.NC, JS: b.JS, Coord: coord, Streams: src, Log: g.log, OnProgress: prog.update, Metrics: m}
	res, err := s.Run(ctx, opt)
	prog.done()
	if err != nil {
		return err
	}
	var failed []string
	for _, name := range opt.Targets {
		r, t := res.Outcome(name)
		switch {
		case t == nil:
			failed = append(failed, name)
			fmt.Printf("%s: not part of this run\n", name)
		case t.State == coordinator.TCommitted:
			fmt.Printf("%s: committed %s (replication %s)\n", name, t.Path, r.ID)
		default:
			failed = append(failed, name)
			fmt.Printf("%s: %s: %s (replication %s)\n", name, t.State, t.Error, r.ID)
		}
	}
	if len(failed) > 0 {
		return &exitError{1, fmt.Errorf("snapshot %s failed on %d of %d targets (%s); the next run retries them",
			res.Records[0].SnapshotName, len(failed), len(opt.Targets), strings.Join(failed, ", "))}
	}
	return nil
}

func receiveCmd(g *globals) *cobra.Command {
	var target, applier string
	cmd := &cobra.Command{
		Use:   "receive --server URL --target NAME DIR",
		Short: "Receive replications addressed to target NAME into DIR (long-running)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if target == "" {
				return &exitError{2, fmt.Errorf("--target: name this target")}
			}
			limitMemory()
			if _, err := receiver.CheckTarget(args[0]); err != nil {
				return err
			}
			m, stopMetrics, err := g.startMetrics(g.metricsListen)
			if err != nil {
				return err
			}
			defer stopMetrics()
			b, err := g.connect(cmd.Context(), "snapjet receive "+target, false, sender.DefaultOutageTimeout)
			if err != nil {
				return err
			}
			defer b.Close()
			rc, err := receiver.New(cmd.Context(), b.NC, b.JS, target, args[0], g.log, receiver.WithApplier(applier), receiver.WithMetrics(m))
			if err != nil {
				return err
			}
			if err := rc.Run(cmd.Context()); err != nil && cmd.Context().Err() == nil {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&target, "target", "", "name of this target (letters, digits, - and _)")
	addApplierFlag(cmd, &applier)
	return cmd
}

func statusCmd(g *globals) *cobra.Command {
	var asJSON, offline bool
	var file, target string
	cmd := &cobra.Command{
		Use:   "status [--server URL | --store DIR [--offline] | --config FILE | --target NAME] [--json]",
		Short: "Show replications, the state of every target, bytes and the last error; with --config, what is late and why",
		Long: `Without --config: every replication on record, per target, with its state,
bytes and last error.

With --config FILE: per job and target, the last success and its age, the
next scheduled run, the replication in progress and the last error; exits 1
when a job is overdue (a target without a success within twice the job's
interval, or none on record).

With --target NAME: that target as its site sees it, reading nothing else
of the state (so it works at an isolated site, with --js-domain and
--inbox-prefix as its receiver has them): whether its receiver answers and
what it holds, and each replication addressed to it with the target's
state and error; exits 1 when the receiver does not answer or the
replication changed last failed on the target.

Status never starts a server: without a reachable one (--server, the
config's server.url, or the embedded server of a running daemon or server on
the store) it says so and exits 1. --offline reads a store that no process
serves (e.g. a one-shot replicate's, between runs) by embedding a server on
it for the moment; a store that holds no snapjet state is refused even then.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opts := broker.Options{Server: g.server, Store: g.store, Listen: g.listen, Name: "snapjet status", JoinOnly: true, Log: g.log}
			if target != "" && file != "" {
				return &exitError{2, fmt.Errorf("--target and --config ask for different reports: give one")}
			}
			var cfg *config.Config
			if file != "" {
				var err error
				if cfg, err = loadConfig(cmd, file); err != nil {
					return err
				}
				if !cmd.Flags().Changed("server") && !cmd.Flags().Changed("store") {
					opts.Server, opts.Store = cfg.Server.URL, cfg.Server.Store
				}
			}
			if offline && opts.Server == "" {
				if !broker.HasState(opts.Store) {
					return &exitError{1, fmt.Errorf("status unknown: store %s holds no snapjet state (no server ever ran on it): check --store", opts.Store)}
				}
				opts.JoinOnly, opts.JoinRunning = false, true
			}
			var server config.Server
			if cfg != nil {
				server = cfg.Server
			}
			b, err := g.brokerConnectConfig(ctx, opts, server)
			if err != nil {
				return &exitError{1, fmt.Errorf("status unknown: %w", err)}
			}
			defer b.Close()
			switch {
			case target != "":
				return targetStatus(ctx, cmd.OutOrStdout(), b, target, asJSON)
			case cfg != nil:
				return configStatus(ctx, cmd.OutOrStdout(), b, cfg, asJSON)
			}
			all, err := readRecords(ctx, b)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if all == nil {
					all = []*coordinator.Replication{}
				}
				return enc.Encode(map[string]any{"replications": all})
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "REPLICATION\tSTATE\tATTEMPT\tSENT\tTARGET\tTARGET STATE\tAPPLIED\tERROR")
			for _, r := range all {
				for _, name := range coordinator.SortedNames(r.Targets) {
					t := r.Targets[name]
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.State, r.Attempt, human(r.BytesSent), name, t.State, human(t.BytesApplied), firstNonEmpty(t.Error, r.Error))
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&file, "config", "", "report per job of this config file (and use its server section)")
	cmd.Flags().BoolVar(&offline, "offline", false, "when no process serves the store, read it by embedding a server for the moment")
	cmd.Flags().StringVar(&target, "target", "", "report on this target alone, as its site sees it (works at an isolated site)")
	return cmd
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// targetName names a target directory stably across runs: its base name
// plus a short hash of the absolute path, so two "backup" dirs differ.
func targetName(dir string) string {
	abs, _ := filepath.Abs(dir)
	sum := sha256.Sum256([]byte(abs))
	base := unsafeName.ReplaceAllString(filepath.Base(abs), "_")
	if len(base) > 40 {
		base = base[:40]
	}
	return base + "-" + hex.EncodeToString(sum[:3])
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// sizeFlag is a flag holding a byte count, written as the config file
// writes sizes (1MiB, 50MB, 1.5GiB) or as plain bytes.
type sizeFlag struct{ n *int64 }

func (s sizeFlag) String() string {
	if s.n == nil {
		return ""
	}
	return config.FormatSize(*s.n)
}

func (s sizeFlag) Set(v string) error {
	n, err := config.ParseSize(v)
	if err != nil {
		return err
	}
	if n <= 0 {
		return fmt.Errorf("size %q: must be more than 0", v)
	}
	*s.n = n
	return nil
}

func (sizeFlag) Type() string { return "size" }
