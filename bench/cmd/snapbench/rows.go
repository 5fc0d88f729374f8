package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/snapjet/snapjet/bench/proctree"
	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/bench/sshloop"
	"github.com/snapjet/snapjet/bench/wire"
	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/netfault"
)

const (
	methodRaw       = "btrfs send | btrfs receive"
	methodSSH       = "btrfs send | zstd -3 | ssh | zstd -d | btrfs receive"
	methodReplicate = "snapjet replicate (embedded server)"
	// The same with the external btrfs receive instead of the native one,
	// to compare the two appliers on the same streams.
	methodReplicateProgs = "snapjet replicate --receiver btrfs-progs"
	methodThree          = "snapjet send + nats-server + snapjet receive"
	methodThreeSnapjet   = "snapjet send + snapjet server + snapjet receive"
	// replicate with compressed extents decompressed on the way, as
	// before --compressed-data (set f).
	methodReplicateDecompressed = "snapjet replicate --compressed-data never"
	targetName                  = "t1"
)

func (b *bench) sendCmd(ds *dataSet) *proc {
	args := []string{"send", "-q"}
	if ds.parent != "" {
		args = append(args, "-p", ds.parent)
	}
	return command("btrfs", append(args, ds.snap)...)
}

// seedParent gives the target the parent of an incremental set, untimed,
// so the measured pipe receives only the increment.
func (b *bench) seedParent(ds *dataSet) error {
	if ds.parent == "" {
		return nil
	}
	g := proctree.New()
	defer g.Close()
	return pipeline(g, []*proc{command("btrfs", "send", "-q", ds.parent), command("btrfs", "receive", b.tgt.Dir)}, -1, nil)
}

func (b *bench) rawRow(ctx context.Context, ds *dataSet) report.Row {
	return b.row(ctx, ds, methodRaw, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
		if err := b.seedParent(ds); err != nil {
			return 0, "", err
		}
		wall, err := b.timed(func() error {
			return pipeline(g, []*proc{b.sendCmd(ds), command("btrfs", "receive", b.tgt.Dir)}, -1, nil)
		})
		r.WireBytes = ds.StreamBytes
		r.WireNote = "a local pipe: the whole send stream"
		return wall, ds.snap, err
	})
}

func (b *bench) sshRow(ctx context.Context, ds *dataSet) report.Row {
	return b.row(ctx, ds, methodSSH, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
		if b.ssh == nil {
			s, err := sshloop.Setup(ctx, filepath.Join(b.work, "ssh"))
			if err != nil {
				return 0, "", err
			}
			b.ssh = s
		}
		if err := b.seedParent(ds); err != nil {
			return 0, "", err
		}
		// A fresh sshd per row, so its rusage is this row's alone.
		sshd := &proc{cmd: b.ssh.Command(), stderr: &tail{}}
		sshd.cmd.Stderr = sshd.stderr
		if err := g.Start(sshd.cmd); err != nil {
			return 0, "", err
		}
		defer sshd.stop(g, 5*time.Second)
		if err := b.ssh.WaitReady(ctx); err != nil {
			return 0, "", fmt.Errorf("%w: %s", err, sshd.stderr)
		}
		client := &proc{cmd: b.ssh.Client("zstd -d -c -q | btrfs receive " + shellQuote(b.tgt.Dir)), stderr: &tail{}}
		client.cmd.Stderr = client.stderr
		var n atomic.Int64
		wall, err := b.timed(func() error {
			return pipeline(g, []*proc{b.sendCmd(ds), command("zstd", "-3", "-c", "-q"), client}, 1, &n)
		})
		// The session processes end just after the client; wait for them
		// so sshd's rusage includes them.
		for deadline := time.Now().Add(5 * time.Second); len(g.Live(sshd.cmd.Process.Pid)) > 1 && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		r.WireBytes = n.Load()
		r.WireNote = "zstd -3 output, counted between zstd and ssh (ssh adds its framing and encryption on top)"
		return wall, ds.snap, err
	})
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// snapjet builds a snapjet command; with --profile every process writes a
// CPU profile named after the row.
func (b *bench) snapjet(profileAs string, args ...string) *proc {
	if b.cfg.profile && profileAs != "" {
		file := filepath.Join(b.cfg.results, "profiles", b.res.Mode+"-"+profileAs+"-"+args[0]+".pprof")
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err == nil {
			args = append(args, "--cpuprofile", file)
			b.profiles = append(b.profiles, profileFile{row: profileAs, proc: args[0], path: file})
		}
	}
	return command(b.cfg.snapjet, args...)
}

type profileFile struct{ row, proc, path string }

// resetSnapjetSource removes the snapshots an earlier snapjet row took of
// ds, so every row starts from the same source state. For an incremental
// set the source subvolume is rebuilt from the parent snapshot; the caller
// then replicates it once as the base and applies the mutation.
func (b *bench) resetSnapjetSource(ctx context.Context, ds *dataSet) error {
	dir := filepath.Join(filepath.Dir(ds.subvol), ".snapjet", filepath.Base(ds.subvol))
	subs, err := btrfs.List(dir)
	if err != nil {
		return err
	}
	for _, s := range subs {
		if err := btrfs.DeleteSubvolume(ctx, s.Path); err != nil {
			return err
		}
	}
	if ds.parent != "" {
		if err := btrfs.DeleteSubvolume(ctx, ds.subvol); err != nil {
			return err
		}
		if err := btrfs.Snapshot(ctx, ds.parent, ds.subvol, false); err != nil {
			return err
		}
	}
	return settle(ctx, b.src.Dir)
}

// freshStore prepares a snapjet row: the source as no snapjet row touched
// it, and an empty JetStream store on the local disk for the caller to
// remove.
func (b *bench) freshStore(ctx context.Context, ds *dataSet) (string, error) {
	if err := b.resetSnapjetSource(ctx, ds); err != nil {
		return "", err
	}
	return os.MkdirTemp(b.work, "store-")
}

func (b *bench) replicateRow(ctx context.Context, ds *dataSet) report.Row {
	return b.replicateWith(ctx, ds, methodReplicate, "replicate")
}

func (b *bench) replicateProgsRow(ctx context.Context, ds *dataSet) report.Row {
	return b.replicateWith(ctx, ds, methodReplicateProgs, "replicate-progs", "--receiver", "btrfs-progs")
}

func (b *bench) replicateDecompressedRow(ctx context.Context, ds *dataSet) report.Row {
	return b.replicateWith(ctx, ds, methodReplicateDecompressed, "replicate-decompressed", "--compressed-data", "never")
}

// replicateWith is a `snapjet replicate` row; extra are more flags.
func (b *bench) replicateWith(ctx context.Context, ds *dataSet, method, profileAs string, extra ...string) report.Row {
	return b.row(ctx, ds, method, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
		store, err := b.freshStore(ctx, ds)
		if err != nil {
			return 0, "", err
		}
		defer os.RemoveAll(store)
		replicate := func(g *proctree.Group, profile string) error {
			args := append([]string{"replicate", "--store", store, "--listen", "127.0.0.1:0"}, extra...)
			p := b.snapjet(profile, append(args, ds.subvol, b.tgt.Dir)...)
			if err := g.Start(p.cmd); err != nil {
				return err
			}
			return p.wait(g)
		}
		if ds.parent != "" {
			if err := b.untimed(func(g *proctree.Group) error { return replicate(g, "") }); err != nil {
				return 0, "", fmt.Errorf("replicate the base: %w", err)
			}
			if err := ds.mutation(ctx, ds.subvol); err != nil {
				return 0, "", err
			}
		}
		wall, err := b.timed(func() error { return replicate(g, ds.Key+"-"+profileAs) })
		if err != nil {
			return wall, "", err
		}
		rep, err := b.latestReplication(ctx, "--store", store, "--offline", "--listen", "127.0.0.1:0")
		if err != nil {
			return wall, "", err
		}
		r.WireBytes = rep.WireBytes
		r.WireNote = "wire_bytes from snapjet status: compressed chunk payloads published to the embedded server"
		return wall, rep.Snapshot, nil
	})
}

// untimed runs setup work that needs processes (a base replication) in a
// group of its own, so it counts in no row's figures.
func (b *bench) untimed(fn func(g *proctree.Group) error) error {
	g := proctree.New()
	defer g.Close()
	err := fn(g)
	if err != nil {
		g.KillAll()
	}
	return err
}

// replication is the part of `snapjet status --json` the benchmark reads.
type replication struct {
	ID           string `json:"id"`
	Snapshot     string `json:"snapshot"`
	SnapshotName string `json:"snapshot_name"`
	State        string `json:"state"`
	BytesSent    int64  `json:"bytes_sent"`
	WireBytes    int64  `json:"wire_bytes"`
	TotalBytes   int64  `json:"total_bytes"`
}

// latestReplication asks snapjet status for the replication of the newest
// snapshot.
func (b *bench) latestReplication(ctx context.Context, connect ...string) (replication, error) {
	p := command(b.cfg.snapjet, append([]string{"status", "--json"}, connect...)...)
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.Output()
	if err != nil {
		return replication{}, fmt.Errorf("snapjet status: %w: %s", err, p.stderr)
	}
	var st struct {
		Replications []replication `json:"replications"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return replication{}, fmt.Errorf("snapjet status --json: %w", err)
	}
	if len(st.Replications) == 0 {
		return replication{}, fmt.Errorf("snapjet status lists no replication")
	}
	// Snapshot names end in a UTC timestamp, so they sort by time.
	sort.Slice(st.Replications, func(i, j int) bool { return st.Replications[i].SnapshotName < st.Replications[j].SnapshotName })
	return st.Replications[len(st.Replications)-1], nil
}

// threeRun is the three-process deployment: a standalone nats-server, a
// long-running receiver, and senders, each connected through a counting
// relay.
type threeRun struct {
	server    *proc
	receiver  *proc
	serverURL string
	up        *netfault.Relay // senders to server
	down      *netfault.Relay // server to receiver
}

// baseline is an uninterrupted three-process run, what the resume
// scenarios are compared with.
type baseline struct {
	wall     time.Duration
	up, down int64
}

// startThree starts nats-server on store and a receiver for the target,
// and waits until both are up. The caller stops it with close.
func (b *bench) startThree(ctx context.Context, g *proctree.Group, store, profileAs string) (*threeRun, error) {
	return b.startThreeOn(ctx, g, methodThree, store, profileAs)
}

// startThreeOn is startThree with the server of method: the standalone
// nats-server, or for methodThreeSnapjet `snapjet server` (the embedded
// server with snapjet's heap limit).
func (b *bench) startThreeOn(ctx context.Context, g *proctree.Group, method, store, profileAs string) (*threeRun, error) {
	port, err := wire.FreePort()
	if err != nil {
		return nil, err
	}
	server := command(b.cfg.natsServer, "-js", "-sd", store, "-p", strconv.Itoa(port), "-a", "127.0.0.1")
	if method == methodThreeSnapjet {
		server = command(b.cfg.snapjet, "server", "--store", store, "--listen", "127.0.0.1:"+strconv.Itoa(port))
	}
	t := &threeRun{server: server}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	t.serverURL = "nats://" + addr
	if err := g.Start(t.server.cmd); err != nil {
		return nil, err
	}
	if err := waitListening(ctx, addr); err != nil {
		t.close(g)
		return nil, fmt.Errorf("nats-server: %w: %s", err, t.server.stderr)
	}
	if t.up, err = netfault.New(addr); err != nil {
		t.close(g)
		return nil, err
	}
	if t.down, err = netfault.New(addr); err != nil {
		t.close(g)
		return nil, err
	}
	if err := t.startReceiver(ctx, g, b, profileAs); err != nil {
		t.close(g)
		return nil, err
	}
	return t, nil
}

// startReceiver starts snapjet receive and waits until it has connected
// and had a moment to set up its consumer.
func (t *threeRun) startReceiver(ctx context.Context, g *proctree.Group, b *bench, profileAs string) error {
	t.receiver = b.snapjet(profileAs, "receive", "--server", "nats://"+t.down.Addr(), "--target", targetName, b.tgt.Dir)
	before := t.down.Up()
	if err := g.Start(t.receiver.cmd); err != nil {
		return err
	}
	for deadline := time.Now().Add(10 * time.Second); t.down.Up() == before; {
		if time.Now().After(deadline) {
			return fmt.Errorf("snapjet receive did not connect: %s", t.receiver.stderr)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	time.Sleep(500 * time.Millisecond)
	return nil
}

func (t *threeRun) send(b *bench, ds *dataSet, profileAs string) *proc {
	return b.snapjet(profileAs, "send", "--server", "nats://"+t.up.Addr(), "--to", targetName, ds.subvol)
}

func (t *threeRun) close(g *proctree.Group) {
	if t.receiver != nil {
		t.receiver.stop(g, 10*time.Second)
	}
	t.server.stop(g, 10*time.Second)
	for _, r := range []*netfault.Relay{t.up, t.down} {
		if r != nil {
			r.Close()
		}
	}
}

func (b *bench) threeRow(ctx context.Context, ds *dataSet) report.Row {
	return b.threeRowOn(ctx, ds, methodThree)
}

// threeRowOn is threeRow with the server of method (see startThreeOn).
func (b *bench) threeRowOn(ctx context.Context, ds *dataSet, method string) report.Row {
	return b.row(ctx, ds, method, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
		store, err := b.freshStore(ctx, ds)
		if err != nil {
			return 0, "", err
		}
		defer os.RemoveAll(store)
		if ds.parent != "" {
			// The base goes through processes of its own; the measured
			// ones start on the store the base left, as after a restart.
			err := b.untimed(func(g *proctree.Group) error {
				t, err := b.startThreeOn(ctx, g, method, store, "")
				if err != nil {
					return err
				}
				defer t.close(g)
				s := t.send(b, ds, "")
				if err := g.Start(s.cmd); err != nil {
					return err
				}
				return s.wait(g)
			})
			if err != nil {
				return 0, "", fmt.Errorf("send the base: %w", err)
			}
			if err := ds.mutation(ctx, ds.subvol); err != nil {
				return 0, "", err
			}
		}
		t, err := b.startThreeOn(ctx, g, method, store, ds.Key+"-three")
		if err != nil {
			return 0, "", err
		}
		defer t.close(g)
		up0, down0 := t.up.Up(), t.down.Down()
		wall, err := b.timed(func() error {
			s := t.send(b, ds, ds.Key+"-three")
			if err := g.Start(s.cmd); err != nil {
				return err
			}
			return s.wait(g)
		})
		if err != nil {
			return wall, "", err
		}
		up, down := t.up.Up()-up0, t.down.Down()-down0
		r.WireBytes = up
		r.ReceiverHop = down
		r.WireNote = "snapjet send to the server, counted by the bench's TCP relay, NATS protocol included (server to receiver: receiver_hop_bytes in the JSON)"
		rep, err := b.latestReplication(ctx, "--server", t.serverURL)
		if err != nil {
			return wall, "", err
		}
		if ds.Key == "a" {
			b.baseline = &baseline{wall: wall, up: up, down: down}
		}
		return wall, rep.Snapshot, nil
	})
}

func waitListening(ctx context.Context, addr string) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
