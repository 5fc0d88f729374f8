package coordinator

import "context"

// Purge drops from the stream of record id, which holds sequences first to
// last, and from its site copies, what every active target has acked, and reports whether it dropped
// anything, the ack floor and the target that holds it (the slowest). The
// sender calls it when the window is full; the decision is the
// coordinator's, because only it knows which targets are still active.
func (c *Coordinator) Purge(ctx context.Context, id string, first, last uint64) (bool, uint64, string, error) {
	r, _, err := c.records.Get(ctx, id)
	if err != nil {
		return false, 0, "", err
	}
	active := r.Dests(r.Active())
	floors, err := c.stream.AckFloors(ctx, id, active)
	if err != nil {
		return false, 0, "", err
	}
	floor, slowest := ackFloor(r.Active(), floors, last)
	keep, ok := purgeTo(first, last, floor)
	if !ok {
		return false, floor, slowest, nil
	}
	if err := c.stream.PurgeTo(ctx, id, keep, active); err != nil {
		return false, floor, slowest, err
	}
	return true, floor, slowest, nil
}

// ackFloor is the highest stream sequence that every active target has
// acked, and the target whose consumer holds it there. A target without a
// consumer (one being reset for a resumed receiver) holds it at 0: while
// its consumer is away, nothing may be purged from under it.
func ackFloor(active []string, floors map[string]uint64, last uint64) (uint64, string) {
	floor, slowest := last, ""
	for _, t := range active {
		if f := floors[t]; f < floor {
			floor, slowest = f, t
		}
	}
	return floor, slowest
}

// purgeTo is the first sequence to keep when every active target acked up
// to floor: everything acked goes, but the last stored message always
// stays (a restarted sender reads where the stream ends from it). ok is
// false when nothing can be dropped: then the sender waits.
func purgeTo(first, last, floor uint64) (keep uint64, ok bool) {
	keep = min(floor+1, last)
	return keep, keep > first
}
