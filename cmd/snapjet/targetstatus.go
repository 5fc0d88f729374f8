package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

// receiverAnswerTimeout bounds how long status --target waits for the
// target's receiver: one that is up answers in milliseconds, even across a
// WAN link.
const receiverAnswerTimeout = 5 * time.Second

// targetStatusDoc is what status --target prints with --json.
type targetStatusDoc struct {
	Target string `json:"target"`
	// Receiver is the receiver's answer; nil when it gave none, and then
	// ReceiverError says why.
	Receiver      *streams.Inventory   `json:"receiver"`
	ReceiverError string               `json:"receiver_error,omitempty"`
	Work          []coordinator.Listed `json:"work"`
}

// targetStatus shows one target as its own site sees it: its views of the
// replications addressed to it and its receiver's answer. It reads nothing
// else of the state, so it works with the permissions of an isolated site.
// It returns an exit-1 error when the receiver does not answer or the
// replication changed last failed on the target.
func targetStatus(ctx context.Context, out io.Writer, b *broker.Broker, target string, asJSON bool) error {
	docs, err := readTargets(ctx, b, []string{target})
	if err != nil {
		return err
	}
	doc := docs[0]
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(doc); err != nil {
			return err
		}
	} else if err := printTargetStatus(out, doc); err != nil {
		return err
	}
	return targetVerdict(doc)
}

// readTargets reads each target's work views and asks the targets'
// receivers what they hold, all of them together within
// receiverAnswerTimeout.
func readTargets(ctx context.Context, b *broker.Broker, targets []string) ([]targetStatusDoc, error) {
	store, err := coordinator.BindStore(ctx, b.JS)
	if err != nil {
		return nil, &exitError{1, fmt.Errorf("status of %s unknown: %w", strings.Join(targets, ", "), unreadableState(err))}
	}
	docs := make([]targetStatusDoc, len(targets))
	for i, t := range targets {
		work, err := store.ListWork(ctx, t)
		if err != nil {
			return nil, &exitError{1, fmt.Errorf("status of target %s unknown: %w", t, unreadableState(err))}
		}
		docs[i] = targetStatusDoc{Target: t, Work: work}
		if work == nil {
			docs[i].Work = []coordinator.Listed{}
		}
	}
	inv, unreachable := sender.Inventories(ctx, b.NC, targets, receiverAnswerTimeout)
	for i := range docs {
		if in, ok := inv[docs[i].Target]; ok {
			docs[i].Receiver = &in
		} else {
			docs[i].ReceiverError = unreachable[docs[i].Target].Error()
		}
	}
	return docs, nil
}

// readRecords reads every replication's record, which only a client of
// the hub (or a site that may read the whole state) can.
func readRecords(ctx context.Context, b *broker.Broker) ([]*coordinator.Replication, error) {
	store, err := coordinator.OpenStore(ctx, b.JS)
	if err != nil {
		return nil, unreadableState(err)
	}
	all, err := store.List(ctx)
	if err != nil {
		return nil, unreadableState(err)
	}
	return all, nil
}

// unreadableState adds the likely causes to an error of a client whose
// requests for the state no JetStream answered, or answered that it may
// not make them: a wrong server or domain, or the permissions of an
// isolated site, which reach only the site's own targets.
func unreadableState(err error) error {
	for _, e := range []error{nats.ErrNoResponders, nats.ErrTimeout, nats.ErrPermissionViolation, nats.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: no JetStream with the state answered this client: check --server and --js-domain; a client at an isolated site may read only its own targets (snapjet status --target NAME)", err)
		}
	}
	return err
}

func printTargetStatus(out io.Writer, doc targetStatusDoc) error {
	if r := doc.Receiver; r != nil {
		site := r.Site
		if site == "" {
			site = "the sender's"
		}
		fmt.Fprintf(out, "target %s: receiver answers from %s (site %s); it holds %d committed snapshots (--json lists them)\n", doc.Target, r.Dir, site, len(r.Snapshots))
	} else {
		fmt.Fprintf(out, "target %s: %s\n", doc.Target, doc.ReceiverError)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "REPLICATION\tSNAPSHOT\tSTATE\tATTEMPT\tTARGET STATE\tUPDATED\tERROR")
	for _, l := range doc.Work {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", l.ID, l.SnapshotName, l.State, l.Attempt, l.TargetState, l.Updated.Format(time.RFC3339), l.Error)
	}
	return w.Flush()
}

// targetVerdict is status --target's exit: 1 when the receiver does not
// answer, or when the replication changed last failed on the target.
func targetVerdict(doc targetStatusDoc) error {
	if doc.Receiver == nil {
		return &exitError{1, fmt.Errorf("target %s: its receiver does not answer", doc.Target)}
	}
	if n := len(doc.Work); n > 0 && doc.Work[n-1].TargetState == coordinator.TFailed {
		last := doc.Work[n-1]
		return &exitError{1, fmt.Errorf("target %s failed in %s: %s", doc.Target, last.ID, last.Error)}
	}
	return nil
}
