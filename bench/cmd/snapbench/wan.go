package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/snapjet/snapjet/bench/dataset"
	"github.com/snapjet/snapjet/bench/proctree"
	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/bench/sshloop"
	"github.com/snapjet/snapjet/bench/wanlink"
	"github.com/snapjet/snapjet/bench/wire"
	"github.com/snapjet/snapjet/streams"
)

// The WAN section puts the receiving side (sshd with its zstd -d and btrfs
// receive; snapjet receive) in a network namespace behind a veth pair
// shaped with tbf, with a delay relay adding the round trip. The sending
// side (btrfs send, zstd, ssh; snapjet send and nats-server) stays on the
// host: nats-server sits with the sender, as a deployment with the server
// at the source would have it, so the receiver's pulls cross the link.
//
//	ssh:     btrfs send | zstd -3 | ssh ──► relay (host) ══veth+tbf══► sshd (ns) ─ zstd -d | btrfs receive
//	snapjet: snapjet send ─► nats-server ─► relay (host) ══veth+tbf══► snapjet receive (ns)

const (
	methodWANSSH     = "ssh + zstd -3"
	methodWANSnapjet = "snapjet send/receive"
	// sampleEvery is the resolution of the link's idle gaps.
	sampleEvery = 10 * time.Millisecond
)

// wanConfig is the grid of the WAN section.
type wanConfig struct {
	rtts    []int // ms
	rates   []int // Mbit/s
	sets    []string
	repeats int
	// compress is the snapjet rows' --compress ("": snapjet's default).
	compress string
	size     int64 // bytes per data set; 0: 1 GiB, 256 MiB with --quick
}

// profileCell is where --profile takes snapjet's CPU profiles in the WAN
// section: the CPU-bound cell.
const profileCell = "wan-text-1000mbit-20ms"

func (b *bench) wanSection(ctx context.Context) error {
	wc := b.cfg.wan
	size := wc.size
	if size == 0 {
		size = 1 << 30
		if b.cfg.quick {
			size = 256 << 20
		}
	}
	link, err := wanlink.Create(ctx)
	if err != nil {
		return err
	}
	// Every row has ended its processes in the namespace by the time this
	// runs: the rows reap or kill their whole process group.
	defer func() {
		if err := link.Destroy(); err != nil {
			slog.Error("cleanup", "err", err)
		}
	}()
	slog.Info("wan link", "namespace", link.NS, "veth", link.Host, "host", link.HostIP, "peer", link.PeerIP)
	sshSrv, err := sshloop.SetupOn(ctx, filepath.Join(b.work, "ssh-wan"), link.PeerIP)
	if err != nil {
		return err
	}
	for _, set := range wc.sets {
		ds, err := b.wanSet(ctx, set, size)
		if err != nil {
			return err
		}
		for _, rate := range wc.rates {
			if err := link.Shape(ctx, rate); err != nil {
				return err
			}
			for _, rtt := range wc.rtts {
				for rep := 1; rep <= wc.repeats; rep++ {
					// The methods alternate within a repeat, so a change in
					// the machine's load falls on both alike.
					for _, method := range []string{methodWANSSH, methodWANSnapjet} {
						if err := ctx.Err(); err != nil {
							return err
						}
						w := b.wanRow(ctx, link, sshSrv, ds, set, method, rate, rtt, rep)
						b.res.WAN = append(b.res.WAN, w)
						slog.Info("wan row done", "set", set, "method", method, "rate", rate, "rtt", rtt, "repeat", rep,
							"wall", fmt.Sprintf("%.2f", w.WallSeconds), "use", fmt.Sprintf("%.2f", w.Utilisation), "gap_ms", w.LongestGapMs, "steady_gap_ms", w.SteadyGapMs,
							"verified", w.Verified, "err", w.Error)
					}
				}
			}
		}
	}
	b.res.WANCells = report.SummariseWAN(b.res.WAN)
	b.attachProfiles(profileCell)
	return nil
}

// wanSet generates the WAN section's own data sets, sized apart from sets
// a and b so a WAN run does not need their 2 GiB.
func (b *bench) wanSet(ctx context.Context, set string, size int64) (*dataSet, error) {
	switch set {
	case "random":
		return b.prepare(ctx, "wan-random", "random, incompressible, 4 large files (WAN)", func(ctx context.Context, dir string) error {
			return dataset.Random(ctx, dir, size, 4, b.cfg.seed)
		})
	case "text":
		return b.prepare(ctx, "wan-text", textDesc+" (WAN)", func(ctx context.Context, dir string) error {
			return dataset.Text(ctx, dir, size, b.cfg.seed)
		})
	}
	return nil, fmt.Errorf("unknown WAN data set %q (have random, text)", set)
}

// lineLimit bounds each direction of the delay relay: the bytes in flight
// on the emulated path (rate × one-way delay), twice over, plus room for a
// queue while the shaped link is busy. It does not stand in for TCP's
// window; see bench/README.md.
func lineLimit(rateMbit, rttMs int) int {
	inFlight := int64(rateMbit) * 1e6 / 8 * int64(rttMs) / 2 / 1000
	return int(2*inFlight) + 4<<20
}

// wanRow runs one method once over the link and measures it.
func (b *bench) wanRow(ctx context.Context, link *wanlink.Link, sshSrv *sshloop.Server, ds *dataSet, set, method string, rate, rtt, rep int) report.WANRow {
	w := report.WANRow{Set: set, Method: method, RateMbit: rate, RTTms: rtt, Repeat: rep, StreamBytes: ds.StreamBytes}
	var stats wanlink.Stats
	oneWay := time.Duration(rtt) * time.Millisecond / 2
	limit := lineLimit(rate, rtt)
	profileAs := ""
	if name := fmt.Sprintf("wan-%s-%dmbit-%dms", set, rate, rtt); rep == 1 && name == profileCell {
		profileAs = name
	}
	var row report.Row
	switch method {
	case methodWANSSH:
		row = b.row(ctx, ds, method, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
			sshd := &proc{cmd: link.Command(sshSrv.Args()[0], sshSrv.Args()[1:]...), stderr: &tail{}}
			sshd.cmd.Stderr = sshd.stderr
			if err := g.Start(sshd.cmd); err != nil {
				return 0, "", err
			}
			defer sshd.stop(g, 5*time.Second)
			if err := sshSrv.WaitReady(ctx); err != nil {
				return 0, "", fmt.Errorf("%w: %s", err, sshd.stderr)
			}
			relay, err := wire.NewDelayRelay("127.0.0.1:0", net.JoinHostPort(sshSrv.Host, strconv.Itoa(sshSrv.Port)), oneWay, limit)
			if err != nil {
				return 0, "", err
			}
			defer relay.Close()
			client := &proc{cmd: sshSrv.ClientVia(relay.Addr(), "zstd -d -c -q | btrfs receive "+shellQuote(b.tgt.Dir)), stderr: &tail{}}
			client.cmd.Stderr = client.stderr
			var n atomic.Int64
			var s *wanlink.Sampler
			wall, err := b.timed(func() error {
				s = link.Sample(sampleEvery)
				return pipeline(g, []*proc{b.sendCmd(ds), command("zstd", "-3", "-c", "-q"), client}, 1, &n)
			})
			if s != nil {
				stats = s.Stop()
				b.trace(s, set, method, rate, rtt, rep)
			}
			// The session's processes end just after the client; wait
			// (bounded) so sshd's rusage includes them.
			for deadline := time.Now().Add(5 * time.Second); len(g.Live(sshd.cmd.Process.Pid)) > 1 && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
			r.WireBytes = n.Load()
			w.PayloadBytes = relay.Up()
			return wall, ds.snap, err
		})
	case methodWANSnapjet:
		row = b.row(ctx, ds, method, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
			store, err := b.freshStore(ctx, ds)
			if err != nil {
				return 0, "", err
			}
			defer os.RemoveAll(store)
			port, err := wire.FreePort()
			if err != nil {
				return 0, "", err
			}
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			server := command(b.cfg.natsServer, "-js", "-sd", store, "-p", strconv.Itoa(port), "-a", "127.0.0.1")
			if err := g.Start(server.cmd); err != nil {
				return 0, "", err
			}
			defer server.stop(g, 10*time.Second)
			if err := waitListening(ctx, addr); err != nil {
				return 0, "", fmt.Errorf("nats-server: %w: %s", err, server.stderr)
			}
			// The receiver reaches the server only through the relay, on
			// the host end of the link.
			relay, err := wire.NewDelayRelay(net.JoinHostPort(link.HostIP, "0"), addr, oneWay, limit)
			if err != nil {
				return 0, "", err
			}
			defer relay.Close()
			recv := b.snapjet(profileAs, "receive", "--server", "nats://"+relay.Addr(), "--target", targetName, b.tgt.Dir)
			recv.cmd = link.Command(recv.cmd.Path, recv.cmd.Args[1:]...)
			recv.cmd.Stderr = recv.stderr
			if err := g.Start(recv.cmd); err != nil {
				return 0, "", err
			}
			// Stopped before the server (deferred later, runs earlier), so
			// it does not spend the row's end reconnecting.
			defer recv.stop(g, 10*time.Second)
			if err := waitReceiver(ctx, "nats://"+addr, targetName, 30*time.Second); err != nil {
				return 0, "", fmt.Errorf("%w: %s", err, recv.stderr)
			}
			var s *wanlink.Sampler
			args := []string{"send", "--server", "nats://" + addr, "--to", targetName}
			if b.cfg.wan.compress != "" {
				args = append(args, "--compress", b.cfg.wan.compress)
			}
			send := b.snapjet(profileAs, append(args, ds.subvol)...)
			wall, err := b.timed(func() error {
				s = link.Sample(sampleEvery)
				if err := g.Start(send.cmd); err != nil {
					return err
				}
				return send.wait(g)
			})
			w.Compression = logField(send.stderr.String(), "compression")
			if s != nil {
				stats = s.Stop()
				b.trace(s, set, method, rate, rtt, rep)
			}
			w.PayloadBytes = relay.Down()
			r.WireBytes = relay.Down()
			if err != nil {
				return wall, "", err
			}
			rep, err := b.latestReplication(ctx, "--server", "nats://"+addr)
			if err != nil {
				return wall, "", err
			}
			return wall, rep.Snapshot, nil
		})
	}
	w.WallSeconds, w.CPUSeconds, w.Verified, w.Error = row.WallSeconds, row.CPUSeconds, row.Verified, row.Error
	w.LinkBytes = stats.Bytes
	w.LongestGapMs = float64(stats.LongestGap) / float64(time.Millisecond)
	w.Gaps100 = stats.Gaps100
	w.SteadyGapMs = float64(stats.SteadyGap) / float64(time.Millisecond)
	w.SteadyGaps100 = stats.SteadyGaps100
	if row.WallSeconds > 0 {
		w.Utilisation = float64(stats.Bytes) * 8 / (float64(rate) * 1e6 * row.WallSeconds)
	}
	return w
}

// trace keeps a row's link samples under results/wan-traces/ (not
// committed: a few hundred KB per run).
func (b *bench) trace(s *wanlink.Sampler, set, method string, rate, rtt, rep int) {
	m := "ssh"
	if method == methodWANSnapjet {
		m = "snapjet"
	}
	name := fmt.Sprintf("%s-%s-%s-%dmbit-%dms-%d.txt", b.res.Started.Format("20060102T150405Z"), set, m, rate, rtt, rep)
	if err := s.WriteTrace(filepath.Join(b.cfg.results, "wan-traces", name)); err != nil {
		slog.Warn("link trace", "err", err)
	}
}

// waitReceiver waits until snapjet receive for target answers its
// inventory endpoint, which it serves once it is connected and watching
// for work, so the timed send does not include the receiver's start.
func waitReceiver(ctx context.Context, url, target string, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		return fmt.Errorf("connect to %s: %w", url, err)
	}
	defer nc.Close()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := nc.RequestWithContext(rctx, streams.InventorySubject(target), nil)
		rcancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("snapjet receive %s did not answer within %v: %w", target, bound, err)
		}
		// No responders comes back at once; wait for the receiver's
		// subscription rather than spin.
		if errors.Is(err, nats.ErrNoResponders) {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
}

// logField is the value of key in the last slog text line of log that has
// it ("" if none): the sender logs its chunks per compression level.
func logField(log, key string) string {
	i := strings.LastIndex(log, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := log[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	if j := strings.IndexAny(v, " \n"); j >= 0 {
		v = v[:j]
	}
	return v
}
