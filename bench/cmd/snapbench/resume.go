package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"time"

	"github.com/snapjet/snapjet/bench/proctree"
	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/internal/netfault"
)

// interruption is one way a replication can be broken at 50%.
type interruption struct {
	name string
	// senderSide puts the 50% point on the sender's hop (bytes from the
	// sender to the server), otherwise on the receiver's (server to
	// receiver); it is half of what the baseline moved on that hop.
	senderSide bool
	// act breaks the replication and says what it did. It returns the
	// channel the sender's exit arrives on, a new one when it ran the
	// sender again (after a kill, as the user would).
	act func(s *scene) (<-chan error, string, error)
}

// scene is what an interruption acts on.
type scene struct {
	ctx  context.Context
	b    *bench
	g    *proctree.Group
	t    *threeRun
	ds   *dataSet
	hop  *netfault.Relay // the relay of the interrupted side
	send *proc
	done <-chan error
}

func cutHop(s *scene) (<-chan error, string, error) {
	what, err := cutDetail(s.hop.Cut())
	return s.done, what, err
}

var interruptions = []interruption{
	{name: "cut sender↔server connection", senderSide: true, act: cutHop},
	{name: "cut server↔receiver connection", act: cutHop},
	{
		name: "kill -9 receiver, start it again",
		act: func(s *scene) (<-chan error, string, error) {
			p := s.t.receiver.cmd.Process
			if err := p.Signal(syscall.SIGKILL); err != nil {
				return s.done, "", fmt.Errorf("kill receiver: %w", err)
			}
			err := s.g.Wait(s.t.receiver.cmd)
			what := fmt.Sprintf("receiver pid %d: %v; restarted", p.Pid, err)
			return s.done, what, s.t.startReceiver(s.ctx, s.g, s.b, "")
		},
	},
	{
		name:       "kill -9 sender, run the same send again",
		senderSide: true,
		act: func(s *scene) (<-chan error, string, error) {
			p := s.send.cmd.Process
			if err := p.Signal(syscall.SIGKILL); err != nil {
				return s.done, "", fmt.Errorf("kill sender: %w", err)
			}
			err := <-s.done
			again := startWait(s.g, s.t.send(s.b, s.ds, ""))
			return again, fmt.Sprintf("sender pid %d: %v; send run again", p.Pid, errors.Unwrap(err)), nil
		},
	},
}

func cutDetail(n int) (string, error) {
	if n == 0 {
		return "", errors.New("no open connection to cut")
	}
	return fmt.Sprintf("%d connection(s) cut", n), nil
}

// startWait starts p and reports its exit on the returned channel.
func startWait(g *proctree.Group, p *proc) <-chan error {
	done := make(chan error, 1)
	if err := g.Start(p.cmd); err != nil {
		done <- err
		return done
	}
	go func() { done <- p.wait(g) }()
	return done
}

// resumeSection breaks the three-process replication of set a at 50% in
// each way and reports what finishing cost beyond an uninterrupted run.
func (b *bench) resumeSection(ctx context.Context) error {
	ds := b.sets["a"]
	if ds == nil {
		return errors.New("needs set a (add it to --sections)")
	}
	if b.baseline == nil {
		return errors.New("the uninterrupted three-process run of set a failed; nothing to compare with")
	}
	for _, in := range interruptions {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		x := b.resumeOne(ctx, ds, in)
		slog.Info("resume done", "scenario", x.Scenario, "extra_s", x.ExtraSeconds, "extra_pct", x.ExtraPercent, "verified", x.Verified, "err", x.Error)
		b.res.Resume = append(b.res.Resume, x)
	}
	return nil
}

func (b *bench) resumeOne(ctx context.Context, ds *dataSet, in interruption) report.Resume {
	base := b.baseline
	x := report.Resume{Scenario: in.name, BaselineSeconds: base.wall.Seconds(), BaselineWire: base.up + base.down}
	var upDown [2]int64
	row := b.row(ctx, ds, in.name, func(ctx context.Context, g *proctree.Group, r *report.Row) (time.Duration, string, error) {
		store, err := b.freshStore(ctx, ds)
		if err != nil {
			return 0, "", err
		}
		defer os.RemoveAll(store)
		t, err := b.startThree(ctx, g, store, "")
		if err != nil {
			return 0, "", err
		}
		defer t.close(g)
		up0, down0 := t.up.Up(), t.down.Down()
		hop, progress, half := t.down, t.down.Down, base.down/2
		if in.senderSide {
			hop, progress, half = t.up, t.up.Up, base.up/2
		}
		wall, err := b.timed(func() error {
			send := t.send(b, ds, "")
			done := startWait(g, send)
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case err := <-done:
					if err != nil {
						return err
					}
					return fmt.Errorf("finished before the 50%% point (%d bytes)", half)
				case <-tick.C:
				}
				if at := progress(); at >= half {
					x.InterruptedAt = at
					break
				}
			}
			done, what, err := in.act(&scene{ctx: ctx, b: b, g: g, t: t, ds: ds, hop: hop, send: send, done: done})
			x.Detail = what
			if err != nil {
				return err
			}
			return <-done
		})
		upDown = [2]int64{t.up.Up() - up0, t.down.Down() - down0}
		if err != nil {
			return wall, "", err
		}
		rep, err := b.latestReplication(ctx, "--server", t.serverURL)
		if err != nil {
			return wall, "", err
		}
		return wall, rep.Snapshot, nil
	})
	x.WallSeconds, x.Verified, x.Error = row.WallSeconds, row.Verified, row.Error
	x.UpBytes, x.DownBytes = upDown[0], upDown[1]
	x.WireBytes = upDown[0] + upDown[1]
	x.ExtraSeconds = x.WallSeconds - x.BaselineSeconds
	x.ExtraBytes = x.WireBytes - x.BaselineWire
	if x.BaselineWire > 0 {
		x.ExtraPercent = 100 * float64(x.ExtraBytes) / float64(x.BaselineWire)
	}
	return x
}
