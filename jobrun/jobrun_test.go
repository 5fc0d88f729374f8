package jobrun

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/metrics"
	"github.com/snapjet/snapjet/sender"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(body)
}

// value reads one sample, e.g. value(body, `snapjet_sent_bytes_total{job_name="share"}`);
// -1 when absent.
func value(body, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMetricsDuringReplication scrapes /metrics while a real replication
// (loop btrfs, embedded server) runs and after it: bytes sent grow during
// it, and at the end equal the record's, the target applied as much,
// one replication is done and none runs.
// fixture is a source with size bytes of incompressible data, a local
// target on loop btrfs and an embedded server.
type fixture struct {
	src, backup string
	b           *broker.Broker
	log         *slog.Logger
}

func newFixture(t *testing.T, size int) *fixture {
	ctx := context.Background()
	fs := loopfs.New(t, 512<<20)
	src := filepath.Join(fs.Dir, "data", "share")
	backup := filepath.Join(fs.Dir, "backup")
	for _, d := range []string{filepath.Dir(src), backup} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := btrfs.CreateSubvolume(ctx, src); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size) // incompressible
	_, _ = rand.Read(data)
	if err := os.WriteFile(filepath.Join(src, "blob"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := broker.Connect(broker.Options{Store: t.TempDir(), Listen: "127.0.0.1:0", Name: "test", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return &fixture{src: src, backup: backup, b: b, log: log}
}

func (f *fixture) job() config.Job {
	sched, _ := cron.ParseStandard("@every 1h")
	return config.Job{Name: "share", Source: f.src, Targets: []config.Target{{Dir: f.backup}},
		Schedule: config.Schedule{Spec: "@every 1h", Schedule: sched}, ChunkSize: 1 << 20}
}

func TestMetricsDuringReplication(t *testing.T) {
	ctx := context.Background()
	const size = 6 << 20 // six chunks and more on the wire
	f := newFixture(t, size)
	b, log := f.b, f.log
	m := metrics.New(time.Now)
	srv := httptest.NewServer(m.Handler(nil))
	defer srv.Close()

	job := f.job()
	target := TargetName(job.Targets[0])
	var mu sync.Mutex
	var during []string
	opt := Options{Log: log, Metrics: m, OnProgress: func(sender.Progress) {
		body := scrape(t, srv.URL)
		mu.Lock()
		during = append(during, body)
		mu.Unlock()
	}}
	out, err := Run(ctx, b.NC, b.JS, job, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Failed()) > 0 {
		t.Fatalf("failed: %+v", out.Failed())
	}
	if len(during) == 0 {
		t.Fatal("no scrape during the replication")
	}
	last := during[len(during)-1]
	if v := value(last, `snapjet_sent_bytes_total{job_name="share"}`); v <= 0 {
		t.Errorf("during the replication: sent bytes %v", v)
	}
	if v := value(last, `snapjet_replications_running{job_name="share"}`); v != 1 {
		t.Errorf("during the replication: running %v", v)
	}

	store, err := coordinator.OpenStore(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	rec, _, err := store.Get(ctx, out.Targets[0].Replication)
	if err != nil {
		t.Fatal(err)
	}
	end := scrape(t, srv.URL)
	checks := []struct {
		series string
		want   float64
	}{
		{`snapjet_sent_bytes_total{job_name="share"}`, float64(rec.BytesSent)},
		{`snapjet_sent_wire_bytes_total{job_name="share"}`, float64(rec.WireBytes)},
		{`snapjet_sent_chunks_total{job_name="share"}`, float64(rec.ChunksSent)},
		{`snapjet_applied_bytes_total{target="` + target + `"}`, float64(rec.BytesSent)},
		{`snapjet_replications_total{job_name="share",result="done"}`, 1},
		{`snapjet_replications_running{job_name="share"}`, 0},
	}
	for _, c := range checks {
		if got := value(end, c.series); got != c.want {
			t.Errorf("%s = %v, want %v", c.series, got, c.want)
		}
	}
	if rec.BytesSent < size {
		t.Errorf("record says %d bytes sent for %d bytes of data", rec.BytesSent, size)
	}
	if v := value(end, `snapjet_last_success_timestamp_seconds{job_name="share",target="`+target+`"}`); v <= 0 {
		t.Errorf("last success %v", v)
	}
	t.Logf("sent %d bytes in %d chunks (%d on the wire); %d scrapes during the run", rec.BytesSent, rec.ChunksSent, rec.WireBytes, len(during))
}

// TestRateLimitEndToEnd: a job's rate_limit holds the transfer to its
// rate: 8 MiB at 4 MiB/s cannot take less than 2 s (minus one burst), and
// on an idle machine takes little more.
func TestRateLimitEndToEnd(t *testing.T) {
	const size, bps = 8 << 20, 4 << 20
	f := newFixture(t, size)
	job := f.job()
	job.RateLimit = bps
	var first, last time.Time
	var sent int64
	opt := Options{Log: f.log, OnProgress: func(p sender.Progress) {
		if first.IsZero() {
			first = time.Now()
		}
		last, sent = time.Now(), p.Wire
	}}
	start := time.Now()
	out, err := Run(context.Background(), f.b.NC, f.b.JS, job, opt)
	if err != nil || len(out.Failed()) > 0 {
		t.Fatalf("run: %v %+v", err, out)
	}
	took := time.Since(start)
	floor := time.Duration(float64(sent-bps/10) / bps * float64(time.Second))
	if took < floor {
		t.Errorf("%d wire bytes in %v: faster than %d B/s allows (%v)", sent, took, bps, floor)
	}
	if rate := float64(sent) / last.Sub(start).Seconds(); rate > bps*1.1 {
		t.Errorf("%d wire bytes at %.0f B/s, more than 10%% over %d", sent, rate, bps)
	}
	t.Logf("%d wire bytes; run took %v (the limit alone: %v)", sent, took, time.Duration(float64(sent)/bps*float64(time.Second)))
}
