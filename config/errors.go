package config

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is what every validation failure Is: the CLI maps it to exit
// code 2 (bad input).
var ErrInvalid = errors.New("invalid config")

// Error is one problem in the config file.
type Error struct {
	File string
	Line int    // 0 when the problem is the file as a whole
	Path string // key path, e.g. jobs[0].retain.source.daily
	Msg  string
	Fix  string
}

// Error formats as FILE:LINE: key path: message (fix).
func (e Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Path != "" {
		b.WriteString(": " + e.Path)
	}
	b.WriteString(": " + e.Msg)
	if e.Fix != "" {
		b.WriteString(" (" + e.Fix + ")")
	}
	return b.String()
}

// InvalidError lists every problem found in one file, in file order.
type InvalidError struct{ Errs []Error }

func (e *InvalidError) Error() string {
	lines := make([]string, len(e.Errs))
	for i, x := range e.Errs {
		lines[i] = x.Error()
	}
	return strings.Join(lines, "\n")
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }
