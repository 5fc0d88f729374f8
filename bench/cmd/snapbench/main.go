// Command snapbench measures snapjet against the ways btrfs snapshots are
// replicated today: the raw `btrfs send | btrfs receive` pipe (the local
// limit) and `btrfs send | zstd -3 | ssh ... 'zstd -d | btrfs receive'`.
// It creates its own loop-backed btrfs filesystems, generates the data sets
// from a seed, runs every method on the same snapshots, and writes a
// Markdown table and a JSON file. bench/run builds and starts it; it is a
// program, not a test, so `go test ./...` never runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/bench/wanlink"
	"github.com/snapjet/snapjet/internal/loopfs"
)

type config struct {
	quick      bool
	snapjet    string
	natsServer string
	results    string
	readme     string
	workRoot   string
	seed       uint64
	verify     bool
	profile    bool
	sections   map[string]bool
	rowTimeout time.Duration
	wan        wanConfig
}

// sizes scale every data set; --quick divides them for a smoke run.
type sizes struct {
	random      int64
	randomFiles int
	text        int64
	smallFiles  int
	islands     [2]int64
	image       int64
}

var (
	full  = sizes{random: 2 << 30, randomFiles: 4, text: 2 << 30, smallFiles: 100000, islands: [2]int64{2 << 30, 8 << 30}, image: 24 << 30}
	quick = sizes{random: 256 << 20, randomFiles: 4, text: 256 << 20, smallFiles: 10000, islands: [2]int64{256 << 20, 1 << 30}, image: 4 << 30}
)

const allSections = "a,b,c,d,f,resume,memory"

// wanSection is run only when asked for (--wan or --sections wan): it
// takes longer than the rest together.
const wanSectionName = "wan"

func main() {
	var cfg config
	var sections string
	flag.BoolVar(&cfg.quick, "quick", false, "smoke run: 256 MiB instead of 2 GiB, 10,000 instead of 100,000 files")
	flag.StringVar(&cfg.snapjet, "snapjet", "snapjet", "snapjet binary")
	flag.StringVar(&cfg.natsServer, "nats-server", "nats-server", "standalone nats-server binary")
	flag.StringVar(&cfg.results, "results", "bench/results", "directory for the JSON and Markdown results")
	flag.StringVar(&cfg.readme, "readme", "bench/README.md", "README whose results section is replaced (empty: leave it)")
	flag.StringVar(&cfg.workRoot, "work", "/var/tmp", "directory for the loop images, stores and keys (on the local disk)")
	flag.Uint64Var(&cfg.seed, "seed", 1, "seed of every generated data set")
	flag.BoolVar(&cfg.verify, "verify", true, "compare every received tree with its source (untimed)")
	flag.BoolVar(&cfg.profile, "profile", false, "run snapjet with --cpuprofile and put the top of the profiles of rows that miss a target into the results")
	flag.StringVar(&sections, "sections", allSections, "comma-separated parts to run: "+allSections)
	flag.DurationVar(&cfg.rowTimeout, "row-timeout", 0, "give up on a row after this long (default 10m, 3m with --quick)")
	wan := flag.Bool("wan", false, "run the WAN section (alone, unless --sections names more)")
	rtts := flag.String("wan-rtts", "0,20,80", "WAN round-trip times, ms")
	rates := flag.String("wan-rates", "200,1000", "WAN link rates, Mbit/s")
	wanSets := flag.String("wan-sets", "random,text", "WAN data sets")
	flag.IntVar(&cfg.wan.repeats, "repeats", 3, "runs of every WAN row (median and range are reported)")
	flag.StringVar(&cfg.wan.compress, "wan-compress", "", "snapjet's --compress in the WAN rows (default: snapjet's own, auto)")
	flag.Int64Var(&cfg.wan.size, "wan-size", 0, "bytes per WAN data set (default 1 GiB, 256 MiB with --quick)")
	flag.Parse()
	sectionsSet := false
	flag.Visit(func(f *flag.Flag) { sectionsSet = sectionsSet || f.Name == "sections" })
	if *wan && !sectionsSet {
		sections = wanSectionName
	} else if *wan {
		sections += "," + wanSectionName
	}
	var err error
	if cfg.wan.rtts, err = ints(*rtts); err == nil {
		cfg.wan.rates, err = ints(*rates)
	}
	if err != nil || cfg.wan.repeats < 1 {
		fmt.Fprintf(os.Stderr, "snapbench: --wan-rtts, --wan-rates: comma-separated integers; --repeats at least 1 (%v)\n", err)
		os.Exit(2)
	}
	for _, s := range strings.Split(*wanSets, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.wan.sets = append(cfg.wan.sets, s)
		}
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	cfg.sections = map[string]bool{}
	for _, s := range strings.Split(sections, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if !strings.Contains(","+allSections+","+wanSectionName+",", ","+s+",") {
				fmt.Fprintf(os.Stderr, "snapbench: unknown section %q (have %s,%s)\n", s, allSections, wanSectionName)
				os.Exit(2)
			}
			cfg.sections[s] = true
		}
	}
	if cfg.rowTimeout == 0 {
		cfg.rowTimeout = 10 * time.Minute
		if cfg.quick {
			cfg.rowTimeout = 3 * time.Minute
		}
	}
	// Every exit path below returns through run's deferred cleanup; a signal
	// only cancels the context.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		slog.Error("benchmark failed", "err", err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config) error {
	for _, bin := range []*string{&cfg.snapjet, &cfg.natsServer} {
		path, err := exec.LookPath(*bin)
		if err != nil {
			return fmt.Errorf("find %s: %w (bench/run builds and installs it)", *bin, err)
		}
		if *bin, err = filepath.Abs(path); err != nil {
			return err
		}
	}
	for _, bin := range []string{"zstd", "ssh", "ssh-keygen", "btrfs"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s is missing (bench/run installs it): %w", bin, err)
		}
	}
	if why := loopfs.Available(); why != "" {
		return fmt.Errorf("real btrfs unavailable: %s", why)
	}
	removeStale(cfg.workRoot)
	wanlink.RemoveStale()
	work, err := os.MkdirTemp(cfg.workRoot, workPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := os.WriteFile(filepath.Join(work, "pid"), []byte(fmt.Sprint(os.Getpid())), 0o644); err != nil {
		return err
	}
	b := &bench{cfg: cfg, size: full, work: work, sets: map[string]*dataSet{}}
	mode := "full"
	if cfg.quick {
		b.size, mode = quick, "quick"
	}
	b.res = &report.Results{Mode: mode, Seed: cfg.seed, Started: time.Now().UTC()}
	if b.src, err = loopfs.Create(filepath.Join(work, "src"), b.size.image); err != nil {
		return fmt.Errorf("source filesystem: %w", err)
	}
	defer destroy(b.src)
	if b.tgt, err = loopfs.Create(filepath.Join(work, "tgt"), b.size.image); err != nil {
		return fmt.Errorf("target filesystem: %w", err)
	}
	defer destroy(b.tgt)
	b.res.Machine = report.Describe(ctx, work, map[string][]string{
		"btrfs-progs": {"btrfs", "--version"},
		"zstd":        {"zstd", "--version"},
		"openssh":     {"ssh", "-V"},
		"nats-server": {cfg.natsServer, "--version"},
		// bench/run builds snapjet from the working tree, so this says
		// which commit it was and whether the tree had changes on top.
		"snapjet source": {"git", "describe", "--always", "--dirty"},
	})
	err = b.runSections(ctx)
	b.res.Finished = time.Now().UTC()
	for _, ds := range b.order {
		b.res.Datasets = append(b.res.Datasets, *ds.Dataset)
	}
	if err != nil {
		if len(b.res.WAN) > 0 {
			// A WAN grid takes long enough to be stopped on purpose; what
			// it measured is kept, in the results files only.
			b.res.WANCells = report.SummariseWAN(b.res.WAN)
			b.res.Notes = append(b.res.Notes, "interrupted ("+err.Error()+"): only the rows above ran")
			b.cfg.readme = ""
			if werr := b.write(); werr != nil {
				slog.Error("writing the partial results", "err", werr)
			}
		}
		return err
	}
	b.evaluateTargets()
	return b.write()
}

func ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	return out, nil
}

func destroy(fs *loopfs.FS) {
	if err := fs.Destroy(); err != nil {
		slog.Error("cleanup", "err", err)
	}
}

const workPrefix = "snapbench-"

// removeStale unmounts and removes what an earlier run that was killed
// outright (SIGKILL leaves no chance to clean up) left under root.
func removeStale(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, workPrefix+"*"))
	for _, dir := range dirs {
		var pid int
		data, err := os.ReadFile(filepath.Join(dir, "pid"))
		if err == nil {
			fmt.Sscan(string(data), &pid)
		}
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		slog.Warn("removing what an earlier run left", "dir", dir)
		for _, name := range []string{"src", "tgt"} {
			fs := &loopfs.FS{Dir: filepath.Join(dir, name, "mnt"), Image: filepath.Join(dir, name, "btrfs.img")}
			if out, err := exec.Command("losetup", "-j", fs.Image).Output(); err == nil {
				if dev, _, ok := strings.Cut(string(out), ":"); ok {
					fs.Device = dev
				}
			}
			destroy(fs)
		}
		os.RemoveAll(dir)
	}
}

func (b *bench) write() error {
	if err := os.MkdirAll(b.cfg.results, 0o755); err != nil {
		return err
	}
	stamp := b.res.Started.Format("20060102T150405Z")
	base := filepath.Join(b.cfg.results, stamp+"-"+b.res.Mode)
	if err := report.WriteJSON(base+".json", b.res); err != nil {
		return err
	}
	md := report.Markdown(b.res)
	if err := os.WriteFile(base+".md", []byte(md), 0o644); err != nil {
		return err
	}
	slog.Info("results written", "json", base+".json", "markdown", base+".md")
	fmt.Print(md)
	if b.cfg.readme == "" {
		return nil
	}
	if len(b.res.Rows) == 0 && len(b.res.Resume) == 0 && len(b.res.Memory) == 0 {
		// A WAN-only run would replace the full run's tables; its own
		// table is in the results files.
		slog.Info("README left alone: only the WAN section ran", "readme", b.cfg.readme)
		return nil
	}
	return report.UpdateReadme(b.cfg.readme, md)
}
