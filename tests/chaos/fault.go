package chaos

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// fault waits for the plan's moment in round r (bounded, and never past
// the command's exit), injects the fault and recovers from it: processes
// killed are started again, a cut link is restored after its outage. It
// returns the command whose exit ends the round: a rerun when the sender
// itself was killed.
func (t *trial) fault(ctx context.Context, r int, cmd *proc, est int64) (*proc, error) {
	at, reached, err := t.waitMoment(ctx, cmd, est)
	if err != nil {
		return nil, err
	}
	if reached {
		t.injected = "at " + at
	} else {
		t.missed = true
		t.injected = "missed: " + at
	}
	t.logf("round %d: injecting %s (%s)", r, t.plan.fault, t.injected)
	switch t.plan.fault {
	case SenderKill:
		if !reached {
			// Nothing to kill: the command ended before the moment.
			return cmd, nil
		}
		cmd.signal(syscall.SIGKILL)
		if _, err := cmd.wait(ctx, stopBound); err != nil {
			t.hung(cmd, cmd.name+" after SIGKILL", err)
			return nil, errAbort
		}
		t.logf("round %d: %s killed; running it again", r, cmd.name)
		return t.startCommand(r, 1)

	case ReceiverKill, ReceiverDown:
		p := t.receivers[t.plan.victim]
		sig := syscall.SIGKILL
		if t.plan.fault == ReceiverDown {
			sig = syscall.SIGTERM
		}
		p.signal(sig)
		if _, err := p.wait(ctx, stopBound); err != nil {
			t.hung(p, fmt.Sprintf("%s after %v", p.name, sig), err)
			return nil, errAbort
		}
		if t.plan.fault == ReceiverDown {
			if err := t.outage(ctx); err != nil {
				return nil, err
			}
		}
		t.logf("round %d: starting %s again", r, p.name)
		return cmd, t.startReceiver(t.plan.victim)

	case ServerKill, ServerRestart:
		sig := syscall.SIGKILL
		if t.plan.fault == ServerRestart {
			sig = syscall.SIGTERM
		}
		t.server.signal(sig)
		if _, err := t.server.wait(ctx, stopBound); err != nil {
			t.hung(t.server, fmt.Sprintf("server after %v", sig), err)
			return nil, errAbort
		}
		t.logf("round %d: server stopped with %v; starting it again on the same port and store", r, sig)
		return cmd, t.startServer(ctx)

	case LinkCut:
		rl := t.relays[0]
		if t.plan.mode == "send" {
			rl = t.relays[t.plan.victim]
		}
		rl.SetDown(true)
		n := rl.Cut()
		t.logf("round %d: cut %d connections; link down for %v", r, n, t.plan.outage)
		err := t.outage(ctx)
		rl.SetDown(false)
		t.logf("round %d: link up again", r)
		return cmd, err
	}
	return nil, fmt.Errorf("unknown fault %q", t.plan.fault)
}

// outage holds a fault for the plan's duration. This is the length of the
// failure being simulated, not a wait for an event.
func (t *trial) outage(ctx context.Context) error {
	timer := time.NewTimer(t.plan.outage)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// finalEntries counts what sits at final names in a target directory.
func finalEntries(dir string) int {
	entries, _ := os.ReadDir(dir)
	n := 0
	for _, e := range entries {
		if e.Name() != ".snapjet" {
			n++
		}
	}
	return n
}

// waitMoment polls JetStream (and the targets, for commits) until the plan's
// moment is reached. It reports reached=false when the command exited
// first or the bound passed; the fault then strikes the idle system.
func (t *trial) waitMoment(ctx context.Context, cmd *proc, est int64) (string, bool, error) {
	p := t.plan
	if p.moment == AtStart {
		return AtStart, true, nil
	}
	estChunks := uint64(float64(est) / chunkSize * p.fraction)
	victim := t.targets[p.victim].name
	var last progress
	before := map[string]int{}
	for _, tg := range t.targets {
		before[tg.dir] = finalEntries(tg.dir)
	}
	desc := p.moment
	reached := false
	err := poll(ctx, roundBound, 20*time.Millisecond, func() bool {
		if cmd.exited() {
			return true
		}
		if p.moment == AtCommitting {
			// A replica appearing at a final name is the commit itself,
			// seen the moment it happens (status lags by up to a second).
			for _, tg := range t.targets {
				if n := finalEntries(tg.dir); n > before[tg.dir] {
					desc = tg.name + " committed"
					reached = true
				}
			}
			return reached
		}
		pr, err := t.probe.look(ctx, t.seen)
		if err != nil {
			return false
		}
		last = pr
		switch p.moment {
		case AtStored:
			reached = pr.stored >= estChunks
			desc = fmt.Sprintf("stored %d of ~%d chunks", pr.stored, uint64(float64(est)/chunkSize))
		case AtApplied:
			// Once the end marker is stored the stream's length is known;
			// the estimate from the bytes changed overshoots for an
			// incremental round, and the moment would pass unseen.
			goal := estChunks
			if pr.endStored {
				goal = min(goal, uint64(float64(pr.stored)*p.fraction))
			}
			reached = pr.ackedBy(victim) >= max(goal, 1)
			desc = fmt.Sprintf("%s acked %d of ~%d chunks", victim, pr.ackedBy(victim), uint64(float64(est)/chunkSize))
		case AtEndStored:
			reached = pr.endStored
			desc = fmt.Sprintf("end marker stored at seq %d", pr.stored)
		}
		return reached
	})
	if ctx.Err() != nil {
		return "", false, ctx.Err()
	}
	if !reached {
		why := "the command exited first"
		if err != nil {
			why = fmt.Sprintf("not reached within %v", roundBound)
		}
		return fmt.Sprintf("%s (%s; last seen %+v)", p.moment, why, last), false, nil
	}
	return desc, true, nil
}
