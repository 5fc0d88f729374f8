package driver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	fast := Policy{First: time.Millisecond, Max: time.Millisecond}
	flaky := errors.New("connection lost")
	tests := []struct {
		name    string
		policy  Policy
		results []error // the step's errors in order; nil with done after the last
		want    string  // "" for success, else a part of the error
		steps   int
	}{
		{"done at once", fast, nil, "", 1},
		{"temporary trouble is retried until done", fast, []error{flaky, flaky}, "", 3},
		{"a permanent error ends the run at once", fast, []error{flaky, Permanent(errors.New("out of space"))}, "out of space", 2},
		{"trouble past the bound ends the run", Policy{Bound: 5 * time.Millisecond, First: 10 * time.Millisecond, Max: 10 * time.Millisecond},
			[]error{flaky, flaky, flaky, flaky}, "made no progress for 5ms: connection lost", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			err := Run(context.Background(), quiet, "send", tc.policy, func(context.Context) (bool, error) {
				n++
				if n <= len(tc.results) {
					return false, tc.results[n-1]
				}
				return true, nil
			})
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Run = %v, want %q", err, tc.want)
			}
			if n != tc.steps {
				t.Errorf("%d steps, want %d", n, tc.steps)
			}
		})
	}
}

func TestRunEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	err := Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), "receive", Policy{First: time.Hour, Max: time.Hour},
		func(context.Context) (bool, error) { cancel(); return false, errors.New("link down") })
	if !errors.Is(err, context.Canceled) && (err == nil || !strings.Contains(err.Error(), "link down")) {
		t.Fatalf("Run = %v, want it to end with the cancelled context", err)
	}
}
