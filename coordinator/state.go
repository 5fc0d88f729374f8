// Package coordinator owns the state of every replication: the record in
// the JetStream KV bucket, the state machine that every change must pass,
// and the decisions (commit, discard, retry) taken on the receivers' reports.
package coordinator

import "fmt"

// State is the lifecycle of one replication.
type State string

const (
	Planned State = "planned" // snapshot taken, stream and consumers being set up
	Sending State = "sending" // the sender is publishing chunks of the current attempt
	Sent    State = "sent"    // the end marker of the current attempt is stored
	Done    State = "done"    // every target committed; the stream is deleted
	Failed  State = "failed"  // every target is terminal and one failed; retryable by a new run
)

// TargetState is the lifecycle of one target within a replication.
type TargetState string

const (
	TPending   TargetState = "pending"   // waiting for the current attempt's first chunk
	TReceiving TargetState = "receiving" // applying chunks into staging
	TReceived  TargetState = "received"  // whole stream applied, waiting for the verdict
	TCommitted TargetState = "committed" // verified and moved to its final place
	TDiscarded TargetState = "discarded" // partial deleted; the next attempt will retry
	TFailed    TargetState = "failed"    // failed in this run, with a reason for the operator; a new run retries it
	// TMoved: the target continues in a replication record of its own (see
	// Target.MovedTo) from the same snapshot, so that its trouble costs the
	// others nothing.
	TMoved TargetState = "moved"
)

var replTransitions = map[State][]State{
	Planned: {Sending, Failed},
	Sending: {Sent, Planned, Failed},
	Sent:    {Done, Planned, Failed, Sending},
	Failed:  {Planned},
}

var targetTransitions = map[TargetState][]TargetState{
	TPending:   {TReceiving, TReceived, TCommitted, TFailed, TDiscarded, TMoved},
	TReceiving: {TReceived, TCommitted, TDiscarded, TFailed, TPending, TMoved},
	TReceived:  {TCommitted, TDiscarded, TFailed, TPending, TMoved},
	TDiscarded: {TPending, TFailed, TMoved},
	TFailed:    {TPending, TMoved},
}

func allowed[S comparable](table map[S][]S, from, to S) bool {
	if from == to {
		return true
	}
	for _, s := range table[from] {
		if s == to {
			return true
		}
	}
	return false
}

// ErrTransition is returned for a change the state machine forbids.
type ErrTransition struct{ What, From, To string }

func (e *ErrTransition) Error() string {
	return fmt.Sprintf("%s cannot go from %s to %s", e.What, e.From, e.To)
}

// Terminal reports whether a target needs nothing more in this run.
func (s TargetState) Terminal() bool { return s == TCommitted || s == TFailed || s == TMoved }

// Terminal reports whether the replication needs nothing more in this run.
func (s State) Terminal() bool { return s == Done || s == Failed }
