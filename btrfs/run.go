package btrfs

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
)

// Binary is the btrfs-progs executable; tests may point it elsewhere.
var Binary = "btrfs"

// run executes one btrfs-progs command and returns its stdout. Its error
// is always a *CmdError carrying stderr and a classified Kind.
func run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, Binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return nil, cmdError(args, stderr.String(), err)
	}
	return stdout.Bytes(), nil
}

func cmdError(args []string, stderr string, err error) *CmdError {
	kind := classify(stderr)
	if errors.Is(err, exec.ErrNotFound) {
		kind = ErrCommandMissing
	}
	return &CmdError{Args: args, Stderr: stderr, Err: err, Kind: kind}
}
