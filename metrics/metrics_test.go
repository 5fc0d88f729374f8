package metrics

import (
	"encoding/json"
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// exercise reports one of everything, so that every family has a series.
func exercise(m *Metrics, c *clock) {
	m.ReplicationStarted("home")
	m.Sent("home", 3, 3<<20, 1<<20)
	m.StreamUse("home", 256<<20, 1<<30)
	m.Applied("backup-3fa2c1", 3, 3<<20, 1)
	m.Resumed("home", "sender")
	m.Rewound("backup-3fa2c1")
	m.Committed("home", "backup-3fa2c1", c.t.Add(-10*time.Minute))
	m.ReplicationFinished("home", ResultDone, 90*time.Second)
	m.Pruned("home", "source", 2)
}

func scrape(t *testing.T, m *Metrics, path string, health func() error) (int, string) {
	t.Helper()
	srv := httptest.NewServer(m.Handler(health))
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestScrape(t *testing.T) {
	c := &clock{time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	m := New(c.now)
	exercise(m, c)
	c.t = c.t.Add(5 * time.Minute) // lag grows while nothing arrives
	code, body := scrape(t, m, "/metrics", nil)
	if code != 200 {
		t.Fatalf("GET /metrics: %d", code)
	}
	for _, want := range []string{
		`snapjet_sent_bytes_total{job_name="home"} 3.145728e+06`,
		`snapjet_sent_wire_bytes_total{job_name="home"} 1.048576e+06`,
		`snapjet_sent_chunks_total{job_name="home"} 3`,
		`snapjet_applied_bytes_total{target="backup-3fa2c1"} 3.145728e+06`,
		`snapjet_applied_chunks_total{target="backup-3fa2c1"} 3`,
		`snapjet_redelivered_chunks_total{target="backup-3fa2c1"} 1`,
		`snapjet_replications_total{job_name="home",result="done"} 1`,
		`snapjet_replications_running{job_name="home"} 0`,
		`snapjet_resumes_total{job_name="home",side="sender"} 1`,
		`snapjet_rewinds_total{target="backup-3fa2c1"} 1`,
		`snapjet_replication_duration_seconds_bucket{job_name="home",le="128"} 1`,
		`snapjet_replication_duration_seconds_bucket{job_name="home",le="64"} 0`,
		`snapjet_last_success_timestamp_seconds{job_name="home",target="backup-3fa2c1"} 1.7961264e+09`,
		`snapjet_lag_seconds{job_name="home",target="backup-3fa2c1"} 900`,
		`snapjet_stream_bytes{job_name="home"} 2.68435456e+08`,
		`snapjet_window_bytes{job_name="home"} 1.073741824e+09`,
		`snapjet_retention_deletions_total{job_name="home",side="source"} 2`,
		"process_resident_memory_bytes ",
		"go_memstats_heap_inuse_bytes ",
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestHealthz(t *testing.T) {
	m := New(time.Now)
	if code, body := scrape(t, m, "/healthz", nil); code != 200 || body != "ok\n" {
		t.Errorf("healthy: %d %q", code, body)
	}
	down := func() error { return errors.New("NATS unreachable for 2m0s") }
	if code, body := scrape(t, m, "/healthz", down); code != 503 || body != "unhealthy: NATS unreachable for 2m0s\n" {
		t.Errorf("unhealthy: %d %q", code, body)
	}
}

// dashboardNames are the metric names the Grafana dashboard's queries use,
// with a histogram's _bucket/_sum/_count folded into its family name.
func dashboardNames(t *testing.T) map[string]bool {
	data, err := os.ReadFile("../deploy/grafana/snapjet.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	var queries []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
					queries = append(queries, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	if len(queries) < 10 {
		t.Fatalf("found only %d queries in the dashboard", len(queries))
	}
	names := map[string]bool{}
	for _, q := range queries {
		for _, n := range metricName.FindAllString(q, -1) {
			names[histogramSuffix.ReplaceAllString(n, "")] = true
		}
	}
	return names
}

var (
	metricName      = regexp.MustCompile(`\b(snapjet|go|process)_[a-z_]+\b`)
	histogramSuffix = regexp.MustCompile(`_(bucket|sum|count)$`)
)

// TestDashboardUsesOnlyRegisteredNames: every metric the dashboard queries
// exists in the registry, and every snapjet metric is on the dashboard.
func TestDashboardUsesOnlyRegisteredNames(t *testing.T) {
	c := &clock{time.Now()}
	m := New(c.now)
	exercise(m, c)
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range families {
		registered[f.GetName()] = true
	}
	used := dashboardNames(t)
	var unknown, unused []string
	for n := range used {
		if !registered[n] {
			unknown = append(unknown, n)
		}
	}
	for n := range registered {
		if strings.HasPrefix(n, "snapjet_") && !used[n] {
			unused = append(unused, n)
		}
	}
	sort.Strings(unknown)
	sort.Strings(unused)
	if len(unknown) > 0 {
		t.Errorf("the dashboard queries metrics that do not exist: %v", unknown)
	}
	if len(unused) > 0 {
		t.Errorf("snapjet metrics missing from the dashboard: %v", unused)
	}
}
