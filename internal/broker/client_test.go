package broker

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/snapjet/snapjet/internal/testpki"
)

func TestRedactRemovesUserInformation(t *testing.T) {
	for in, want := range map[string]string{
		"NATS reconnected url=nats://snapjet:s3cret@hub:4222":  "NATS reconnected url=nats://[redacted]@hub:4222",
		"tls://TOKEN@a:1,nats-leaf://u:p@b:7422":               "tls://[redacted]@a:1,nats-leaf://[redacted]@b:7422",
		"connect to nats://hub:4222: no servers available":     "connect to nats://hub:4222: no servers available",
		"mail user@example.net about nats://x:y@h:1/path?q=@2": "mail user@example.net about nats://[redacted]@h:1/path?q=@2",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
	clean, user, password, token, err := SplitUser("nats://snapjet:s3cret@a:4222, nats://b:4222")
	if err != nil || clean != "nats://a:4222,nats://b:4222" || user != "snapjet" || password != "s3cret" || token != "" {
		t.Errorf("SplitUser = %q %q %q %q %v", clean, user, password, token, err)
	}
}

// serve runs an in-process server with opts on a free port.
func serve(t *testing.T, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoSigs, opts.NoLog = "127.0.0.1", server.RANDOM_PORT, true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server did not start")
	}
	return s
}

func connectWith(url string, c Credentials, log *slog.Logger) (*Broker, error) {
	return Connect(Options{Server: url, Name: "test", Credentials: c, Log: log})
}

// Every way of proving who the client is works, and every wrong or missing
// credential fails with a sentinel and a message that names the fix, and
// without the secret.
func TestCredentialsAndTheirErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.New(t, dir, "test")
	srvCert, srvKey := ca.Issue(t, "server")
	cliCert, cliKey := ca.Issue(t, "client")
	other := testpki.New(t, dir, "other")
	otherCert, otherKey := other.Issue(t, "stranger")

	user, _ := nkeys.CreateUser()
	seed, _ := user.Seed()
	pub, _ := user.PublicKey()
	seedFile := filepath.Join(dir, "user.nk")
	os.WriteFile(seedFile, seed, 0o600)
	wrong, _ := nkeys.CreateUser()
	wrongSeed, _ := wrong.Seed()
	wrongFile := filepath.Join(dir, "wrong.nk")
	os.WriteFile(wrongFile, wrongSeed, 0o600)

	tlsCfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: srvCert, KeyFile: srvKey, CaFile: ca.CAFile, Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	tlsSrv := serve(t, &server.Options{TLS: true, TLSVerify: true, TLSConfig: tlsCfg, TLSTimeout: 5})
	nkeySrv := serve(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	const password = "pa55-word-never-shown"
	pwSrv := serve(t, &server.Options{Users: []*server.User{{Username: "snapjet", Password: password}}})
	tlsURL := strings.Replace(tlsSrv.ClientURL(), "nats://", "tls://", 1)
	const token = "t0ken-never-shown"
	tokenSrv := serve(t, &server.Options{Authorization: token})
	withToken := func(tok string) string { return strings.Replace(tokenSrv.ClientURL(), "//", "//"+tok+"@", 1) }

	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for _, ok := range []struct {
		name, url string
		c         Credentials
	}{
		{"client certificate", tlsURL, Credentials{TLSCA: ca.CAFile, TLSCert: cliCert, TLSKey: cliKey}},
		{"nkey", nkeySrv.ClientURL(), Credentials{NKey: seedFile}},
		{"password from elsewhere", strings.Replace(pwSrv.ClientURL(), "//", "//snapjet@", 1), Credentials{Password: password}},
		{"token in the URL (from SNAPJET_SERVER)", withToken(token), Credentials{}},
	} {
		b, err := connectWith(ok.url, ok.c, log)
		if err != nil {
			t.Errorf("%s: %v", ok.name, err)
			continue
		}
		if strings.Contains(b.URL(), token) {
			t.Errorf("%s: Broker.URL shows the token: %s", ok.name, b.URL())
		}
		b.Close()
	}

	for _, bad := range []struct {
		name, url string
		c         Credentials
		want      error
		hint      string
	}{
		{"missing CA file", tlsURL, Credentials{TLSCA: filepath.Join(dir, "nope.pem")}, ErrCredentialFile, "does not exist"},
		{"CA file without a certificate", tlsURL, Credentials{TLSCA: seedFile}, ErrCredentialFile, "no PEM certificate"},
		{"certificate without key", tlsURL, Credentials{TLSCA: ca.CAFile, TLSCert: cliCert}, ErrCredentialFile, "--tls-key"},
		{"key of another certificate", tlsURL, Credentials{TLSCA: ca.CAFile, TLSCert: cliCert, TLSKey: otherKey}, ErrCredentialFile, "belongs to it"},
		{"no client certificate", tlsURL, Credentials{TLSCA: ca.CAFile}, ErrTLS, "--tls-cert"},
		{"client certificate of another CA", tlsURL, Credentials{TLSCA: ca.CAFile, TLSCert: otherCert, TLSKey: otherKey}, ErrTLS, "--tls-cert"},
		{"server of an unknown CA", tlsURL, Credentials{TLSCA: other.CAFile, TLSCert: cliCert, TLSKey: cliKey}, ErrTLS, "--tls-ca"},
		{"wrong nkey", nkeySrv.ClientURL(), Credentials{NKey: wrongFile}, ErrAuth, "--nkey"},
		{"seed file that is not a seed", nkeySrv.ClientURL(), Credentials{NKey: ca.CAFile}, ErrCredentialFile, "nk -gen user"},
		{"creds file that is not one", nkeySrv.ClientURL(), Credentials{Creds: seedFile}, ErrCredentialFile, "nsc"},
		{"wrong password", strings.Replace(pwSrv.ClientURL(), "//", "//snapjet@", 1), Credentials{Password: "not-" + password}, ErrAuth, "SNAPJET_PASSWORD"},
		{"password without user", pwSrv.ClientURL(), Credentials{Password: password}, ErrCredentialFile, "nats://USER@"},
		{"wrong token", withToken("not-" + token), Credentials{}, ErrAuth, "check"},
	} {
		_, err := connectWith(bad.url, bad.c, log)
		if !errors.Is(err, bad.want) || !strings.Contains(err.Error(), bad.hint) {
			t.Errorf("%s: %v; want %v naming %q", bad.name, err, bad.want, bad.hint)
			continue
		}
		for _, secret := range []string{password, token, string(seed), string(wrongSeed)} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the error shows a secret: %v", bad.name, err)
			}
		}
		t.Logf("%s: %v", bad.name, err)
	}
	for _, secret := range []string{password, token, string(seed), string(wrongSeed)} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a log line shows a secret:\n%s", logs.String())
		}
	}
}

// syncBuffer is a log destination shared with the client's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
