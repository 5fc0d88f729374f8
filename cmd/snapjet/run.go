package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/jobrun"
)

func runCmd(g *globals) *cobra.Command {
	var file, applier, rateLimit string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "run --config FILE [--dry-run] JOB",
		Short: "Run one job of the config file now: snapshot, replicate to its targets, prune",
		Long: `Runs JOB of the config file once, now: takes a snapshot of its source,
replicates it to every target (local directories get in-process receivers,
remote:NAME targets need their running receivers), then applies the job's
retention on the source and the local targets. Exit codes as send: 0 every
target committed, 1 a target failed (the next run retries it; retention
keeps what it needs), 2 bad input or config.

--dry-run does nothing, like btrbk's: no snapshot, no replication, no
deletion; it prints the retention plan as it stands (each snapshot with
keep/delete and its rule).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return &exitError{2, fmt.Errorf("--config: name the config file, e.g. %s", config.DefaultPath)}
			}
			cfg, err := loadConfig(cmd, file)
			if err != nil {
				return err
			}
			job := cfg.Job(args[0])
			if job == nil {
				return &exitError{2, fmt.Errorf("no job %q in %s: name one of its jobs", args[0], file)}
			}
			if cmd.Flags().Changed("rate-limit") {
				if job.RateLimit, err = config.ParseRate(rateLimit); err != nil {
					return &exitError{2, fmt.Errorf("--rate-limit: %w", err)}
				}
			}
			m, stopMetrics, err := g.startMetrics(g.metricsListen)
			if err != nil {
				return err
			}
			defer stopMetrics()
			b, err := connectConfig(g, cfg.Server, "snapjet run "+job.Name, true)
			if err != nil {
				return err
			}
			defer b.Close()
			w := cmd.OutOrStdout()
			opt := jobrun.Options{Log: g.log, Applier: applier, Metrics: m}
			if dryRun {
				p, err := jobrun.Plan(cmd.Context(), b.NC, *job, opt)
				if err != nil {
					return err
				}
				printPlan(w, p)
				fmt.Fprintf(w, "dry run: nothing replicated; retention would delete %d snapshot(s) now\n", p.Deletions())
				return nil
			}
			prog := newProgress(g.log)
			opt.OnProgress = prog.update
			out, err := jobrun.Run(cmd.Context(), b.NC, b.JS, *job, opt)
			prog.done()
			if err != nil {
				return err
			}
			return reportRun(w, job.Name, out)
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "the config file")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "change nothing: print the retention plan only")
	cmd.Flags().StringVar(&rateLimit, "rate-limit", "", "bytes per second on the wire, e.g. 50MB/s, instead of the job's rate_limit (0: no limit)")
	addApplierFlag(cmd, &applier)
	return cmd
}

// reportRun prints each target's outcome and the pruning, and returns the
// exit-1 error of a run with failed targets or failed deletions.
func reportRun(w io.Writer, job string, out *jobrun.Outcome) error {
	for _, t := range out.Targets {
		if t.Committed {
			fmt.Fprintf(w, "%s: committed %s (replication %s)\n", t.Display, t.Path, t.Replication)
		} else {
			fmt.Fprintf(w, "%s: %s: %s (replication %s)\n", t.Display, firstNonEmpty(string(t.State), "failed"), t.Error, t.Replication)
		}
	}
	if out.Plan != nil {
		printPlan(w, out.Plan)
		fmt.Fprintf(w, "retention deleted %d of %d snapshot(s)\n", len(out.Deleted), out.Plan.Deletions())
	}
	var errs []error
	if failed := out.Failed(); len(failed) > 0 {
		names := make([]string, len(failed))
		for i, t := range failed {
			names[i] = t.Display
		}
		errs = append(errs, fmt.Errorf("job %s: snapshot %s failed on %d of %d targets (%s); the next run retries them",
			job, out.Snapshot, len(failed), len(out.Targets), strings.Join(names, ", ")))
	}
	if out.PruneErr != nil {
		errs = append(errs, fmt.Errorf("job %s: retention: %w", job, out.PruneErr))
	}
	if len(errs) > 0 {
		return &exitError{1, errors.Join(errs...)}
	}
	return nil
}
