// Package doccmd finds the shell commands that the project's Markdown
// documents quote, so that tests can run each one: a command printed in
// the docs is a promise to operators.
package doccmd

import (
	"os"
	"regexp"
	"strings"
)

// Quoted returns the commands quoted inline (`...`) in the Markdown file
// that start with prefix followed by a space, in order.
func Quoted(file, prefix string) ([]string, error) {
	text, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range regexp.MustCompile("`("+regexp.QuoteMeta(prefix)+" [^`]+)`").FindAllStringSubmatch(string(text), -1) {
		out = append(out, m[1])
	}
	return out, nil
}

// Words splits a command line as a shell would, for the single quotes the
// docs use (no escapes, no variables).
func Words(s string) []string {
	var words []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '\'':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// Clip keeps the start of the first lines of a command's output, for a
// test log (a message payload may be binary).
func Clip(out []byte) string {
	lines := strings.SplitN(strings.ToValidUTF8(string(out), "?"), "\n", 16)
	if len(lines) == 16 {
		lines[15] = "…"
	}
	for i, l := range lines {
		if len(l) > 160 {
			lines[i] = l[:160] + "…"
		}
	}
	return strings.Join(lines, "\n")
}
