package config

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parser walks the YAML node tree so that every value keeps its line, and
// collects every error instead of stopping at the first.
type parser struct {
	file string
	errs []Error
	// first line of each job source, receiver target and receiver
	// directory, to name the earlier one in a duplicate's message
	seenSource, seenTarget, seenDir map[string]int
	// job line by local target directory and source base name
	seenDest map[string]int
}

type handler func(n *yaml.Node, path string)

func (p *parser) errorf(line int, path, fix, format string, args ...any) {
	p.errs = append(p.errs, Error{File: p.file, Line: line, Path: path, Msg: fmt.Sprintf(format, args...), Fix: fix})
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

func (p *parser) document(data []byte) *Config {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := 0, strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
		}
		p.errorf(line, "", "fix the YAML at this line; indent with spaces, never tabs", "YAML syntax: %s", msg)
		return nil
	}
	if len(doc.Content) == 0 {
		p.errorf(0, "", "define at least one job or receiver; see the example in README.md", "the file is empty")
		return nil
	}
	root := deref(doc.Content[0])
	cfg := &Config{Server: Server{Store: DefaultStore, Listen: DefaultListen}}
	var embedded map[string]int
	p.mapping(root, "", map[string]handler{
		"server": func(n *yaml.Node, path string) {
			embedded = p.server(n, path, &cfg.Server)
		},
		"jobs":      func(n *yaml.Node, path string) { cfg.Jobs = p.jobs(n, path) },
		"receivers": func(n *yaml.Node, path string) { cfg.Receivers = p.receivers(n, path) },
	}, nil)
	if root.Kind == yaml.MappingNode && len(cfg.Jobs) == 0 && len(cfg.Receivers) == 0 && len(p.errs) == 0 {
		p.errorf(root.Line, "", "add a jobs: list (what to replicate) or a receivers: list (what to receive)", "nothing to do: no jobs and no receivers")
	}
	if cfg.Server.URL != "" {
		for _, key := range []string{"store", "listen", "monitor_listen"} {
			p.embeddedOnly(embedded[key], "server."+key)
		}
	}
	p.receiverDirsFree(cfg)
	return cfg
}

func (p *parser) embeddedOnly(line int, path string) {
	if line > 0 {
		p.errorf(line, path, "remove it, or remove server.url to embed a server", "only the embedded server has one, and server.url names an external server")
	}
}

// receiverDirsFree refuses a receiver on a directory that a job already
// serves as a local target: two receivers on one directory exclude each
// other (the receiver lock), so one of them would never run.
func (p *parser) receiverDirsFree(cfg *Config) {
	local := map[string]string{}
	for _, j := range cfg.Jobs {
		for _, t := range j.Targets {
			if t.Dir != "" {
				local[t.Dir] = j.Name
			}
		}
	}
	for i, r := range cfg.Receivers {
		if job, ok := local[r.Dir]; ok {
			p.errorf(p.seenDir[r.Dir], fmt.Sprintf("receivers[%d].dir", i),
				"drop this receiver: the job receives into its local targets itself, or make the job's target remote:"+r.Target,
				"%s is already a local target of job %q", r.Dir, job)
		}
	}
}

// deref follows YAML aliases (*anchor) to the node they stand for.
func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// mapping checks that n is a mapping, calls the handler of each key in
// file order, and reports unknown, duplicate and missing keys.
func (p *parser) mapping(n *yaml.Node, path string, fields map[string]handler, required []string) bool {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.errorf(n.Line, orRoot(path), "write key: value pairs, one per line, indented below "+orRoot(path), "expected a mapping, found %s", describe(n))
		return false
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		kp := join(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			p.errorf(k.Line, kp, "remove one of them", "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		h, ok := fields[k.Value]
		if !ok {
			p.errorf(k.Line, kp, unknownFix(k.Value, fields), "unknown key")
			continue
		}
		h(v, kp)
	}
	for _, r := range required {
		if _, ok := seen[r]; !ok {
			p.errorf(n.Line, join(path, r), requiredFix[r], "missing")
		}
	}
	return true
}

// requiredFix says what to write for a missing key.
var requiredFix = map[string]string{
	"name":     "add name: followed by a unique job name such as home",
	"source":   "add source: followed by the absolute path of the subvolume to replicate",
	"targets":  "add targets: with a list of local directories and/or remote:NAME",
	"schedule": `add schedule: "@every 1h" or a 5-field cron expression such as "0 * * * *"`,
	"target":   "add target: followed by the name this receiver serves",
	"dir":      "add dir: followed by the absolute path of the target directory",
}

func unknownFix(key string, fields map[string]handler) string {
	known := make([]string, 0, len(fields))
	for k := range fields {
		known = append(known, k)
	}
	sort.Strings(known)
	for _, k := range known {
		if distance(key, k) <= 2 {
			return fmt.Sprintf("did you mean %s? known keys here: %s", k, strings.Join(known, ", "))
		}
	}
	return "known keys here: " + strings.Join(known, ", ")
}

// distance is the Levenshtein distance, for "did you mean" hints.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// sequence checks that n is a list and calls item for each element.
func (p *parser) sequence(n *yaml.Node, path, fix string, item func(i int, n *yaml.Node, path string)) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.errorf(n.Line, path, fix, "expected a list, found %s", describe(n))
		return
	}
	for i, c := range n.Content {
		item(i, deref(c), fmt.Sprintf("%s[%d]", path, i))
	}
}

// str returns a scalar's text; an empty or non-scalar value is an error.
func (p *parser) str(n *yaml.Node, path, fix string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" || n.Value == "" {
		p.errorf(n.Line, path, fix, "expected a value, found %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// count returns a whole number ≥ 0.
func (p *parser) count(n *yaml.Node, path string) (int, bool) {
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil || v < 0 {
		p.errorf(n.Line, path, "write a whole number such as 24, or 0 to keep none by this rule", "%s is not a count", describe(n))
		return 0, false
	}
	return v, true
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" || n.Value == "" {
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "nothing"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(path string) string {
	if path == "" {
		return "the top level"
	}
	return path
}
