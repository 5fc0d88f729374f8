package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

func TestExampleParses(t *testing.T) {
	cfg, err := Load("testdata/example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.URL != "tls://hub.example.net:4222" || cfg.Server.Embedded() || cfg.Server.Creds != "/etc/snapjet/site-a.creds" ||
		cfg.Server.JSDomain != "hub" || cfg.Server.InboxPrefix != "_INBOX_site-a" {
		t.Errorf("server = %+v", cfg.Server)
	}
	j := cfg.Job("home")
	if j == nil || len(cfg.Jobs) != 1 {
		t.Fatalf("jobs = %+v", cfg.Jobs)
	}
	if j.Source != "/data/home" || len(j.Targets) != 2 || j.Targets[0].Dir != "/backup/home" || j.Targets[1].Remote != "site-b" {
		t.Errorf("job = %+v", j)
	}
	want := retention.Policy{Latest: 3, Hourly: 24, Daily: 14, Weekly: 8, Monthly: 12, Yearly: 2, MinAge: 36 * time.Hour}
	if j.Retain.Target != want || j.Retain.Source != (retention.Policy{Latest: 3, Daily: 2}) {
		t.Errorf("retain = %+v", j.Retain)
	}
	if j.RateLimit != 50_000_000 || j.Window != 1<<30 || j.ChunkSize != 1<<20 || j.Compress != "better" || j.CompressedData != "never" {
		t.Errorf("rate %d window %d chunk %d compress %q compressed data %q", j.RateLimit, j.Window, j.ChunkSize, j.Compress, j.CompressedData)
	}
	at := time.Date(2026, 11, 30, 10, 20, 0, 0, time.UTC)
	if got := j.Next(at); !got.Equal(at.Add(time.Hour)) {
		t.Errorf("next = %v", got)
	}
	if len(cfg.Receivers) != 1 || cfg.Receivers[0] != (Receiver{Target: "site-a-copy", Dir: "/backup/from-site-b"}) {
		t.Errorf("receivers = %+v", cfg.Receivers)
	}
}

func TestDefaultsAndCron(t *testing.T) {
	cfg, err := Parse("s.yaml", []byte(`
jobs:
  - name: a
    source: /data/a/
    targets: [/backup/a]
    schedule: "15 3 * * 1-5"
`))
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Server.Embedded() || cfg.Server.Store != DefaultStore || cfg.Server.Listen != DefaultListen {
		t.Errorf("server defaults = %+v", cfg.Server)
	}
	j := cfg.Jobs[0]
	if j.Source != "/data/a" || !j.Retain.Source.IsZero() || j.RateLimit != 0 {
		t.Errorf("job = %+v", j)
	}
	// Friday 2026-12-04 04:00 → Monday 03:15.
	if got := j.Next(time.Date(2026, 12, 4, 4, 0, 0, 0, time.Local)); !got.Equal(time.Date(2026, 12, 7, 3, 15, 0, 0, time.Local)) {
		t.Errorf("next = %v", got)
	}
}

// TestBadConfigs is the contract of every message `snapjet config check`
// prints: FILE:LINE: key path: message (fix).
func TestBadConfigs(t *testing.T) {
	const job = "jobs:\n  - name: a\n    source: /data/a\n    targets: [/backup/a]\n    schedule: \"@every 1h\"\n"
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top-level key with hint", "job:\n  - name: a\n", []string{
			`bad.yaml:1: job: unknown key (did you mean jobs? known keys here: jobs, receivers, server)`}},
		{"nothing to do", "server:\n  store: /var/lib/snapjet\n", []string{
			`bad.yaml:1: nothing to do: no jobs and no receivers (add a jobs: list (what to replicate) or a receivers: list (what to receive))`}},
		{"yaml syntax", "jobs:\n  - name: a\n    source: \"/x\n", []string{
			`bad.yaml:3: YAML syntax: found unexpected end of stream (fix the YAML at this line; indent with spaces, never tabs)`}},
		{"empty file", "", []string{
			`bad.yaml: the file is empty (define at least one job or receiver; see the example in README.md)`}},
		{"missing required keys", "jobs:\n  - name: a\n    source: /data/a\n", []string{
			`bad.yaml:2: jobs[0].targets: missing (add targets: with a list of local directories and/or remote:NAME)`,
			`bad.yaml:2: jobs[0].schedule: missing (add schedule: "@every 1h" or a 5-field cron expression such as "0 * * * *")`}},
		{"bad cron", strings.Replace(job, `"@every 1h"`, `"0 * * *"`, 1), []string{
			`bad.yaml:5: jobs[0].schedule: "0 * * *" is not a schedule: expected exactly 5 fields, found 4: [0 * * *] (write "@every 1h" or a 5-field cron expression (minute hour day-of-month month day-of-week) such as "0 * * * *")`}},
		{"interval below a second", strings.Replace(job, `"@every 1h"`, `"@every 10ms"`, 1), []string{
			`bad.yaml:5: jobs[0].schedule: "10ms" is not an interval of at least one second (write a Go duration of at least 1s after @every, such as "@every 30m")`}},
		{"relative target and bad remote name", strings.Replace(job, "[/backup/a]", "[backup/a, remote:site b, /backup/a, /backup/a/]", 1), []string{
			`bad.yaml:4: jobs[0].targets[0]: "backup/a" is neither an absolute directory nor remote:NAME (write an absolute directory such as /backup/share, or remote:NAME for a receiver's target)`,
			`bad.yaml:4: jobs[0].targets[1]: "site b" is not a valid target name (use letters, digits, - and _ (at most 64), starting with a letter or digit)`,
			`bad.yaml:4: jobs[0].targets[3]: /backup/a is listed twice (list each target once)`}},
		{"policy: typo, negative count, bad age, empty", job + "    retain:\n      source: {latst: 3}\n      target:\n        daily: -1\n        min_age: 3 days\n", []string{
			`bad.yaml:7: jobs[0].retain.source.latst: unknown key (did you mean latest? known keys here: daily, hourly, latest, min_age, monthly, weekly, yearly)`,
			`bad.yaml:9: jobs[0].retain.target.daily: "-1" is not a count (write a whole number such as 24, or 0 to keep none by this rule)`,
			`bad.yaml:10: jobs[0].retain.target.min_age: "3 days" is not a positive duration (write a duration such as 36h, 90m, 7d or 2w)`}},
		{"empty policy", job + "    retain:\n      source: {latest: 0}\n", []string{
			`bad.yaml:7: jobs[0].retain.source: this policy keeps nothing but the incremental bases (set latest: 1 or more (or remove the policy to keep every snapshot))`}},
		{"rate, window, chunk size, compression", job + "    rate_limit: 50MB\n    window: 1MiB\n    chunk_size: 32MiB\n    compress: max\n    compressed_data: yes\n", []string{
			`bad.yaml:6: jobs[0].rate_limit: "50MB" is not a rate (write bytes per second such as 50MB/s or 800KiB/s)`,
			`bad.yaml:8: jobs[0].chunk_size: "32MiB" is not a size between 64KiB and 16MiB (write a size from 64KiB to 16MiB, such as 1MiB)`,
			`bad.yaml:9: jobs[0].compress: "max" is not a compression level (write auto, none, s2, fastest, default or better)`,
			`bad.yaml:10: jobs[0].compressed_data: "yes" is not a compressed-data mode (write auto, always or never)`}},
		{"window below two chunks", job + "    window: 1MiB\n    chunk_size: 1MiB\n", []string{
			`bad.yaml:7: jobs[0].window: window 1048576 bytes holds fewer than 2 chunks of 1048576 bytes (make window at least twice chunk_size, so the sender can publish while receivers catch up)`}},
		{"duplicate job name and shared source", job + strings.Replace(job, "jobs:\n", "", 1), []string{
			`bad.yaml:7: jobs[1].source: /data/a is already the source of the job at line 3; two jobs on one source would prune each other's snapshots (make it one job with all the targets)`,
			`bad.yaml:6: jobs[1].name: job name "a" is taken by the job at line 2 (give every job its own name)`}},
		{"domain and inbox prefix", "server:\n  url: nats://site:4222\n  js_domain: hub.x\n  inbox_prefix: _INBOX.*\n" + job, []string{
			`bad.yaml:3: server.js_domain: "hub.x" is not a NATS subject token (write a name such as hub: letters, digits, -, _ and $, no dots, spaces or wildcards)`,
			`bad.yaml:4: server.inbox_prefix: "_INBOX.*" is not a NATS subject token (write a name such as _INBOX_site-a: letters, digits, -, _ and $, no dots, spaces or wildcards)`}},
		{"monitoring of an external server", "server:\n  url: nats://hub:4222\n  monitor_listen: 127.0.0.1:8222\n" + job, []string{
			`bad.yaml:3: server.monitor_listen: only the embedded server has one, and server.url names an external server (remove it, or remove server.url to embed a server)`}},
		{"password in the URL is refused and never repeated", "server:\n  url: nats://snap:hunter2@hub:4222\n  listen: 0.0.0.0:4222\n" + job, []string{
			`bad.yaml:2: server.url: nats://snap:xxxxx@hub:4222 carries a password, which would show in process lists and logs (remove the password from the URL and put it in the file named by password_file)`,
			`bad.yaml:3: server.listen: only the embedded server has one, and server.url names an external server (remove it, or remove server.url to embed a server)`}},
		{"credential files", "server:\n  creds: etc/a.creds\n  nkey: /etc/a.nk\n  tls_cert: /etc/c.pem\n" + job, []string{
			`bad.yaml:2: server.creds: "etc/a.creds" is a relative path (write an absolute path (the daemon runs from /))`,
			`bad.yaml:3: server.nkey: creds and nkey both set (keep creds (a user JWT with its seed) or nkey (a bare nkey seed), not both)`,
			`bad.yaml:4: server.tls_cert: tls_cert without tls_key (add tls_key: a client certificate needs both files)`}},
		{"receivers", job + "receivers:\n  - target: b\n    dir: /backup/a\n  - target: b\n    dir: /backup/b\n    dri: /x\n  - dir: /backup/b\n", []string{
			`bad.yaml:9: receivers[1].target: target "b" is already served by the receiver at line 7 (give each receiver its own target name)`,
			`bad.yaml:11: receivers[1].dri: unknown key (did you mean dir? known keys here: dir, target)`,
			`bad.yaml:12: receivers[2].dir: /backup/b is already the directory of the receiver at line 10 (give each receiver its own directory)`,
			`bad.yaml:12: receivers[2].target: missing (add target: followed by the name this receiver serves)`,
			`bad.yaml:8: receivers[0].dir: /backup/a is already a local target of job "a" (drop this receiver: the job receives into its local targets itself, or make the job's target remote:b)`}},
		{"wrong shapes", "server: nats://hub\njobs:\n  name: a\n", []string{
			`bad.yaml:1: server: expected a mapping, found "nats://hub" (write key: value pairs, one per line, indented below server)`,
			"bad.yaml:3: jobs: expected a list, found a mapping (write a list of jobs, each item starting with `- name: ...`)"}},
		{"targets inside the source, the snapshot directory, or shared with a same-named source", job + `  - name: b
    source: /srv/a
    targets: [/backup/a, /srv/a/copies, /srv/.snapjet/x]
    schedule: "@every 1h"
`, []string{
			`bad.yaml:8: jobs[1].targets[0]: the job at line 2 already puts snapshots named a.<time> into /backup/a (use another target directory for one of the jobs, or rename one source)`,
			`bad.yaml:8: jobs[1].targets[1]: /srv/a/copies is inside the source /srv/a; every snapshot would contain the copies before it (put the target outside the source, e.g. on another subvolume or disk)`,
			`bad.yaml:8: jobs[1].targets[2]: /srv/.snapjet/x is inside snapjet's snapshot directory /srv/.snapjet (put the target outside /srv/.snapjet)`}},
		{"duplicate key", job + "    schedule: \"@every 2h\"\n", []string{
			`bad.yaml:6: jobs[0].schedule: duplicate key (first at line 5) (remove one of them)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("bad.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted: %+v", cfg)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Error("a message repeats the password")
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/nope.yaml")
	if !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), "testdata/nope.yaml: cannot read the config file: ") {
		t.Errorf("err = %v", err)
	}
}

func TestSnapshotRootMatchesSender(t *testing.T) {
	if got := filepath.Dir(sender.SnapshotDir("/srv/a")); got != "/srv/.snapjet" {
		t.Errorf("the sender keeps snapshots under %s; targetsApart assumes /srv/.snapjet", got)
	}
}

func TestMaxChunkMatchesStreams(t *testing.T) {
	if maxChunk != streams.MaxChunk {
		t.Errorf("config allows chunks up to %d bytes, receivers up to %d", maxChunk, streams.MaxChunk)
	}
}

func TestValues(t *testing.T) {
	for in, want := range map[string]int64{"1MiB": 1 << 20, "50MB": 50e6, "1.5GiB": 3 << 29, "4096": 4096, "10 KB": 10e3} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "2w": 14 * 24 * time.Hour, "36h": 36 * time.Hour, "1h30m": 90 * time.Minute} {
		if got, err := parseDuration(in); err != nil || got != want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestMetricsListen(t *testing.T) {
	cfg, err := Parse("ok.yaml", []byte("server: {metrics_listen: \"127.0.0.1:9464\"}\nreceivers: [{target: a, dir: /b}]\n"))
	if err != nil || cfg.Server.MetricsListen != "127.0.0.1:9464" {
		t.Fatalf("%+v %v", cfg, err)
	}
	_, err = Parse("bad.yaml", []byte("server: {metrics_listen: \"9464\"}\nreceivers: [{target: a, dir: /b}]\n"))
	if err == nil || !strings.Contains(err.Error(), `bad.yaml:1: server.metrics_listen: "9464" is not HOST:PORT`) {
		t.Fatalf("error %v", err)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"": 0, "0": 0, "50MB/s": 50e6, "800KiB/s": 800 << 10, "1000": 1000} {
		if got, err := ParseRate(in); err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"fast", "-1MB/s", "5 parsecs"} {
		if _, err := ParseRate(in); err == nil {
			t.Errorf("ParseRate(%q) accepted", in)
		}
	}
}
