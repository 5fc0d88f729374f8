// Command chaos is snapjet's randomized fault runner (see package
// github.com/snapjet/snapjet/tests/chaos). scripts/chaos builds it and the
// snapjet binary and runs it:
//
//	scripts/chaos -seed 1 -trials 10
//
// It exits 0 when every trial held, 1 when one failed, 2 on bad usage or
// trouble of the runner itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/snapjet/snapjet/tests/chaos"
)

func main() {
	cfg := &chaos.Config{Out: os.Stdout}
	var faults string
	flag.StringVar(&cfg.Bin, "snapjet", "", "the snapjet binary under test (required)")
	flag.StringVar(&cfg.NATSServer, "nats-server", "", "path of a stock nats-server binary to run instead of snapjet server")
	flag.Uint64Var(&cfg.Seed, "seed", 1, "seed of the run; trial n draws its choices from (seed, n)")
	flag.IntVar(&cfg.Trials, "trials", 10, "number of trials")
	flag.IntVar(&cfg.First, "trial", 1, "number of the first trial (rerun a failure with -seed S -trial N -trials 1)")
	flag.StringVar(&cfg.Mode, "mode", "", "send or replicate (default: both, one trial in three replicate)")
	flag.StringVar(&faults, "faults", "", "comma-separated fault kinds to choose from (default all): "+
		strings.Join([]string{chaos.SenderKill, chaos.ReceiverKill, chaos.ReceiverDown, chaos.ServerKill, chaos.ServerRestart, chaos.LinkCut}, ","))
	flag.StringVar(&cfg.WorkDir, "workdir", "", "directory for the trials' images and mount points (default $TMPDIR)")
	flag.StringVar(&cfg.LogDir, "logs", "", "directory for failing trials' logs (default a new /tmp/snapjet-chaos-logs.*)")
	flag.BoolVar(&cfg.KeepLogs, "keep-logs", false, "keep the logs of passing trials too")
	flag.BoolVar(&cfg.Verbose, "v", false, "print every trial's timeline")
	flag.Parse()
	if cfg.Bin == "" || cfg.Trials < 1 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if faults != "" {
		cfg.Faults = strings.Split(faults, ",")
	}
	if cfg.Mode != "" && cfg.Mode != "send" && cfg.Mode != "replicate" {
		fmt.Fprintln(os.Stderr, "chaos: -mode is send or replicate")
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "chaos: run as root (loop devices and btrfs mounts)")
		os.Exit(2)
	}
	var err error
	if cfg.NATSServer != "" {
		if cfg.NATSServer, err = filepath.Abs(cfg.NATSServer); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(2)
		}
	}
	if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	if cfg.LogDir == "" {
		if cfg.LogDir, err = os.MkdirTemp("", "snapjet-chaos-logs."); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			os.Exit(2)
		}
	}

	// The first SIGINT/SIGTERM stops the trial under way through its
	// orderly path (processes killed, filesystems unmounted); a second one
	// cleans up at once and exits.
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		fmt.Fprintln(os.Stderr, "chaos: interrupted; cleaning up the trial under way (again to force)")
		cancel()
		<-sigs
		chaos.Abandon()
		os.Exit(130)
	}()

	server := "snapjet server"
	if cfg.NATSServer != "" {
		server = cfg.NATSServer
	}
	fmt.Printf("== snapjet chaos: seed %d, trials %d-%d, server %s, logs of failures in %s\n", cfg.Seed, cfg.First, cfg.First+cfg.Trials-1, server, cfg.LogDir)
	sum, err := chaos.Run(ctx, cfg)
	sum.Report(os.Stdout, cfg.Seed)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	for _, r := range sum.Results {
		if r.Failed() {
			os.Exit(1)
		}
	}
}
