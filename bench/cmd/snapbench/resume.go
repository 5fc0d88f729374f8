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
)

// interruption is one way a replication can be broken at 50%.
type interruption struct {
	name string
	// progress is the byte count watched for the 50% point, half the
	// baseline's count in the same place.
	progress func(t *threeRun) int64
	half     func(base *baseline) int64
	// act breaks the replication and says what it did; it may replace the
	// sender's exit channel (a killed sender is re-run by hand, as the user
	// would).
	act func(ctx context.Context, b *bench, g *proctree.Group, t *threeRun, ds *dataSet, send *proc, done <-chan error) (<-chan error, string, error)
}

var interruptions = []interruption{
	{
		name:     "cut sender↔server connection",
		progress: func(t *threeRun) int64 { return t.up.Up() },
		half:     func(base *baseline) int64 { return base.up / 2 },
		act: func(_ context.Context, _ *bench, _ *proctree.Group, t *threeRun, _ *dataSet, _ *proc, done <-chan error) (<-chan error, string, error) {
			what, err := cutDetail(t.up.Cut())
			return done, what, err
		},
	},
	{
		name:     "cut server↔receiver connection",
		progress: func(t *threeRun) int64 { return t.down.Down() },
		half:     func(base *baseline) int64 { return base.down / 2 },
		act: func(_ context.Context, _ *bench, _ *proctree.Group, t *threeRun, _ *dataSet, _ *proc, done <-chan error) (<-chan error, string, error) {
			what, err := cutDetail(t.down.Cut())
			return done, what, err
		},
	},
	{
		name:     "kill -9 receiver, start it again",
		progress: func(t *threeRun) int64 { return t.down.Down() },
		half:     func(base *baseline) int64 { return base.down / 2 },
		act: func(ctx context.Context, b *bench, g *proctree.Group, t *threeRun, _ *dataSet, _ *proc, done <-chan error) (<-chan error, string, error) {
			pid := t.receiver.cmd.Process.Pid
			if err := t.receiver.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				return done, "", fmt.Errorf("kill receiver: %w", err)
			}
			err := g.Wait(t.receiver.cmd)
			what := fmt.Sprintf("receiver pid %d: %v; restarted", pid, err)
			return done, what, t.startReceiver(ctx, g, b, "")
		},
	},
	{
		name:     "kill -9 sender, run the same send again",
		progress: func(t *threeRun) int64 { return t.up.Up() },
		half:     func(base *baseline) int64 { return base.up / 2 },
		act: func(_ context.Context, b *bench, g *proctree.Group, t *threeRun, ds *dataSet, send *proc, done <-chan error) (<-chan error, string, error) {
			pid := send.cmd.Process.Pid
			if err := send.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				return done, "", fmt.Errorf("kill sender: %w", err)
			}
			err := <-done
			return startWait(g, t.send(b, ds, "")), fmt.Sprintf("sender pid %d: %v; send run again", pid, errors.Unwrap(err)), nil
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
		if err := b.resetSnapjetSource(ctx, ds); err != nil {
			return 0, "", err
		}
		store, err := b.scratch("nats")
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
		half := in.half(base)
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
				if at := in.progress(t); at >= half {
					x.InterruptedAt = at
					break
				}
			}
			done, what, err := in.act(ctx, b, g, t, ds, send, done)
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
	x.WireBytes = upDown[0] + upDown[1]
	x.ExtraSeconds = x.WallSeconds - x.BaselineSeconds
	x.ExtraBytes = x.WireBytes - x.BaselineWire
	if x.BaselineWire > 0 {
		x.ExtraPercent = 100 * float64(x.ExtraBytes) / float64(x.BaselineWire)
	}
	return x
}
