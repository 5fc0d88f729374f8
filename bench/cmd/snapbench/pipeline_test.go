package main

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/snapjet/snapjet/bench/proctree"
)

func TestPipeline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		procs   func() []*proc
		counted int
		want    int64  // bytes counted
		wantErr string // part of the error, "" for success
	}{
		{
			name: "direct pipe",
			procs: func() []*proc {
				return []*proc{command("head", "-c", "100000", "/dev/zero"), command("cat")}
			},
			counted: -1,
		},
		{
			name: "counted between the first two",
			procs: func() []*proc {
				return []*proc{command("head", "-c", "300000", "/dev/zero"), command("cat"), command("wc", "-c")}
			},
			counted: 0,
			want:    300000,
		},
		{
			name: "a failing consumer fails the pipeline with its stderr",
			procs: func() []*proc {
				return []*proc{command("head", "-c", "1000", "/dev/zero"), command("sh", "-c", "cat >/dev/null; echo broken >&2; exit 3")}
			},
			counted: 0,
			want:    1000,
			wantErr: "broken",
		},
		{
			name: "a consumer that stops early ends the producer",
			procs: func() []*proc {
				return []*proc{command("yes"), command("head", "-c", "10")}
			},
			counted: -1,
			wantErr: "yes", // killed by SIGPIPE, as in a shell without pipefail
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := proctree.New()
			defer g.Close()
			var n atomic.Int64
			err := pipeline(g, tc.procs(), tc.counted, &n)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("pipeline: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("pipeline error %v, want one mentioning %q", err, tc.wantErr)
			}
			if n.Load() != tc.want {
				t.Errorf("counted %d bytes, want %d", n.Load(), tc.want)
			}
			if g.CPU() < 0 {
				t.Errorf("negative CPU %v", g.CPU())
			}
		})
	}
}

func TestTailKeepsTheEnd(t *testing.T) {
	var tl tail
	tl.Write([]byte(strings.Repeat("a", tailSize)))
	tl.Write([]byte("the end"))
	got := tl.String()
	if len(got) != tailSize || !strings.HasSuffix(got, "the end") {
		t.Fatalf("tail kept %d bytes ending %q", len(got), got[len(got)-10:])
	}
}
