package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/daemon"
	"github.com/snapjet/snapjet/jobrun"
)

func daemonCmd(g *globals) *cobra.Command {
	var file, applier string
	cmd := &cobra.Command{
		Use:   "daemon --config FILE",
		Short: "Run the config file: embedded server, receivers and job schedules, until SIGTERM; SIGHUP reloads",
		Long: `Runs everything the config file describes in one process: the embedded NATS
server (unless server.url names an external one), a receiver for every entry
of receivers:, and every job on its schedule (snapshot, replicate, prune, as
snapjet run). A job that is due while its previous run is still active is
skipped ("skipping: previous run still active").

SIGHUP reloads the config file: an invalid one is refused (its errors are
logged) and the old one stays in force; the server section needs a restart.
SIGTERM stops scheduling, cancels the runs in progress so that they
checkpoint (the next run resumes them), and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				file = config.DefaultPath
			}
			limitMemoryTo(daemonMemoryLimit)
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			return runDaemon(cmd.Context(), g, cmd.ErrOrStderr(), file, applier, hup)
		},
	}
	cmd.Flags().StringVar(&file, "config", config.DefaultPath, "the config file")
	addApplierFlag(cmd, &applier)
	return cmd
}

// runDaemon runs the daemon until ctx ends; every receive on reload
// rereads the config file.
func runDaemon(ctx context.Context, g *globals, stderr io.Writer, file, applier string, reload <-chan os.Signal) error {
	cfg, err := config.Load(file)
	if err != nil {
		var inv *config.InvalidError
		if errors.As(err, &inv) {
			for _, e := range inv.Errs {
				fmt.Fprintln(stderr, e.Error())
			}
			return &exitError{2, fmt.Errorf("%s: %d error(s) in the config file, nothing was started", file, len(inv.Errs))}
		}
		return err
	}
	addr := firstNonEmpty(g.metricsListen, cfg.Server.MetricsListen)
	m, stopMetrics, err := g.startMetrics(addr)
	if err != nil {
		return err
	}
	defer stopMetrics()
	b, err := connectConfig(g, cfg.Server, "snapjet daemon", false)
	if err != nil {
		return err
	}
	defer b.Close()
	d := daemon.New(b.NC, b.JS, g.log, daemon.Options{Applier: applier, Metrics: m,
		JobOpts: jobrun.Options{Log: g.log, Applier: applier, Metrics: m}})
	d.Apply(cfg)
	g.log.Info("daemon running", "config", file, "jobs", len(cfg.Jobs), "receivers", len(cfg.Receivers))
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx)
	}()
	for {
		select {
		case <-done:
			return nil
		case <-reload:
			next, err := config.Load(file)
			var inv *config.InvalidError
			switch {
			case errors.As(err, &inv):
				msgs := make([]string, len(inv.Errs))
				for i, e := range inv.Errs {
					msgs[i] = e.Error()
				}
				g.log.Error("reload refused: the config file has errors; keeping the running config", "config", file, "errors", strings.Join(msgs, "; "))
				continue
			case err != nil:
				g.log.Error("reload refused; keeping the running config", "config", file, "error", err)
				continue
			}
			if next.Server != cfg.Server {
				// metrics_listen too: the endpoint stays where it is.
				g.log.Warn("the server section changed; restart the daemon to apply it (jobs and receivers are reloaded now)")
			}
			d.Apply(next)
			cfg = next
			g.log.Info("config reloaded", "config", file, "jobs", len(next.Jobs), "receivers", len(next.Receivers))
		}
	}
}
