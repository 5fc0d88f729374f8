package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/jobrun"
	"github.com/snapjet/snapjet/prune"
)

// opsCommands are the commands of unattended operation (issue 9) that
// work from the config file.
func opsCommands(g *globals) []*cobra.Command {
	return []*cobra.Command{configCmd(g), pruneCmd(g), runCmd(g)}
}

func configCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Work with the config file",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "check FILE",
		Short: "Validate the config file without running anything; exit 2 and list every error when it is wrong",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := loadConfig(cmd, args[0])
			if err != nil {
				return err
			}
			summarize(cmd.OutOrStdout(), cfg, time.Now())
			return nil
		},
	})
	return cmd
}

// loadConfig loads a config file; on errors it prints every one of them
// and returns an exit-2 error that counts them.
func loadConfig(cmd *cobra.Command, path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	var inv *config.InvalidError
	if errors.As(err, &inv) {
		for _, e := range inv.Errs {
			fmt.Fprintln(cmd.ErrOrStderr(), e.Error())
		}
		return nil, &exitError{2, fmt.Errorf("%s: %d error(s) in the config file, nothing was done", path, len(inv.Errs))}
	}
	return cfg, err
}

// summarize prints what the config file asks for, without secrets (it
// only ever names files).
func summarize(w io.Writer, cfg *config.Config, now time.Time) {
	fmt.Fprintf(w, "%s: OK, %d job(s), %d receiver(s)\n", cfg.File, len(cfg.Jobs), len(cfg.Receivers))
	s := cfg.Server
	if s.Embedded() {
		fmt.Fprintf(w, "server: embedded, store %s, listen %s\n", s.Store, s.Listen)
	} else {
		fmt.Fprintf(w, "server: %s\n", s.URL)
	}
	for _, f := range []struct{ name, path string }{{"creds", s.Creds}, {"nkey", s.NKey}, {"tls_ca", s.TLSCA}, {"tls_cert", s.TLSCert}, {"tls_key", s.TLSKey}, {"password_file", s.PasswordFile}} {
		if f.path != "" {
			fmt.Fprintf(w, "  %s: %s\n", f.name, f.path)
		}
	}
	for _, j := range cfg.Jobs {
		targets := make([]string, len(j.Targets))
		for i, t := range j.Targets {
			targets[i] = t.String()
		}
		fmt.Fprintf(w, "job %s: %s → %s\n", j.Name, j.Source, strings.Join(targets, ", "))
		fmt.Fprintf(w, "  schedule %q, next run %s\n", j.Schedule.Spec, j.Next(now).Format(time.RFC3339))
		fmt.Fprintf(w, "  retain on the source: %s; on the targets: %s\n", keepAll(j.Retain.Source.String()), keepAll(j.Retain.Target.String()))
		if j.RateLimit > 0 {
			fmt.Fprintf(w, "  rate limit %d bytes/s (%s/s)\n", j.RateLimit, human(j.RateLimit))
		}
	}
	for _, r := range cfg.Receivers {
		fmt.Fprintf(w, "receiver %s: %s\n", r.Target, r.Dir)
	}
}

func keepAll(policy string) string {
	if policy == "none" {
		return "everything (no policy)"
	}
	return policy
}

func pruneCmd(g *globals) *cobra.Command {
	var file string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "prune --config FILE [--dry-run] [JOB]",
		Short: "Apply the jobs' retention to the source and local targets; list every snapshot with keep/delete and the rule",
		Long: `Applies each job's retention policy (or only JOB's) to its snapshots on the
source and in its local target directories, and prints every snapshot with
keep or delete and the rule that decided it. Never deleted: the newest
snapshot a target shares with the source (its incremental base), what an
unfinished replication needs, anything while a target's last replication
failed or while the replication records cannot be read. On a target, only
read-only copies that snapjet received from this source are considered.
Remote targets are left to their receivers. --dry-run lists and deletes
nothing; without it, exactly the listed deletions are made.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return &exitError{2, fmt.Errorf("--config: name the config file, e.g. %s", config.DefaultPath)}
			}
			cfg, err := loadConfig(cmd, file)
			if err != nil {
				return err
			}
			jobs := cfg.Jobs
			if len(args) == 1 {
				j := cfg.Job(args[0])
				if j == nil {
					return &exitError{2, fmt.Errorf("no job %q in %s: name one of its jobs, or none for all", args[0], file)}
				}
				jobs = []config.Job{*j}
			}
			st := connectState(g, cfg.Server)
			defer st.close()
			return runPrune(cmd.Context(), cmd.OutOrStdout(), jobs, st, dryRun, time.Now())
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "the config file")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be deleted, delete nothing")
	return cmd
}

func runPrune(ctx context.Context, w io.Writer, jobs []config.Job, st prune.State, dryRun bool, now time.Time) error {
	var plans []*prune.Plan
	for _, j := range jobs {
		p, err := prune.Build(ctx, j, st, now, time.Local)
		if err != nil {
			return err
		}
		printPlan(w, p)
		plans = append(plans, p)
	}
	total := 0
	for _, p := range plans {
		total += p.Deletions()
	}
	if dryRun {
		fmt.Fprintf(w, "dry run: would delete %d snapshot(s)\n", total)
		return nil
	}
	var errs []error
	n := 0
	for _, p := range plans {
		deleted, err := p.Apply(ctx, btrfs.DeleteSubvolume, st)
		n += len(deleted)
		if err != nil {
			errs = append(errs, err)
		}
	}
	fmt.Fprintf(w, "deleted %d of %d snapshot(s)\n", n, total)
	if len(errs) > 0 {
		return &exitError{1, errors.Join(errs...)}
	}
	return nil
}

func printPlan(w io.Writer, p *prune.Plan) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, s := range p.Sides {
		switch {
		case s.Kind == "source":
			fmt.Fprintf(tw, "job %s: source snapshots in %s\n", p.Job, s.Dir)
		case s.Remote:
			fmt.Fprintf(tw, "job %s: target remote:%s (%s, deleted by its receiver)\n", p.Job, s.Target, s.Dir)
		default:
			fmt.Fprintf(tw, "job %s: target %s (%s)\n", p.Job, s.Dir, s.Target)
		}
		for _, it := range s.Items {
			verdict := "delete"
			if it.Keep {
				verdict = "keep"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", verdict, it.Name, it.Rule)
		}
	}
	for _, r := range p.Unknown {
		fmt.Fprintf(tw, "job %s: target remote:%s did not answer: nothing pruned there, and the source keeps everything\n", p.Job, r)
	}
	_ = tw.Flush()
}

// natsState reads the replication records and remote inventories. When
// the server cannot be reached it answers with that error, which makes
// prune keep everything rather than guess.
type natsState struct {
	jobrun.State
	b *broker.Broker
}

func connectState(g *globals, s config.Server) *natsState {
	b, err := connectConfig(g, s, "snapjet prune", true)
	if err != nil {
		g.log.Warn("cannot read the replication records; keeping every snapshot", "error", err)
		return &natsState{State: jobrun.State{Err: err}}
	}
	return &natsState{State: jobrun.State{NC: b.NC}, b: b}
}

func (s *natsState) close() {
	if s.b != nil {
		s.b.Close()
	}
}

// connectConfig reaches the server of a config file's server section;
// join lets it use the embedded server of a running daemon on the store.
func connectConfig(g *globals, s config.Server, name string, join bool) (*broker.Broker, error) {
	return g.brokerConnectConfig(context.Background(), broker.Options{Server: s.URL, Store: s.Store, Listen: s.Listen,
		MonitorListen: s.MonitorListen, Name: name, JoinRunning: join}, s)
}
