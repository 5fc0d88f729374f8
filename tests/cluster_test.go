package tests

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// transferTimeout bounds one replication of the data sets used here (at
// most about 300 MiB, which takes seconds); it is generous because the
// machine is shared, and short enough that a hang fails the test in time.
const transferTimeout = 2 * time.Minute

// killPoint is where the scenarios interrupt a transfer: about a third in,
// so a real partial exists on the target and most of the stream is still
// to come.
const killPoint = 35

// chunkSize is snapjet's default chunk size.
const chunkSize = 1 * mib

// replicator runs `snapjet replicate` with its embedded NATS server on a
// store of its own. The embedded server gets a fixed port so that status
// can be read from it while replicate runs; afterwards status reads the
// store directly.
type replicator struct {
	t      *testing.T
	store  string
	listen string
	env    []string // extra environment, e.g. a PATH that wraps btrfs
}

func newReplicator(t *testing.T) *replicator {
	return &replicator{t: t, store: t.TempDir(), listen: freeAddr(t)}
}

// args is the full replicate command line; reruns must use the same one.
func (r *replicator) args(flags []string, source string, targets ...string) []string {
	args := append([]string{"replicate", "--store", r.store, "--listen", r.listen}, flags...)
	return append(append(args, source), targets...)
}

// start begins a replicate run in the background.
func (r *replicator) start(name string, flags []string, source string, targets ...string) *proc {
	r.t.Helper()
	return startSnapjetEnv(r.t, name, r.env, r.args(flags, source, targets...)...)
}

// run replicates to the end and returns the result.
func (r *replicator) run(name string, flags []string, source string, targets ...string) result {
	r.t.Helper()
	return r.start(name, flags, source, targets...).wait(transferTimeout)
}

// liveStatus asks the embedded server of a running replicate.
func (r *replicator) liveStatus(ctx context.Context) (statusDoc, error) {
	return readStatus(ctx, "--server", "nats://"+r.listen)
}

// storedStatus reads the store while no replicate runs.
func (r *replicator) storedStatus() statusDoc {
	r.t.Helper()
	return mustStatus(r.t, "--store", r.store, "--offline", "--listen", "127.0.0.1:0")
}

// natsServer is a standalone `snapjet server` that senders and receivers
// share. It can be stopped and started again on the same port and store.
type natsServer struct {
	t     *testing.T
	addr  string
	store string
	p     *proc
}

func startServer(t *testing.T) *natsServer {
	t.Helper()
	s := &natsServer{t: t, addr: freeAddr(t), store: t.TempDir()}
	s.start()
	return s
}

func (s *natsServer) url() string { return "nats://" + s.addr }

// start runs the server and waits until it accepts connections.
func (s *natsServer) start() {
	s.t.Helper()
	s.p = startSnapjet(s.t, "server", "server", "--listen", s.addr, "--store", s.store)
	waitUntil(s.t, s.p, 30*time.Second, "the NATS server to listen on "+s.addr, func(ctx context.Context) bool {
		c, err := net.DialTimeout("tcp", s.addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// stop ends the server with sig and waits until it is gone.
func (s *natsServer) stop(sig syscall.Signal) {
	s.t.Helper()
	s.p.signal(sig)
	res := s.p.wait(30 * time.Second)
	s.t.Logf("NATS server stopped with %v (exit code %d)", sig, res.code)
}

// liveStatus reads status through the server.
func (s *natsServer) liveStatus(ctx context.Context) (statusDoc, error) {
	return readStatus(ctx, "--server", s.url())
}

// status reads status where it must work.
func (s *natsServer) status() statusDoc {
	s.t.Helper()
	return mustStatus(s.t, "--server", s.url())
}

// startReceiver runs `snapjet receive` for one target directory.
func startReceiver(t *testing.T, serverURL, name, dir string, flags ...string) *proc {
	t.Helper()
	args := append([]string{"receive", "--server", serverURL, "--target", name}, flags...)
	return startSnapjet(t, "receive-"+name, append(args, dir)...)
}
