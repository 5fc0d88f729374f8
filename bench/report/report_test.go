package report

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/bench/proctree"
)

func TestUpdateReadme(t *testing.T) {
	block := func(md string) string { return Begin + "\n" + md + End + "\n" }
	for _, tc := range []struct {
		name, before, md, want string
	}{
		{"new file", "", "T1\n", block("T1\n")},
		{"appended", "# Bench\n\nintro\n", "T1\n", "# Bench\n\nintro\n\n" + block("T1\n")},
		{"replaced between markers", "head\n" + block("old\n") + "tail\n", "new\n", "head\n" + block("new\n") + "tail\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "README.md")
			if tc.before != "" {
				if err := os.WriteFile(path, []byte(tc.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 2; i++ { // a second update must not stack blocks
				if err := UpdateReadme(path, tc.md); err != nil {
					t.Fatal(err)
				}
			}
			got, _ := os.ReadFile(path)
			if string(got) != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestMarkdownRows(t *testing.T) {
	r := &Results{Mode: "quick", Started: time.Unix(0, 0), Finished: time.Unix(90, 0),
		Machine: Machine{CPU: "cpu", Cores: 2, Versions: map[string]string{"go": "go1"}},
		Rows: []Row{
			{Dataset: "a", Method: "raw", WallSeconds: 2, StreamBytes: 200e6, MBps: 100, VsRaw: 1, WireBytes: 100e6,
				CPUSeconds: 1.5, Procs: []proctree.Proc{{Label: "btrfs send", Count: 1, PeakRSS: 3 << 20}, {Label: "btrfs receive", Count: 1, Written: 150e6}}, Verified: "ok"},
			{Dataset: "a", Method: "x | y", Error: "exit 1 | stderr"},
		},
		Targets: []Target{{Goal: "g", Figure: "f", Met: true}},
	}
	md := Markdown(r)
	for _, want := range []string{
		"| a | raw | 2.00 | 100 | 1.00 | 100.0 | 0.500 | 1.5 | 150 | btrfs send 3.0 | ok |",
		"| a | x \\| y | failed | | | | | | | | exit 1 \\| stderr |",
		"| g | f | yes |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
