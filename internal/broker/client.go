package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/nats-io/nats.go"
)

// Credentials say how a client proves who it is and whom it trusts. Every
// field names a file, except Password, which the command takes from the
// environment or a file and never from argv, where `ps` would show it.
type Credentials struct {
	Creds    string // NATS creds file (user JWT and nkey seed)
	NKey     string // nkey seed file
	TLSCA    string // PEM CA bundle that signed the server's certificate
	TLSCert  string // PEM client certificate, with TLSKey
	TLSKey   string
	User     string // with Password; a user in the server URL wins
	Password string
}

var (
	// ErrCredentialFile means a file of Credentials is missing, unreadable
	// or does not hold what it should.
	ErrCredentialFile = errors.New("credential file")
	// ErrAuth means the server refused the credentials.
	ErrAuth = errors.New("NATS authentication failed")
	// ErrTLS means the TLS handshake with the server failed.
	ErrTLS = errors.New("TLS handshake with NATS failed")
	// ErrSecretInArgs means a password was given where `ps` shows it.
	ErrSecretInArgs = errors.New("password on the command line")
)

// readFile reads a credential file for a clear error up front: the NATS
// client would read it only while connecting and say less. The contents
// are never logged or wrapped into an error.
func readFile(what, flag, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("%w: %s %s does not exist: fix the path in %s", ErrCredentialFile, what, file, flag)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("%w: %s %s is not readable by this user: fix its owner or mode (0600)", ErrCredentialFile, what, file)
	case err != nil:
		return nil, fmt.Errorf("%w: %s %s: %v", ErrCredentialFile, what, file, err)
	}
	return b, nil
}

// TLSConfig builds the TLS configuration of a client (or of a leaf node's
// link to its hub) from a CA file and a certificate and key, nil when none
// is set. flag prefixes the flag names in errors ("--tls" or "--hub-tls").
func TLSConfig(caFile, certFile, keyFile, flag string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := readFile("CA file", flag+"-ca", caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CA file %s holds no PEM certificate: pass the CA certificate (BEGIN CERTIFICATE) with %s-ca", ErrCredentialFile, caFile, flag)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%w: a client certificate needs both %s-cert and %s-key", ErrCredentialFile, flag, flag)
	}
	if certFile != "" {
		for _, f := range [][3]string{{"certificate", flag + "-cert", certFile}, {"key", flag + "-key", keyFile}} {
			if _, err := readFile(f[0], f[1], f[2]); err != nil {
				return nil, err
			}
		}
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: certificate %s with key %s: %v: pass a PEM certificate and the PEM key that belongs to it", ErrCredentialFile, certFile, keyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// natsOptions turns credentials into client options, checking every file
// first.
func (c Credentials) natsOptions() ([]nats.Option, error) {
	var opts []nats.Option
	tlsCfg, err := TLSConfig(c.TLSCA, c.TLSCert, c.TLSKey, "--tls")
	if err != nil {
		return nil, err
	}
	if tlsCfg != nil {
		opts = append(opts, nats.Secure(tlsCfg))
	}
	if c.Creds != "" && c.NKey != "" {
		return nil, fmt.Errorf("%w: both --creds and --nkey given: a creds file already holds the user's seed, pass only one", ErrCredentialFile)
	}
	if c.Creds != "" {
		b, err := readFile("creds file", "--creds", c.Creds)
		if err != nil {
			return nil, err
		}
		if !strings.Contains(string(b), "BEGIN NATS USER JWT") {
			return nil, fmt.Errorf("%w: creds file %s holds no user JWT: pass the .creds file made by nsc or the account server", ErrCredentialFile, c.Creds)
		}
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	if c.NKey != "" {
		if _, err := readFile("nkey seed file", "--nkey", c.NKey); err != nil {
			return nil, err
		}
		o, err := nats.NkeyOptionFromSeed(c.NKey)
		if err != nil {
			// The library's error says only what is wrong, not the seed.
			return nil, fmt.Errorf("%w: nkey seed file %s: %v: pass a user seed (SU...) made by `nk -gen user`", ErrCredentialFile, c.NKey, err)
		}
		opts = append(opts, o)
	}
	if c.Password != "" {
		opts = append(opts, nats.UserInfo(c.User, c.Password))
	}
	return opts, nil
}

// userinfoRE finds the user information of URLs in free text (a nats-server
// log line, an error of a library).
var userinfoRE = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@`)

// Redact replaces the user information of every URL in s, which may hold a
// password or a token, so that s can be logged.
func Redact(s string) string { return userinfoRE.ReplaceAllString(s, "${1}[redacted]@") }

// SplitUser takes the user name and password out of the server URLs (a
// comma-separated list): the URLs the client keeps, and so logs, then carry
// no secret. A user without a password is a token to NATS.
func SplitUser(servers string) (clean, user, password, token string, err error) {
	var out []string
	for _, s := range strings.Split(servers, ",") {
		s = strings.TrimSpace(s)
		u, perr := url.Parse(s)
		if perr != nil || u.Host == "" {
			return "", "", "", "", fmt.Errorf("server URL %q: want nats://HOST:PORT or tls://HOST:PORT", Redact(s))
		}
		if u.User != nil {
			if p, ok := u.User.Password(); ok {
				user, password = u.User.Username(), p
			} else {
				token = u.User.Username()
			}
			u.User = nil
		}
		out = append(out, u.String())
	}
	return strings.Join(out, ","), user, password, token, nil
}

// connectError explains a failed connect: the cause and what to do.
func connectError(url string, err error) error {
	msg := Redact(err.Error())
	cause := redacted{err}
	var (
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
	)
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked),
		strings.Contains(msg, "Authorization Violation"), strings.Contains(msg, "authorization violation"):
		return fmt.Errorf("%w at %s: %w: check the user and password (SNAPJET_PASSWORD, --password-file) or token (in SNAPJET_SERVER), the --creds or --nkey file, and that the server knows this user", ErrAuth, url, cause)
	case errors.As(err, &unknown):
		return fmt.Errorf("%w at %s: %w: the server's certificate is not signed by a CA this client trusts; pass the CA that signed it with --tls-ca", ErrTLS, url, cause)
	case errors.As(err, &host):
		return fmt.Errorf("%w at %s: %w: the server's certificate does not name this host; connect by a name or IP the certificate holds", ErrTLS, url, cause)
	// With TLS 1.3 the server checks the client's certificate after the
	// client has finished its handshake, so a refusal is just a close.
	case strings.Contains(msg, "certificate required"), strings.Contains(msg, "bad certificate"), strings.Contains(msg, "unknown certificate authority"),
		strings.Contains(msg, "closed by remote after TLS handshake"):
		return fmt.Errorf("%w at %s: %w: the server wants a client certificate signed by a CA it trusts; pass it with --tls-cert and --tls-key", ErrTLS, url, cause)
	case errors.Is(err, nats.ErrSecureConnRequired):
		return fmt.Errorf("%w at %s: %w: the server requires TLS; use a tls:// URL and --tls-ca", ErrTLS, url, cause)
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("%w at %s: %w: the server does not offer TLS; leave out the --tls options or enable TLS on the server", ErrTLS, url, cause)
	case strings.Contains(msg, "tls:"), strings.Contains(msg, "x509:"):
		return fmt.Errorf("%w at %s: %w: check --tls-ca, --tls-cert and --tls-key against the server's TLS settings", ErrTLS, url, cause)
	case errors.Is(err, nats.ErrNoServers):
		return fmt.Errorf("connect to NATS at %s: %w: is the server running and reachable? (start one with `snapjet server`, or leave out --server to embed one)", url, cause)
	}
	return fmt.Errorf("connect to NATS at %s: %w", url, cause)
}

// redacted is an error whose message has lost the user information of its
// URLs, and which still matches its cause with errors.Is.
type redacted struct{ err error }

func (r redacted) Error() string { return Redact(r.err.Error()) }
func (r redacted) Unwrap() error { return r.err }
