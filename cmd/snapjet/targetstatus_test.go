package main

import (
	"strings"
	"testing"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// status --target exits 1 exactly when an operator must look: the receiver
// does not answer, or the replication changed last failed on the target.
// An older failure that a later replication made good is history.
func TestTargetVerdict(t *testing.T) {
	listed := func(states ...coordinator.TargetState) []coordinator.Listed {
		var out []coordinator.Listed
		for i, s := range states {
			out = append(out, coordinator.Listed{Work: &coordinator.Work{ID: "r" + string(rune('1'+i)), TargetState: s, Error: "reason " + string(s)}})
		}
		return out
	}
	up := &streams.Inventory{Target: "nas"}
	for _, tc := range []struct {
		name string
		doc  targetStatusDoc
		want string // "" for exit 0, else a part of the error
	}{
		{"nothing yet, receiver up", targetStatusDoc{Target: "nas", Receiver: up}, ""},
		{"committed", targetStatusDoc{Target: "nas", Receiver: up, Work: listed(coordinator.TCommitted)}, ""},
		{"receiving", targetStatusDoc{Target: "nas", Receiver: up, Work: listed(coordinator.TCommitted, coordinator.TReceiving)}, ""},
		{"failed, then committed", targetStatusDoc{Target: "nas", Receiver: up, Work: listed(coordinator.TFailed, coordinator.TCommitted)}, ""},
		{"failed last", targetStatusDoc{Target: "nas", Receiver: up, Work: listed(coordinator.TCommitted, coordinator.TFailed)}, "failed in r2: reason failed"},
		{"receiver silent", targetStatusDoc{Target: "nas", ReceiverError: "no receiver answered", Work: listed(coordinator.TCommitted)}, "receiver does not answer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := targetVerdict(tc.doc)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("exit with %v, want 0", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an exit-1 error with %q", err, tc.want)
			case tc.want != "":
				if e, ok := err.(*exitError); !ok || e.code != 1 {
					t.Errorf("got %#v, want exit code 1", err)
				}
			}
		})
	}
}
