// Package sshloop runs a private sshd on the loopback interface, with a
// host key and a client key generated for one benchmark run, on a port of
// its own. The system's ssh configuration and known_hosts stay untouched.
package sshloop

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/snapjet/snapjet/bench/wire"
)

// Server is a generated sshd configuration in a directory of its own.
type Server struct {
	Dir  string
	Port int
	sshd string // absolute path: sshd refuses to re-exec itself otherwise
}

// Setup generates the keys and the configuration under dir.
func Setup(ctx context.Context, dir string) (*Server, error) {
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		sshd = "/usr/sbin/sshd"
		if _, err := os.Stat(sshd); err != nil {
			return nil, fmt.Errorf("sshd not installed (apt-get install openssh-server): %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// sshd insists on its privilege separation directory, which only the
	// system service normally creates.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, err
	}
	for _, key := range []string{"host_key", "client_key"} {
		path := filepath.Join(dir, key)
		os.Remove(path)
		os.Remove(path + ".pub")
		out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "snapjet-bench", "-f", path).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("ssh-keygen %s: %v: %s", key, err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client_key.pub"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		return nil, err
	}
	port, err := wire.FreePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Port: port, sshd: sshd}
	config := strings.Join([]string{
		"Port " + strconv.Itoa(port),
		"ListenAddress 127.0.0.1",
		"HostKey " + filepath.Join(dir, "host_key"),
		"PidFile " + filepath.Join(dir, "sshd.pid"),
		"AuthorizedKeysFile " + filepath.Join(dir, "authorized_keys"),
		"PermitRootLogin prohibit-password",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"UsePAM no",
		"StrictModes no", // the temporary directory is not root's home
		"LogLevel ERROR",
		"",
	}, "\n")
	if err := os.WriteFile(s.config(), []byte(config), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) config() string { return filepath.Join(s.Dir, "sshd_config") }

// Command is the sshd process, in the foreground, logging to stderr.
func (s *Server) Command() *exec.Cmd {
	return exec.Command(s.sshd, "-D", "-e", "-f", s.config())
}

// WaitReady waits until sshd answers with its banner.
func (s *Server) WaitReady(ctx context.Context) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			line, rerr := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if rerr == nil && strings.HasPrefix(line, "SSH-") {
				return nil
			}
			err = fmt.Errorf("banner %q: %v", line, rerr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd on %s not ready: %w", addr, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Client is an ssh command that runs remote on the loopback sshd as root.
func (s *Server) Client(remote string) *exec.Cmd {
	return exec.Command("ssh", "-F", "/dev/null",
		"-p", strconv.Itoa(s.Port),
		"-i", filepath.Join(s.Dir, "client_key"),
		"-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
		"root@127.0.0.1", remote)
}
