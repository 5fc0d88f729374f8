package retention

import (
	"fmt"
	"strings"
	"time"
)

// Policy says which snapshots of one side (the source, or one target) to
// keep, btrbk-style. The zero Policy keeps everything: a job without a
// retention setting never loses a snapshot to a default.
type Policy struct {
	Latest  int // the newest N snapshots
	Hourly  int // the newest snapshot of each of the N most recent hours that have one
	Daily   int
	Weekly  int // ISO weeks, Monday to Sunday
	Monthly int
	Yearly  int
	// MinAge keeps every snapshot younger than this, whatever the counts.
	MinAge time.Duration
}

// IsZero reports whether p sets nothing (and so keeps everything).
func (p Policy) IsZero() bool { return p == Policy{} }

// String gives the policy in the config file's words, e.g.
// "latest 3, hourly 2, min_age 36h0m0s"; "none" for the zero Policy.
func (p Policy) String() string {
	var parts []string
	for _, c := range p.counts() {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c.name, c.n))
		}
	}
	if p.MinAge > 0 {
		parts = append(parts, "min_age "+p.MinAge.String())
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

type count struct {
	name string
	n    int
}

func (p Policy) counts() []count {
	return []count{{"latest", p.Latest}, {"hourly", p.Hourly}, {"daily", p.Daily},
		{"weekly", p.Weekly}, {"monthly", p.Monthly}, {"yearly", p.Yearly}}
}
