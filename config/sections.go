package config

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
	"go.yaml.in/yaml/v3"

	"github.com/snapjet/snapjet/retention"
	"github.com/snapjet/snapjet/sender"
	"github.com/snapjet/snapjet/streams"
)

// validName is what a job or target name may contain: it becomes part of
// NATS subjects and consumer names.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)

const nameFix = "use letters, digits, - and _ (at most 64), starting with a letter or digit"

// server fills s and returns the lines of the keys that only the embedded
// server has (store, listen, monitor_listen; absent: 0), so that they can be
// refused next to an external URL.
func (p *parser) server(n *yaml.Node, path string, s *Server) (embedded map[string]int) {
	file := func(dst *string) handler {
		return func(n *yaml.Node, path string) {
			if v, ok := p.absPath(n, path); ok {
				*dst = v
			}
		}
	}
	lines := map[string]int{}
	p.mapping(n, path, map[string]handler{
		"url": func(n *yaml.Node, path string) { s.URL = p.serverURL(n, path) },
		"store": func(n *yaml.Node, path string) {
			lines["store"] = n.Line
			file(&s.Store)(n, path)
		},
		"listen": func(n *yaml.Node, path string) {
			lines["listen"] = n.Line
			s.Listen = p.listen(n, path)
		},
		"creds":          func(n *yaml.Node, path string) { lines["creds"] = n.Line; file(&s.Creds)(n, path) },
		"nkey":           func(n *yaml.Node, path string) { lines["nkey"] = n.Line; file(&s.NKey)(n, path) },
		"tls_ca":         file(&s.TLSCA),
		"tls_cert":       func(n *yaml.Node, path string) { lines["tls_cert"] = n.Line; file(&s.TLSCert)(n, path) },
		"tls_key":        func(n *yaml.Node, path string) { lines["tls_key"] = n.Line; file(&s.TLSKey)(n, path) },
		"password_file":  file(&s.PasswordFile),
		"metrics_listen": func(n *yaml.Node, path string) { s.MetricsListen = p.listen(n, path) },
		"monitor_listen": func(n *yaml.Node, path string) {
			lines["monitor_listen"] = n.Line
			s.MonitorListen = p.listen(n, path)
		},
		"js_domain":    func(n *yaml.Node, path string) { s.JSDomain = p.token(n, path, "hub") },
		"inbox_prefix": func(n *yaml.Node, path string) { s.InboxPrefix = p.token(n, path, "_INBOX_site-a") },
	}, nil)
	if lines["creds"] > 0 && lines["nkey"] > 0 {
		p.errorf(lines["nkey"], path+".nkey", "keep creds (a user JWT with its seed) or nkey (a bare nkey seed), not both", "creds and nkey both set")
	}
	if (lines["tls_cert"] > 0) != (lines["tls_key"] > 0) {
		line, have, missing := lines["tls_cert"], "tls_cert", "tls_key"
		if line == 0 {
			line, have, missing = lines["tls_key"], "tls_key", "tls_cert"
		}
		p.errorf(line, path+"."+have, "add "+missing+": a client certificate needs both files", "%s without %s", have, missing)
	}
	return lines
}

// subjectToken matches one token of a NATS subject: no dots, spaces or
// wildcards.
var subjectToken = regexp.MustCompile(`^[A-Za-z0-9_$-]{1,64}$`)

// token accepts one subject token, such as a JetStream domain.
func (p *parser) token(n *yaml.Node, path, example string) string {
	v, ok := p.str(n, path, "write a name such as "+example)
	if ok && !subjectToken.MatchString(v) {
		p.errorf(n.Line, path, "write a name such as "+example+": letters, digits, -, _ and $, no dots, spaces or wildcards", "%q is not a NATS subject token", v)
		return ""
	}
	return v
}

var urlSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// serverURL accepts a comma-separated list of NATS URLs. A password inside
// the URL is refused: it would show in ps, logs and errors.
func (p *parser) serverURL(n *yaml.Node, path string) string {
	v, ok := p.str(n, path, "write the URL of the NATS server, e.g. nats://hub:4222, or remove url to embed a server")
	if !ok {
		return ""
	}
	for _, one := range strings.Split(v, ",") {
		u, err := url.Parse(strings.TrimSpace(one))
		if err != nil || !urlSchemes[u.Scheme] || u.Host == "" {
			p.errorf(n.Line, path, "write nats://HOST:PORT or tls://HOST:PORT (several separated by commas)", "%q is not a NATS server URL", redact(one))
			continue
		}
		if _, set := u.User.Password(); set {
			p.errorf(n.Line, path, "remove the password from the URL and put it in the file named by password_file", "%s carries a password, which would show in process lists and logs", u.Redacted())
		}
	}
	return v
}

// redact hides whatever sits between "://" and "@" in a string that did
// not even parse as a URL, so a message never repeats a password.
func redact(s string) string {
	if i, j := strings.Index(s, "://"), strings.LastIndex(s, "@"); i >= 0 && j > i {
		return s[:i+3] + "xxxxx" + s[j:]
	}
	return s
}

func (p *parser) listen(n *yaml.Node, path string) string {
	v, ok := p.str(n, path, "write HOST:PORT such as 127.0.0.1:4222")
	if !ok {
		return ""
	}
	_, port, err := net.SplitHostPort(v)
	if pn, perr := strconv.Atoi(port); err != nil || perr != nil || pn < 0 || pn > 65535 {
		p.errorf(n.Line, path, "write HOST:PORT such as 127.0.0.1:4222 (port 0 picks a free one)", "%q is not HOST:PORT", v)
	}
	return v
}

func (p *parser) absPath(n *yaml.Node, path string) (string, bool) {
	v, ok := p.str(n, path, "write an absolute path")
	if !ok {
		return "", false
	}
	if !filepath.IsAbs(v) {
		p.errorf(n.Line, path, "write an absolute path (the daemon runs from /)", "%q is a relative path", v)
		return "", false
	}
	return filepath.Clean(v), true
}

func (p *parser) jobs(n *yaml.Node, path string) []Job {
	var out []Job
	names := map[string]int{}
	p.sequence(n, path, "write a list of jobs, each item starting with `- name: ...`", func(i int, n *yaml.Node, path string) {
		j := p.job(n, path)
		if j.Name != "" {
			if first, dup := names[j.Name]; dup {
				p.errorf(j.Line, path+".name", "give every job its own name", "job name %q is taken by the job at line %d", j.Name, first)
			}
			names[j.Name] = j.Line
		}
		out = append(out, j)
	})
	return out
}

func (p *parser) job(n *yaml.Node, path string) Job {
	j := Job{Line: n.Line}
	var chunkLine, windowLine int
	var targetLines []int
	p.mapping(n, path, map[string]handler{
		"name":            func(n *yaml.Node, path string) { j.Name = p.name(n, path) },
		"source":          func(n *yaml.Node, path string) { j.Source = p.source(n, path) },
		"targets":         func(n *yaml.Node, path string) { j.Targets, targetLines = p.targets(n, path) },
		"schedule":        func(n *yaml.Node, path string) { j.Schedule = p.schedule(n, path) },
		"retain":          func(n *yaml.Node, path string) { j.Retain = p.retain(n, path) },
		"rate_limit":      func(n *yaml.Node, path string) { j.RateLimit = p.rate(n, path) },
		"compress":        func(n *yaml.Node, path string) { j.Compress = p.compress(n, path) },
		"compressed_data": func(n *yaml.Node, path string) { j.CompressedData = p.compressedData(n, path) },
		"window": func(n *yaml.Node, path string) {
			windowLine = n.Line
			j.Window = p.size(n, path, 1<<20, 1<<40, "write a size such as 1GiB (at least 1MiB)")
		},
		"chunk_size": func(n *yaml.Node, path string) {
			chunkLine = n.Line
			j.ChunkSize = int(p.size(n, path, minChunk, maxChunk, "write a size from 64KiB to 16MiB, such as 1MiB"))
		},
	}, []string{"name", "source", "targets", "schedule"})
	if j.Window > 0 && j.ChunkSize > 0 && j.Window < 2*int64(j.ChunkSize) {
		p.errorf(max(windowLine, chunkLine), path+".window", "make window at least twice chunk_size, so the sender can publish while receivers catch up",
			"window %d bytes holds fewer than 2 chunks of %d bytes", j.Window, j.ChunkSize)
	}
	p.targetsApart(j, path, targetLines)
	return j
}

// targetsApart refuses local targets that cannot work: inside the source
// (each snapshot would hold the copies before it), inside snapjet's
// snapshot directory (prune would judge copies as source snapshots), or a
// directory into which another job already puts snapshots of the same
// name (the sender names them <base name of source>.<UTC time>).
func (p *parser) targetsApart(j Job, path string, lines []int) {
	if j.Source == "" {
		return
	}
	// The parent of sender.SnapshotDir(source).
	snapRoot := filepath.Join(filepath.Dir(j.Source), ".snapjet")
	for i, t := range j.Targets {
		if t.Dir == "" {
			continue
		}
		tp := fmt.Sprintf("%s.targets[%d]", path, i)
		switch {
		case within(t.Dir, j.Source):
			p.errorf(lines[i], tp, "put the target outside the source, e.g. on another subvolume or disk", "%s is inside the source %s; every snapshot would contain the copies before it", t.Dir, j.Source)
		case within(t.Dir, snapRoot):
			p.errorf(lines[i], tp, "put the target outside "+snapRoot, "%s is inside snapjet's snapshot directory %s", t.Dir, snapRoot)
		default:
			key := t.Dir + "\x00" + filepath.Base(j.Source)
			if first, dup := p.seenDest[key]; dup {
				p.errorf(lines[i], tp, "use another target directory for one of the jobs, or rename one source",
					"the job at line %d already puts snapshots named %s.<time> into %s", first, filepath.Base(j.Source), t.Dir)
			}
			p.seenDest[key] = j.Line
		}
	}
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// Bounds of chunk_size: below 64 KiB the per-message overhead dominates;
// above streams.MaxChunk receivers refuse the chunk.
const (
	minChunk = 64 << 10
	maxChunk = 16 << 20
)

func (p *parser) name(n *yaml.Node, path string) string {
	v, ok := p.str(n, path, nameFix)
	if ok && !validName.MatchString(v) {
		p.errorf(n.Line, path, nameFix, "%q is not a valid name", v)
		return ""
	}
	return v
}

// source refuses a source shared by two jobs: they would share the
// snapshot directory and each job's retention would prune the other's
// snapshots and bases.
func (p *parser) source(n *yaml.Node, path string) string {
	v, ok := p.absPath(n, path)
	if !ok {
		return ""
	}
	if v == "/" {
		p.errorf(n.Line, path, "name a subvolume below /, e.g. /data/share", "the root directory cannot be a source (its snapshots would have nowhere beside it to go)")
		return ""
	}
	if first, dup := p.seenSource[v]; dup {
		p.errorf(n.Line, path, "make it one job with all the targets", "%s is already the source of the job at line %d; two jobs on one source would prune each other's snapshots", v, first)
		return "" // said once is enough: no further checks on this source
	}
	p.seenSource[v] = n.Line
	return v
}

func (p *parser) targets(n *yaml.Node, path string) ([]Target, []int) {
	var out []Target
	var lines []int
	seen := map[Target]bool{}
	const fix = "write an absolute directory such as /backup/share, or remote:NAME for a receiver's target"
	p.sequence(n, path, fix, func(i int, n *yaml.Node, path string) {
		v, ok := p.str(n, path, fix)
		if !ok {
			return
		}
		var t Target
		switch {
		case strings.HasPrefix(v, RemotePrefix):
			t.Remote = strings.TrimPrefix(v, RemotePrefix)
			if !validName.MatchString(t.Remote) {
				p.errorf(n.Line, path, nameFix, "%q is not a valid target name", t.Remote)
				return
			}
		case filepath.IsAbs(v):
			t.Dir = filepath.Clean(v)
		default:
			p.errorf(n.Line, path, fix, "%q is neither an absolute directory nor remote:NAME", v)
			return
		}
		if seen[t] {
			p.errorf(n.Line, path, "list each target once", "%s is listed twice", t)
			return
		}
		seen[t] = true
		out = append(out, t)
		lines = append(lines, n.Line)
	})
	if deref(n).Kind == yaml.SequenceNode && len(deref(n).Content) == 0 {
		p.errorf(n.Line, path, fix, "no targets")
	}
	return out, lines
}

const scheduleFix = `write "@every 1h" or a 5-field cron expression (minute hour day-of-month month day-of-week) such as "0 * * * *"`

func (p *parser) schedule(n *yaml.Node, path string) Schedule {
	v, ok := p.str(n, path, scheduleFix)
	if !ok {
		return Schedule{}
	}
	if every, found := strings.CutPrefix(v, "@every "); found {
		// cron rounds anything below a second up to a second and takes a
		// negative interval silently; say so instead.
		d, err := time.ParseDuration(strings.TrimSpace(every))
		if err != nil || d < time.Second {
			p.errorf(n.Line, path, `write a Go duration of at least 1s after @every, such as "@every 30m"`, "%q is not an interval of at least one second", every)
			return Schedule{}
		}
	}
	s, err := cron.ParseStandard(v)
	if err != nil {
		p.errorf(n.Line, path, scheduleFix, "%q is not a schedule: %v", v, err)
		return Schedule{}
	}
	return Schedule{Spec: v, Schedule: s}
}

func (p *parser) retain(n *yaml.Node, path string) Retain {
	var r Retain
	p.mapping(n, path, map[string]handler{
		"source": func(n *yaml.Node, path string) { r.Source = p.policy(n, path) },
		"target": func(n *yaml.Node, path string) { r.Target = p.policy(n, path) },
	}, nil)
	return r
}

func (p *parser) policy(n *yaml.Node, path string) retention.Policy {
	var pol retention.Policy
	cnt := func(dst *int) handler {
		return func(n *yaml.Node, path string) {
			if v, ok := p.count(n, path); ok {
				*dst = v
			}
		}
	}
	if !p.mapping(n, path, map[string]handler{
		"latest":  cnt(&pol.Latest),
		"hourly":  cnt(&pol.Hourly),
		"daily":   cnt(&pol.Daily),
		"weekly":  cnt(&pol.Weekly),
		"monthly": cnt(&pol.Monthly),
		"yearly":  cnt(&pol.Yearly),
		"min_age": func(n *yaml.Node, path string) { pol.MinAge = p.duration(n, path) },
	}, nil) {
		return pol
	}
	if len(deref(n).Content) > 0 && pol.IsZero() && !p.errorsAt(path) {
		p.errorf(n.Line, path, "set latest: 1 or more (or remove the policy to keep every snapshot)", "this policy keeps nothing but the incremental bases")
	}
	return pol
}

// errorsAt reports whether an error was already reported below path, so
// that a policy whose only key was wrong is not also called empty.
func (p *parser) errorsAt(path string) bool {
	for _, e := range p.errs {
		if strings.HasPrefix(e.Path, path+".") {
			return true
		}
	}
	return false
}

func (p *parser) duration(n *yaml.Node, path string) time.Duration {
	const fix = "write a duration such as 36h, 90m, 7d or 2w"
	v, ok := p.str(n, path, fix)
	if !ok {
		return 0
	}
	d, err := parseDuration(v)
	if err != nil || d <= 0 {
		p.errorf(n.Line, path, fix, "%q is not a positive duration", v)
		return 0
	}
	return d
}

func (p *parser) size(n *yaml.Node, path string, lo, hi int64, fix string) int64 {
	v, ok := p.str(n, path, fix)
	if !ok {
		return 0
	}
	b, err := ParseSize(v)
	if err != nil || b < lo || b > hi {
		p.errorf(n.Line, path, fix, "%q is not a size between %s and %s", v, FormatSize(lo), FormatSize(hi))
		return 0
	}
	return b
}

func (p *parser) rate(n *yaml.Node, path string) int64 {
	const fix = "write bytes per second such as 50MB/s or 800KiB/s"
	v, ok := p.str(n, path, fix)
	if !ok {
		return 0
	}
	num, found := strings.CutSuffix(v, "/s")
	b, err := ParseSize(num)
	if !found || err != nil || b <= 0 {
		p.errorf(n.Line, path, fix, "%q is not a rate", v)
		return 0
	}
	return b
}

func (p *parser) compress(n *yaml.Node, path string) string {
	const fix = "write auto, none, s2, fastest, default or better"
	v, ok := p.str(n, path, fix)
	if !ok {
		return ""
	}
	if _, _, err := streams.ParseCompression(v); err != nil {
		p.errorf(n.Line, path, fix, "%q is not a compression level", v)
		return ""
	}
	return v
}

func (p *parser) compressedData(n *yaml.Node, path string) string {
	const fix = "write auto, always or never"
	v, ok := p.str(n, path, fix)
	if !ok {
		return ""
	}
	if _, err := sender.CompressedData(v, func() error { return nil }); err != nil {
		p.errorf(n.Line, path, fix, "%q is not a compressed-data mode", v)
		return ""
	}
	return v
}

func (p *parser) receivers(n *yaml.Node, path string) []Receiver {
	var out []Receiver
	p.sequence(n, path, "write a list of receivers, each item starting with `- target: NAME`", func(i int, n *yaml.Node, path string) {
		var r Receiver
		p.mapping(n, path, map[string]handler{
			"target": func(n *yaml.Node, path string) {
				r.Target = p.name(n, path)
				if first, dup := p.seenTarget[r.Target]; dup && r.Target != "" {
					p.errorf(n.Line, path, "give each receiver its own target name", "target %q is already served by the receiver at line %d", r.Target, first)
				}
				p.seenTarget[r.Target] = n.Line
			},
			"dir": func(n *yaml.Node, path string) {
				r.Dir, _ = p.absPath(n, path)
				if first, dup := p.seenDir[r.Dir]; dup && r.Dir != "" {
					p.errorf(n.Line, path, "give each receiver its own directory", "%s is already the directory of the receiver at line %d", r.Dir, first)
				}
				p.seenDir[r.Dir] = n.Line
			},
		}, []string{"target", "dir"})
		out = append(out, r)
	})
	return out
}
