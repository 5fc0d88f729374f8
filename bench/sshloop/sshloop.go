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
	Host string // the address sshd listens on
	Port int
	sshd string // absolute path: sshd refuses to re-exec itself otherwise
}

// Setup generates the keys and the configuration under dir, for an sshd
// on the loopback interface.
func Setup(ctx context.Context, dir string) (*Server, error) {
	return SetupOn(ctx, dir, "127.0.0.1")
}

// SetupOn is Setup for an sshd listening on host, such as the address of
// a network namespace the caller starts it in.
func SetupOn(ctx context.Context, dir, host string) (*Server, error) {
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
	s := &Server{Dir: dir, Host: host, Port: port, sshd: sshd}
	config := strings.Join([]string{
		"Port " + strconv.Itoa(port),
		"ListenAddress " + host,
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
	args := s.Args()
	return exec.Command(args[0], args[1:]...)
}

// Args are the program and arguments of Command, for a caller that
// starts sshd through a wrapper (nsenter).
func (s *Server) Args() []string { return []string{s.sshd, "-D", "-e", "-f", s.config()} }

// WaitReady waits until sshd answers with its banner.
func (s *Server) WaitReady(ctx context.Context) error {
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
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

// Client is an ssh command that runs remote on the sshd as root.
func (s *Server) Client(remote string) *exec.Cmd {
	return s.ClientVia(net.JoinHostPort(s.Host, strconv.Itoa(s.Port)), remote)
}

// ClientVia is Client connecting to addr (host:port), a relay in front of
// the sshd.
func (s *Server) ClientVia(addr, remote string) *exec.Cmd {
	host, port, _ := net.SplitHostPort(addr)
	return exec.Command("ssh", "-F", "/dev/null",
		"-p", port,
		"-i", filepath.Join(s.Dir, "client_key"),
		"-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes",
		"-o", "LogLevel=ERROR",
		"root@"+host, remote)
}
