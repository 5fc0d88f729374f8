package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/jobstatus"
)

// configStatus reports on what a config file runs: per job and target the
// last success, and per receiver whether it answers and how its target's
// last replication went. It reads the records only for jobs, so a site
// whose config has receivers alone needs no more than its own targets'
// keys. It returns an exit-1 error naming every job overdue and every
// receiver in trouble.
func configStatus(ctx context.Context, out io.Writer, b *broker.Broker, cfg *config.Config, asJSON bool) error {
	jobs := []jobstatus.Job{}
	if len(cfg.Jobs) > 0 {
		all, err := readRecords(ctx, b)
		if err != nil {
			return err
		}
		jobs = jobstatus.Of(cfg.Jobs, all, time.Now())
	}
	receivers := []targetStatusDoc{}
	if len(cfg.Receivers) > 0 {
		names := make([]string, len(cfg.Receivers))
		for i, r := range cfg.Receivers {
			names[i] = r.Target
		}
		var err error
		if receivers, err = readTargets(ctx, b, names); err != nil {
			return err
		}
		for i := range receivers {
			if receivers[i].Receiver == nil {
				// The config's receivers run in its daemon: that is what to check.
				receivers[i].ReceiverError = fmt.Sprintf("the daemon of %s runs it: is it running (systemctl status snapjet-daemon)? %s", cfg.File, receivers[i].ReceiverError)
			}
		}
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(map[string]any{"jobs": jobs, "receivers": receivers}); err != nil {
			return err
		}
	} else if err := printConfigStatus(out, jobs, cfg.Receivers, receivers); err != nil {
		return err
	}
	var overdue []string
	for _, j := range jobs {
		if j.Overdue {
			overdue = append(overdue, j.Name)
		}
	}
	var errs []error
	if len(overdue) > 0 {
		errs = append(errs, fmt.Errorf("overdue (no success within twice the interval): %s", strings.Join(overdue, ", ")))
	}
	for _, d := range receivers {
		if err := targetVerdict(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return &exitError{1, errors.Join(errs...)}
	}
	return nil
}

func printConfigStatus(out io.Writer, jobs []jobstatus.Job, cfgReceivers []config.Receiver, receivers []targetStatusDoc) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if len(jobs) > 0 || len(receivers) == 0 {
		fmt.Fprintln(w, "JOB\tTARGET\tLAST SUCCESS\tAGE\tNEXT RUN\tRUNNING\tSTATUS\tLAST ERROR")
		for _, j := range jobs {
			for _, t := range j.Targets {
				last, age := "never", "-"
				if !t.LastSuccess.IsZero() {
					last, age = t.LastSuccess.Format(time.RFC3339), t.Age.Round(time.Second).String()
				}
				running := "-"
				if r := t.Running; r != nil {
					running = fmt.Sprintf("%s %s/%s", r.ID, human(r.BytesApplied), human(max(r.BytesSent, r.Estimated)))
				}
				status := "ok"
				if t.Overdue {
					status = "OVERDUE"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, t.Display, last, age, j.NextRun.Format(time.RFC3339), running, status, t.LastError)
			}
		}
	}
	if len(receivers) > 0 {
		if len(jobs) > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w, "RECEIVER\tDIR\tANSWERS\tLAST REPLICATION\tSTATE\tUPDATED\tERROR")
		for i, d := range receivers {
			answers, last, state, updated, reason := "yes", "-", "-", "-", ""
			if d.Receiver == nil {
				answers, reason = "NO", d.ReceiverError
			}
			if n := len(d.Work); n > 0 {
				l := d.Work[n-1]
				last, state, updated = l.ID, string(l.TargetState), l.Updated.Format(time.RFC3339)
				reason = firstNonEmpty(reason, l.Error)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.Target, cfgReceivers[i].Dir, answers, last, state, updated, reason)
		}
	}
	return w.Flush()
}
