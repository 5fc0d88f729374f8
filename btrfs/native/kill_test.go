package native

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

// The kill test runs the receiver in a child process (this test binary
// with helperEnv set) and kills it with SIGKILL at random moments, so the
// kill can land anywhere, even between a syscall and its journal entry.
const helperEnv = "SNAPJET_NATIVE_RECEIVE_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		chunk, _ := strconv.Atoi(os.Getenv("HELPER_CHUNK"))
		if err := receiveHelper(os.Getenv("HELPER_DIR"), os.Getenv("HELPER_STREAM"), os.Getenv("HELPER_CP"), int64(chunk)); err != nil {
			fmt.Fprintln(os.Stderr, "receive helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// The receiver logs one line per subvolume and resume; thousands of
	// resumes would bury the test output.
	slog.SetDefault(slog.New(slog.DiscardHandler))
	os.Exit(m.Run())
}

// receiveHelper is what a receiving service does: resume from the durable
// checkpoint file if there is one (else persist the initial checkpoint),
// feed chunks, after each one
// take a checkpoint and write it durably (temp file, fsync, rename), and
// finish at the end, recording that with a ".done" file.
func receiveHelper(dir, streamFile, cpFile string, chunk int64) error {
	stream, err := os.ReadFile(streamFile)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var r *Receiver
	var pos int64
	if b, err := os.ReadFile(cpFile); err == nil {
		cp, err := UnmarshalCheckpoint(b)
		if err != nil {
			return err
		}
		if r, err = Resume(ctx, dir, cp, Options{}); err != nil {
			return err
		}
		pos = cp.Fed()
	} else if errors.Is(err, fs.ErrNotExist) {
		if r, err = New(ctx, dir, Options{}); err != nil {
			return err
		}
		// Persist the start before the first byte: a kill right after the
		// subvolume was created must find a checkpoint to resume from.
		cp, err := r.Checkpoint()
		if err != nil {
			return err
		}
		if err := writeDurably(cpFile, cp); err != nil {
			return err
		}
	} else {
		return err
	}
	for pos < int64(len(stream)) {
		end := min(pos+chunk, int64(len(stream)))
		if _, err := r.Write(stream[pos:end]); err != nil {
			return err
		}
		pos = end
		cp, err := r.Checkpoint()
		if err != nil {
			return err
		}
		if err := writeDurably(cpFile, cp); err != nil {
			return err
		}
	}
	if _, err := r.Finish(); err != nil {
		return err
	}
	return os.WriteFile(cpFile+".done", nil, 0o644)
}

func writeDurably(path string, cp Checkpoint) error {
	b, err := cp.Marshal()
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// TestKill9 receives a full and an incremental stream in child processes
// that are killed with SIGKILL again and again until one finishes; the
// result must equal the source.
func TestKill9(t *testing.T) {
	lfs := loopfs.New(t, 2<<30)
	src := subvolume(t, join(lfs.Dir, "src"))
	for _, sc := range scenarios {
		if sc.name == "renames" || sc.name == "hardlinks" || sc.name == "clones" {
			mkdirs(t, join(src, sc.name))
			sc.setup(t, join(src, sc.name))
		}
	}
	sh(t, "cd "+src+" && mkdir many && i=0; while [ $i -lt 2000 ]; do echo $i > many/f$i; i=$((i+1)); done")
	for i := 0; i < 8; i++ {
		writeRandom(t, join(src, fmt.Sprint("big", i)), 4<<20, int64(i))
	}
	snap1 := snapshot(t, src, join(lfs.Dir, "snap1"))
	for _, sc := range scenarios {
		if sc.name == "renames" || sc.name == "hardlinks" || sc.name == "clones" {
			sc.change(t, join(src, sc.name))
		}
	}
	sh(t, "cd "+src+" && mkdir many2 && for i in $(seq 0 3 1999); do mv many/f$i many2/g$i; done && rm -rf many")
	snap2 := snapshot(t, src, join(lfs.Dir, "snap2"))

	nat := join(lfs.Dir, "nat")
	mkdirs(t, nat)
	tmp := t.TempDir()
	rng := rand.New(rand.NewSource(7))
	// The small incremental stream goes in small chunks, so that it takes
	// long enough to be killed often.
	for _, step := range []struct {
		snap, parent string
		chunk        int
	}{{snap1, "", 64 << 10}, {snap2, snap1, 2 << 10}} {
		stream := sendStream(t, step.snap, btrfs.SendOptions{Proto: 2, Parent: step.parent})
		name := filepath.Base(step.snap)
		streamFile, cpFile := join(tmp, name+".stream"), join(tmp, name+".cp")
		if err := os.WriteFile(streamFile, stream, 0o644); err != nil {
			t.Fatal(err)
		}
		kills := 0
		for run := 0; ; run++ {
			if run > 200 {
				t.Fatalf("%s: no run finished after %d kills", name, kills)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"=1", "HELPER_DIR="+nat, "HELPER_STREAM="+streamFile, "HELPER_CP="+cpFile, "HELPER_CHUNK="+strconv.Itoa(step.chunk))
			// Read only after Wait, which waits for the output copying.
			out := &bytes.Buffer{}
			cmd.Stdout, cmd.Stderr = out, out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			// The first kills come early, later runs get more time so
			// that the receive makes progress overall; past 50 runs (a
			// loaded machine, where a child needs long to start at all)
			// each run gets a further 100 ms, so some run always finishes.
			delay := time.Duration(10+rng.Intn(30+5*run)) * time.Millisecond
			if run > 50 {
				delay += time.Duration(run-50) * 100 * time.Millisecond
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("%s: helper failed: %v\n%s", name, err, out.String())
				}
			case <-time.After(delay):
				_ = cmd.Process.Kill() // SIGKILL
				<-done
				kills++
			}
			if _, err := os.Stat(cpFile + ".done"); err == nil {
				break
			}
		}
		t.Logf("%s: %d bytes received through %d kill -9", name, len(stream), kills)
		if kills < 10 {
			t.Errorf("%s: only %d kills, want at least 10", name, kills)
		}
		got := join(nat, name)
		sameTree(t, step.snap, got)
		info, err := btrfs.Inspect(got)
		if err != nil {
			t.Fatal(err)
		}
		if !info.ReadOnly || info.ReceivedUUID.IsZero() {
			t.Errorf("%s: read-only %v, received UUID %s", got, info.ReadOnly, info.ReceivedUUID)
		}
	}
}
