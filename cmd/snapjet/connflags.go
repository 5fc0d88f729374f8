package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/snapjet/snapjet/config"
	"github.com/snapjet/snapjet/internal/broker"
)

// connFlags are the client connection options every command takes. Each
// has an environment variable, which the flag overrides; the password has
// only the environment and a file, since argv is visible to every user
// through ps.
type connFlags struct {
	creds, nkey, tlsCA, tlsCert, tlsKey, passwordFile, jsDomain, inboxPrefix string
	replicas                                                                 int
	replicasSet                                                              bool
}

// connEnv maps flags to their environment variables.
var connEnv = map[string]string{
	"server":       "SNAPJET_SERVER",
	"creds":        "SNAPJET_CREDS",
	"nkey":         "SNAPJET_NKEY",
	"tls-ca":       "SNAPJET_TLS_CA",
	"tls-cert":     "SNAPJET_TLS_CERT",
	"tls-key":      "SNAPJET_TLS_KEY",
	"js-domain":    "SNAPJET_JS_DOMAIN",
	"inbox-prefix": "SNAPJET_INBOX_PREFIX",
}

func (f *connFlags) add(pf *pflag.FlagSet) {
	pf.StringVar(&f.creds, "creds", "", "NATS creds file of the user (env SNAPJET_CREDS)")
	pf.StringVar(&f.nkey, "nkey", "", "nkey seed file of the user (env SNAPJET_NKEY)")
	pf.StringVar(&f.tlsCA, "tls-ca", "", "CA certificate file (PEM) that signed the server's certificate (env SNAPJET_TLS_CA)")
	pf.StringVar(&f.tlsCert, "tls-cert", "", "client certificate file (PEM), with --tls-key (env SNAPJET_TLS_CERT)")
	pf.StringVar(&f.tlsKey, "tls-key", "", "client key file (PEM) (env SNAPJET_TLS_KEY)")
	pf.StringVar(&f.passwordFile, "password-file", "", "file holding the password of the user named in the server URL (or env SNAPJET_PASSWORD)")
	pf.StringVar(&f.jsDomain, "js-domain", "", "JetStream domain to use, e.g. hub from a site node (env SNAPJET_JS_DOMAIN; default: the server's own)")
	pf.StringVar(&f.inboxPrefix, "inbox-prefix", "", "subject prefix of this client's reply inboxes, e.g. _INBOX_site-a where a site's permissions allow only its own (env SNAPJET_INBOX_PREFIX; default _INBOX)")
	pf.IntVar(&f.replicas, "replicas", 1, "replicas of the streams and the state bucket on a clustered server (an existing one keeps its count unless this is given)")
}

// subjectPrefix matches a NATS subject without wildcards: what a JetStream
// domain and an inbox prefix must be.
var subjectPrefix = regexp.MustCompile(`^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$`)

// resolve fills the flags not given from the environment, and refuses a
// password in --server.
func (f *connFlags) resolve(cmd *cobra.Command, server *string) error {
	fl := cmd.Flags()
	vals := map[string]*string{"server": server, "creds": &f.creds, "nkey": &f.nkey, "tls-ca": &f.tlsCA, "tls-cert": &f.tlsCert, "tls-key": &f.tlsKey, "js-domain": &f.jsDomain,
		"inbox-prefix": &f.inboxPrefix}
	for flag, env := range connEnv {
		if v, ok := os.LookupEnv(env); ok && !fl.Changed(flag) {
			*vals[flag] = v
		}
	}
	if fl.Changed("server") {
		if _, _, password, _, err := broker.SplitUser(*server); err == nil && password != "" {
			return &exitError{2, fmt.Errorf("%w: --server %s: every user can read it with ps; name only the user in the URL and put the password in SNAPJET_PASSWORD or --password-file", broker.ErrSecretInArgs, broker.Redact(*server))}
		}
	}
	for flag, v := range map[string]string{"js-domain": f.jsDomain, "inbox-prefix": f.inboxPrefix} {
		if v != "" && !subjectPrefix.MatchString(v) {
			return &exitError{2, fmt.Errorf("--%s %q: write NATS subject tokens (letters, digits, -, _ and $) separated by dots, with no wildcards or spaces, e.g. hub or _INBOX_site-a", flag, v)}
		}
	}
	if f.replicas < 1 {
		return &exitError{2, fmt.Errorf("--replicas %d: want 1 or more (3 or 5 on a cluster)", f.replicas)}
	}
	f.replicasSet = fl.Changed("replicas")
	return nil
}

// credentials reads the password, if any, and returns the client options.
func (f *connFlags) credentials() (broker.Credentials, error) {
	c := broker.Credentials{Creds: f.creds, NKey: f.nkey, TLSCA: f.tlsCA, TLSCert: f.tlsCert, TLSKey: f.tlsKey, Password: os.Getenv("SNAPJET_PASSWORD")}
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return c, &exitError{2, fmt.Errorf("%w: --password-file %s: %v: fix the path or make it readable by this user", broker.ErrCredentialFile, f.passwordFile, err)}
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
	}
	return c, nil
}

// replicaCount is what the broker applies to streams and buckets: 0 (keep
// an existing one's count) unless --replicas was given.
func (f *connFlags) replicaCount() int {
	if f.replicasSet {
		return f.replicas
	}
	return 0
}

// fromConfig fills what the flags and environment left empty from the
// config file's server section.
func fromConfig(c broker.Credentials, s config.Server) (broker.Credentials, error) {
	pick := func(flag *string, file string) {
		if *flag == "" {
			*flag = file
		}
	}
	pick(&c.Creds, s.Creds)
	pick(&c.NKey, s.NKey)
	pick(&c.TLSCA, s.TLSCA)
	pick(&c.TLSCert, s.TLSCert)
	pick(&c.TLSKey, s.TLSKey)
	if c.Password == "" && s.PasswordFile != "" {
		b, err := os.ReadFile(s.PasswordFile)
		if err != nil {
			return c, &exitError{2, fmt.Errorf("%w: password_file %s: %v: fix the path or make it readable by this user", broker.ErrCredentialFile, s.PasswordFile, err)}
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
	}
	return c, nil
}
