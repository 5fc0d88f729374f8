// Package config owns snapjet's configuration file (/etc/snapjet/snapjet.yaml):
// its schema, its defaults, and a validation that reports every error with
// the file, line and key path it concerns and how to fix it. It reads no
// other file and touches no filesystem besides the config file itself, so
// `snapjet config check` can run anywhere.
package config

import (
	"fmt"
	"os"
	"time"

	"github.com/robfig/cron/v3"

	"github.com/snapjet/snapjet/retention"
)

// DefaultPath is where the daemon looks for its config file.
const DefaultPath = "/etc/snapjet/snapjet.yaml"

// Defaults of the server section, the same as the flags of the one-shot
// commands.
const (
	DefaultStore  = "/var/lib/snapjet"
	DefaultListen = "127.0.0.1:4222"
)

// Config is one validated config file.
type Config struct {
	File      string
	Server    Server
	Jobs      []Job
	Receivers []Receiver
}

// Server is how this node reaches NATS: an external server when URL is
// set, otherwise an embedded one on Store listening on Listen. The file
// options name files only: a secret never sits in the config itself.
type Server struct {
	URL          string
	Store        string
	Listen       string
	Creds        string // NATS creds file (JWT and nkey seed)
	NKey         string // nkey seed file
	TLSCA        string
	TLSCert      string
	TLSKey       string
	PasswordFile string
	// MetricsListen is where the daemon serves Prometheus /metrics and
	// /healthz (HOST:PORT); empty: nowhere.
	MetricsListen string
	// MonitorListen is where the embedded server serves its HTTP
	// monitoring (/varz, /jsz); empty: nowhere.
	MonitorListen string
	// JSDomain is the JetStream domain of the state and the streams (hub
	// from a site node); empty: the server's own.
	JSDomain string
	// InboxPrefix is the subject prefix of the client's reply inboxes, for
	// a site whose permissions allow only its own; empty: _INBOX.
	InboxPrefix string
}

// Embedded reports whether this node runs its own server.
func (s Server) Embedded() bool { return s.URL == "" }

// Job is one source replicated to its targets on a schedule.
type Job struct {
	Name      string
	Line      int // where the job starts in the file, for messages
	Source    string
	Targets   []Target
	Schedule  Schedule
	Retain    Retain
	RateLimit int64  // bytes per second on the wire; 0 = unlimited
	Compress  string // zstd level of the chunks or "auto"; "" = auto
	// CompressedData is the compressed-data mode of the sends (auto,
	// always, never); "" = auto.
	CompressedData string
	Window         int64 // 0 = the sender's default
	ChunkSize      int   // 0 = the sender's default
}

// Target is a local target directory (Dir) or a receiver's target name
// (Remote); exactly one is set.
type Target struct {
	Dir    string
	Remote string
}

// String gives the target as written in the file.
func (t Target) String() string {
	if t.Remote != "" {
		return RemotePrefix + t.Remote
	}
	return t.Dir
}

// RemotePrefix marks a target that a receiver elsewhere serves.
const RemotePrefix = "remote:"

// Schedule is a parsed `@every D` or 5-field cron expression.
type Schedule struct {
	Spec string
	cron.Schedule
}

// Retain is the retention policy of each side; a zero Policy keeps all.
type Retain struct {
	Source retention.Policy
	Target retention.Policy
}

// Receiver is a target this node serves: replications addressed to Target
// are received into Dir.
type Receiver struct {
	Target string
	Dir    string
}

// Load reads and validates the config file at path. A config with errors
// returns *InvalidError (errors.Is ErrInvalid) listing all of them.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &InvalidError{Errs: []Error{{File: path,
			Msg: fmt.Sprintf("cannot read the config file: %v", err),
			Fix: "give the path of a readable YAML file, by default " + DefaultPath}}}
	}
	return Parse(path, data)
}

// Parse validates data as the contents of the config file named file.
func Parse(file string, data []byte) (*Config, error) {
	p := &parser{file: file, seenSource: map[string]int{}, seenTarget: map[string]int{}, seenDir: map[string]int{}, seenDest: map[string]int{}}
	cfg := p.document(data)
	if len(p.errs) > 0 {
		return nil, &InvalidError{Errs: p.errs}
	}
	cfg.File = file
	return cfg, nil
}

// Job returns the job called name, or nil.
func (c *Config) Job(name string) *Job {
	for i := range c.Jobs {
		if c.Jobs[i].Name == name {
			return &c.Jobs[i]
		}
	}
	return nil
}

// Next is when the job runs next after t.
func (j *Job) Next(t time.Time) time.Time { return j.Schedule.Next(t) }
