package chaos

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// probe reads a replication's progress straight from JetStream, to choose
// a fault moment: status is refreshed about once a second, too coarse for
// a transfer of a few seconds, while stream and consumer state are exact.
// It uses only what the wire contract in docs/ARCHITECTURE.md names (the
// SNAPJET_ stream prefix, target_ consumers, the Snapjet-Kind header), so
// it survives refactors of the packages.
type probe struct {
	nc *nats.Conn
	js jetstream.JetStream
}

// newProbe connects directly to the server (not through a relay), and keeps
// reconnecting: the fault may be the server's.
func newProbe(url string) (*probe, error) {
	nc, err := nats.Connect(url, nats.Name("chaos-probe"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &probe{nc: nc, js: js}, nil
}

func (p *probe) close() { p.nc.Close() }

// progress is one look at the replication stream under way.
type progress struct {
	stream    string
	stored    uint64            // last stream sequence (purges do not lower it)
	acked     map[string]uint64 // ack floor per consumer name
	endStored bool              // the last message is the end marker
}

var errNoStream = errors.New("no replication stream")

// look finds the replication stream (a trial runs one replication at a
// time; skip names streams of finished rounds a sender left behind) and
// reads its progress.
func (p *probe) look(ctx context.Context, skip map[string]bool) (progress, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	names := p.js.StreamNames(ctx)
	var name string
	for n := range names.Name() {
		if strings.HasPrefix(n, "SNAPJET_") && !skip[n] {
			name = n
		}
	}
	if err := names.Err(); err != nil {
		return progress{}, err
	}
	if name == "" {
		return progress{}, errNoStream
	}
	s, err := p.js.Stream(ctx, name)
	if err != nil {
		return progress{}, err
	}
	info := s.CachedInfo()
	pr := progress{stream: name, stored: info.State.LastSeq, acked: map[string]uint64{}}
	if len(info.Config.Subjects) > 0 && info.State.Msgs > 0 {
		if m, err := s.GetLastMsgForSubject(ctx, info.Config.Subjects[0]); err == nil {
			pr.endStored = m.Header.Get("Snapjet-Kind") == "end"
		}
	}
	consumers := s.ListConsumers(ctx)
	for c := range consumers.Info() {
		pr.acked[c.Name] = c.AckFloor.Stream
	}
	return pr, nil
}

// ackedBy returns the ack floor of the consumer of target: its name is
// target_<target name>, and `replicate` derives names from the directory
// (<dir>-<hash>), so a prefix match covers both.
func (pr progress) ackedBy(target string) uint64 {
	if n, ok := pr.acked["target_"+target]; ok {
		return n
	}
	for name, n := range pr.acked {
		if strings.HasPrefix(name, "target_"+target+"-") {
			return n
		}
	}
	return 0
}
