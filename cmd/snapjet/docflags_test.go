package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// Every snapjet command line the docs show names a command that exists and
// only flags that command takes: the docs are what operators type.
func TestDocumentedCommandsAndFlagsExist(t *testing.T) {
	root := newRoot(&globals{})
	units, err := filepath.Glob("../../deploy/systemd/*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("systemd units: %v %v", units, err)
	}
	checked := 0
	for _, file := range append([]string{"../../README.md", "../../deploy/README.md", "../../docs/ARCHITECTURE.md"}, units...) {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		lines := documentedCommands(string(text))
		if strings.HasSuffix(file, ".service") {
			lines = unitCommands(string(text))
		}
		for _, line := range lines {
			checked++
			if err := checkCommandLine(root, line); err != nil {
				t.Errorf("%s: `%s`: %v", file, line, err)
			}
		}
	}
	t.Logf("figures: %d snapjet command lines checked", checked)
	if checked < 30 {
		t.Errorf("found %d snapjet command lines in the docs, want the many they show", checked)
	}
}

// The check refuses what it should: an unknown command or flag.
func TestCheckCommandLine(t *testing.T) {
	root := newRoot(&globals{})
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{"status --config /etc/snapjet/snapjet.yaml [--json]", true},
		{"status --target nas-a --server nats://x:4222 --js-domain hub", true},
		{"send --to a,b --compress=fastest /data", true},
		{"config check FILE", true},
		{"status --no-such-flag", false},
		{"statuss --json", false},
		{"receive --to a /backup", false},
	} {
		if err := checkCommandLine(root, tc.line); (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.line, err, tc.ok)
		}
	}
}

// unitCommands returns the snapjet command lines of a systemd unit's
// Exec lines, continued lines joined.
func unitCommands(text string) []string {
	var out []string
	for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
		if strings.HasPrefix(line, "Exec") {
			if c := commandIn(line); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}

// documentedCommands returns the snapjet command lines in a Markdown text:
// those in fenced code blocks (continued lines joined) and those quoted
// inline, each from the word snapjet to the end of the command (a
// comment, a pipe, an &&).
func documentedCommands(text string) []string {
	var out []string
	fenced := false
	inline := regexp.MustCompile("`([^`]*)`")
	for _, line := range strings.Split(strings.ReplaceAll(text, "\\\n", " "), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		parts := []string{line}
		if !fenced {
			parts = nil
			for _, m := range inline.FindAllStringSubmatch(line, -1) {
				parts = append(parts, m[1])
			}
		}
		for _, p := range parts {
			if c := commandIn(p); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}

var snapjetCommand = regexp.MustCompile(`(?:^|[\s;(/=])snapjet ([a-z].*)$`)

// commandIn is the snapjet command in a shell line, without what follows
// it; "" when there is none.
func commandIn(line string) string {
	m := snapjetCommand.FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	c := m[1]
	for _, end := range []string{" #", " |", " &&", ";", ")"} {
		if i := strings.Index(c, end); i >= 0 {
			c = c[:i]
		}
	}
	return strings.TrimSpace(c)
}

// checkCommandLine resolves the command and looks up each --flag of line
// (written --flag, --flag=value or [--flag ...]) on it.
func checkCommandLine(root *cobra.Command, line string) error {
	words := strings.Fields(strings.NewReplacer("[", " ", "]", " ", "|", " ").Replace(line))
	cmd, rest, err := root.Find(words)
	if err != nil {
		return err
	}
	if cmd == root {
		return errUnknownCommand(words[0])
	}
	for _, w := range rest {
		name, ok := strings.CutPrefix(w, "--")
		if !ok || name == "" {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if cmd.Flags().Lookup(name) == nil && cmd.InheritedFlags().Lookup(name) == nil {
			return errUnknownFlag{cmd.CommandPath(), name}
		}
	}
	return nil
}

type errUnknownCommand string

func (e errUnknownCommand) Error() string { return "no snapjet command " + string(e) }

type errUnknownFlag struct{ cmd, flag string }

func (e errUnknownFlag) Error() string { return e.cmd + " has no flag --" + e.flag }
