package streams

import (
	"slices"
	"strings"
)

// The control plane: small JSON request/replies between receivers, the
// sender and the coordinator, served as NATS micro endpoints so that
// `nats micro ls` shows them.

// CoordinatorService and ReceiverService are the micro service names.
const (
	CoordinatorService = "snapjet-coordinator"
	ReceiverService    = "snapjet-receiver"
)

// ReportSubject is where the receiver of target reports on a replication to
// its coordinator. The target is in the subject, not only in the body, so
// that NATS permissions can let a site report for its own targets only;
// the coordinator refuses a report whose body names another target.
func ReportSubject(repl, target string) string { return "snapjet.coord." + repl + "." + target }

// ReportSubjects matches the reports of every target of a replication.
func ReportSubjects(repl string) string { return "snapjet.coord." + repl + ".*" }

// ReportTarget is the target a report subject names, "" for another subject.
func ReportTarget(subject string) string {
	if i := strings.LastIndexByte(subject, '.'); i >= 0 && strings.HasPrefix(subject, "snapjet.coord.") {
		return subject[i+1:]
	}
	return ""
}

// InventorySubject is where the receiver of target answers what it holds.
func InventorySubject(target string) string { return "snapjet.target." + target + ".inventory" }

// PruneSubject is where the receiver of target takes a DeleteRequest from
// the retention of the job that sends to it. Only the sending side may
// publish here: permissions must keep other sites off it.
func PruneSubject(target string) string { return "snapjet.target." + target + ".prune" }

// DeleteRequest asks a receiver to delete one committed snapshot that its
// job's retention let go. The receiver deletes it only if, in its target
// directory under Name, it still is a read-only subvolume received with
// ReceivedUUID: a snapshot snapjet committed, never anything else.
type DeleteRequest struct {
	Name         string `json:"name"`
	ReceivedUUID string `json:"received_uuid"`
}

// Event names a receiver's report.
type Event string

const (
	EvProgress  Event = "progress"  // counters only
	EvReceived  Event = "received"  // whole stream applied; asks for the verdict
	EvCommitted Event = "committed" // the verified subvolume is at its final place
	EvFailed    Event = "failed"    // the attempt failed on this target; staging is clean
	EvRewind    Event = "rewind"    // asks to replay the stream: from FromSeq, or from the start when the partial is lost
)

// Report is a receiver's message to the coordinator.
type Report struct {
	Event         Event  `json:"event"`
	Target        string `json:"target"`
	Attempt       int    `json:"attempt"`
	ChunksApplied int64  `json:"chunks_applied"`
	BytesApplied  int64  `json:"bytes_applied"`
	Redelivered   int64  `json:"redelivered_chunks"`
	// BusyMs is how long this receiver process has spent handling chunks
	// of the attempt, ElapsedMs how long it has been at it, both by its own
	// clock, in milliseconds; the rest of its time it waited for chunks.
	// Between two reports they give the target's pace and how busy it was,
	// which tell the sender whether the link or the targets hold a transfer
	// back. Older receivers leave them out.
	BusyMs    int64 `json:"busy_ms,omitempty"`
	ElapsedMs int64 `json:"elapsed_ms,omitempty"`
	// EvReceived: what the receiver saw and what the kernel says.
	Digest       string `json:"digest,omitempty"`
	ReceivedUUID string `json:"received_uuid,omitempty"`
	ReadOnly     bool   `json:"read_only,omitempty"`
	// EvCommitted: the final path.
	Path string `json:"path,omitempty"`
	// EvRewind: a resumed receiver asks for the chunks from this stream
	// sequence on, which a dead predecessor had been delivered but not acked.
	FromSeq uint64 `json:"from_seq,omitempty"`
	// EvFailed.
	Reason        string `json:"reason,omitempty"`
	Permanent     bool   `json:"permanent,omitempty"`
	ParentMissing bool   `json:"parent_missing,omitempty"`
	// StreamBad: what the stream stores is wrong (a chunk that fails its
	// checksum, a hole), so replaying it cannot mend the target; only a
	// fresh send can.
	StreamBad bool `json:"stream_bad,omitempty"`
}

// Action is the coordinator's answer.
type Action string

const (
	ActOK      Action = "ok"      // noted; carry on
	ActCommit  Action = "commit"  // move the received subvolume to its final place
	ActDiscard Action = "discard" // delete the partial; a new attempt follows (or the target failed)
	ActStale   Action = "stale"   // the report is for an attempt that is over; stop it
	ActReplay  Action = "replay"  // delete the partial and receive the stream again from its start (same attempt)
)

// Verdict is the coordinator's reply to a Report.
type Verdict struct {
	Action  Action `json:"action"`
	Attempt int    `json:"attempt"`
	Reason  string `json:"reason,omitempty"`
}

// Held is one committed snapshot a target holds.
type Held struct {
	Name         string `json:"name"`
	Path         string `json:"path"`
	ReceivedUUID string `json:"received_uuid"`
}

// Inventory is a receiver's answer on InventorySubject.
type Inventory struct {
	Target    string `json:"target"`
	Dir       string `json:"dir"`
	Snapshots []Held `json:"snapshots"`
	// Site is the JetStream domain of the site node the receiver is at,
	// when it is not the sender's: its targets consume a copy kept there.
	Site string `json:"site,omitempty"`
	// StateDomain is the JetStream domain where the receiver watches for
	// its work: a sender whose state is elsewhere would address work to it
	// that it never sees.
	StateDomain string `json:"state_domain,omitempty"`
	// Decodes lists the optional chunk encodings the receiver reads
	// (Decodes() of its build); a receiver older than the field sends none.
	Decodes []string `json:"decodes,omitempty"`
}

// CommonDecodes is the optional encodings every one of targets announced in
// invs, in the order of this build's Decodes(): what a stream to all of them
// may use. A target without an inventory announced nothing.
func CommonDecodes(invs map[string]Inventory, targets []string) []string {
	var out []string
	for _, enc := range Decodes() {
		all := len(targets) > 0
		for _, t := range targets {
			all = all && slices.Contains(invs[t].Decodes, enc)
		}
		if all {
			out = append(out, enc)
		}
	}
	return out
}
