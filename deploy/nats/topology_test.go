package natsconf_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/internal/broker"
	"github.com/snapjet/snapjet/streams"
)

const cmdTimeout = time.Minute

// hub is a running hub: where its clients and its sites connect, and how
// its clients authenticate.
type hub struct {
	proc       *proc
	clientURL  string // with the user name, if any
	leafAddr   string
	creds      broker.Credentials
	statusArgs []string // snapjet flags and environment for a client of the hub
	statusEnv  []string
}

// startSnapjetHub runs `snapjet server --domain hub --leaf-listen` with
// mutual TLS on both listeners.
func startSnapjetHub(t *testing.T, c *certs) hub {
	cert, key := c.file("hub"), c.file("hub-key")
	client, leaf := freeAddr(t), freeAddr(t)
	p := launch(t, "hub", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", client, "--domain", "hub", "--leaf-listen", leaf,
		"--server-tls-cert", cert, "--server-tls-key", key, "--server-tls-ca", c.ca.CAFile)
	waitListening(t, p, client)
	waitListening(t, p, leaf)
	clientCert, clientKey := c.ca.Issue(t, "hub-client")
	return hub{proc: p, clientURL: "tls://" + client, leafAddr: leaf,
		creds:     broker.Credentials{TLSCA: c.ca.CAFile, TLSCert: clientCert, TLSKey: clientKey},
		statusEnv: []string{"SNAPJET_SERVER=tls://" + client, "SNAPJET_TLS_CA=" + c.ca.CAFile, "SNAPJET_TLS_CERT=" + clientCert, "SNAPJET_TLS_KEY=" + clientKey}}
}

// startStockHub runs nats-server with deploy/nats/hub.conf.
func startStockHub(t *testing.T, c *certs) hub {
	client, leaf := freeAddr(t), freeAddr(t)
	password := secret("hub-password-" + filepath.Base(t.TempDir()))
	conf := c.render(t, "hub.conf", "0.0.0.0:4222", client, "0.0.0.0:7422", leaf, "/var/lib/nats/jetstream", t.TempDir(), "CHANGE-ME-clients", password)
	p := launch(t, "hub", nil, natsBin, "-c", conf)
	waitListening(t, p, client)
	waitListening(t, p, leaf)
	pwFile := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return hub{proc: p, clientURL: "tls://snapjet@" + client, leafAddr: leaf,
		creds:      broker.Credentials{TLSCA: c.ca.CAFile, Password: password},
		statusArgs: []string{"--server", "tls://snapjet@" + client, "--tls-ca", c.ca.CAFile, "--password-file", pwFile}}
}

// file is the test path of an example certificate file, by base name.
func (c *certs) file(name string) string {
	for i := 0; i < len(c.replacements); i += 2 {
		if filepath.Base(c.replacements[i]) == name+".pem" {
			return c.replacements[i+1]
		}
	}
	panic("no certificate file " + name)
}

func connectTo(t *testing.T, url, domain string, creds broker.Credentials) *broker.Broker {
	t.Helper()
	b, err := broker.Connect(broker.Options{Server: url, Name: t.Name(), JSDomain: domain, Credentials: creds, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestSiteNodes runs a hub (snapjet server, or nats-server with hub.conf)
// and site nodes as separate processes with TLS on every link: client
// certificates on the leaf links and at the site, and checks that a
// client at a site uses its site's JetStream by default and reaches the
// hub's with domain hub, while neither sees the other's streams.
func TestSiteNodes(t *testing.T) {
	binaries(t)
	for _, kind := range []string{"snapjet", "nats-server"} {
		t.Run("hub="+kind, func(t *testing.T) {
			c := newCerts(t)
			var h hub
			if kind == "snapjet" {
				h = startSnapjetHub(t, c)
			} else {
				h = startStockHub(t, c)
			}

			// Site A: snapjet server as a site node, mutual TLS on the link
			// and on its own client listener.
			siteCert, siteKey := c.file("site-a"), c.file("site-a-key")
			siteAddr := freeAddr(t)
			site := launch(t, "site-a", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", siteAddr,
				"--domain", "site-a", "--hub", "tls://"+h.leafAddr,
				"--hub-tls-ca", c.ca.CAFile, "--hub-tls-cert", siteCert, "--hub-tls-key", siteKey,
				"--server-tls-cert", siteCert, "--server-tls-key", siteKey, "--server-tls-ca", c.ca.CAFile)
			waitFor(t, "site-a's link to the hub", processStartTimeout, site, func() bool { return strings.Contains(site.out.String(), "link to hub up") })
			clientCert, clientKey := c.ca.Issue(t, "site-a-client")
			siteCreds := broker.Credentials{TLSCA: c.ca.CAFile, TLSCert: clientCert, TLSKey: clientKey}
			checkSite(t, h, "tls://"+siteAddr, "site-a", siteCreds)

			// The same through the environment, as the systemd units pass it,
			// with snapjet status (which opens the state bucket).
			env := []string{"SNAPJET_SERVER=tls://" + siteAddr, "SNAPJET_TLS_CA=" + c.ca.CAFile, "SNAPJET_TLS_CERT=" + clientCert, "SNAPJET_TLS_KEY=" + clientKey}
			if code, _ := run(t, cmdTimeout, "status at site-a", env, snapjetBin, "status"); code != 0 {
				t.Errorf("snapjet status at the site: exit %d", code)
			}
			if code, _ := run(t, cmdTimeout, "status of the hub from site-a", env, snapjetBin, "status", "--js-domain", "hub"); code != 0 {
				t.Errorf("snapjet status of the hub through the site: exit %d", code)
			}
			code, out := run(t, cmdTimeout, "status without a client certificate", nil, snapjetBin, "status", "--server", "tls://"+siteAddr, "--tls-ca", c.ca.CAFile)
			if code == 0 || !strings.Contains(out, "--tls-cert") {
				t.Errorf("a client without a certificate: exit %d, output %q; want a failure that names --tls-cert", code, out)
			}

			if kind == "nats-server" {
				// Site B: nats-server with site.conf.
				siteB := freeAddr(t)
				conf := c.render(t, "site.conf", "/etc/nats/certs/site-a.pem", c.file("site-b"), "/etc/nats/certs/site-a-key.pem", c.file("site-b-key"), "site-a", "site-b", "127.0.0.1:4222", siteB, "hub.example.net:7422", h.leafAddr, "/var/lib/nats/jetstream", t.TempDir())
				p := launch(t, "site-b", nil, natsBin, "-c", conf)
				waitListening(t, p, siteB)
				checkSite(t, h, "nats://"+siteB, "site-b", broker.Credentials{})
				for _, domain := range [][]string{nil, {"--js-domain", "hub"}} {
					if code, _ := run(t, cmdTimeout, "status at site-b", nil, snapjetBin, append([]string{"status", "--server", "nats://" + siteB}, domain...)...); code != 0 {
						t.Errorf("snapjet status %v at site-b: exit %d", domain, code)
					}
				}
			}
		})
	}
	checkOutputs(t)
}

// checkSite plays a client at a site node.
func checkSite(t *testing.T, h hub, siteURL, domain string, creds broker.Credentials) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	local := connectTo(t, siteURL, "", creds)
	info, err := local.JS.AccountInfo(ctx)
	if err != nil || info.Domain != domain {
		t.Fatalf("JetStream of a client at the site: %+v, %v; want domain %s", info, err, domain)
	}
	toHub := connectTo(t, siteURL, "hub", creds)
	atHub := connectTo(t, h.clientURL, "", h.creds)

	// Interest in the hub's domain crosses the link shortly after it is up.
	name := "FROM_" + strings.ReplaceAll(domain, "-", "_")
	waitFor(t, "the hub's JetStream from "+domain, 20*time.Second, nil, func() bool {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err = toHub.JS.CreateStream(cctx, jetstream.StreamConfig{Name: name, Subjects: []string{"from." + domain}})
		return err == nil
	})
	if _, err := toHub.JS.Publish(ctx, "from."+domain, []byte("x")); err != nil {
		t.Fatalf("publish into the hub's stream from %s: %v", domain, err)
	}
	if hs, err := atHub.JS.Stream(ctx, name); err != nil || hs.CachedInfo().State.Msgs != 1 {
		t.Errorf("the hub's client sees %s: %v; want it with the message", name, err)
	}
	kv, err := atHub.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "sitetest"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, domain, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if skv, err := toHub.JS.KeyValue(ctx, "sitetest"); err != nil {
		t.Errorf("the hub's bucket from %s: %v", domain, err)
	} else if e, err := skv.Get(ctx, domain); err != nil || string(e.Value()) != "x" {
		t.Errorf("read the hub's bucket from %s: %v", domain, err)
	}

	// The site's own JetStream is its own: the hub does not see it.
	localName := "LOCAL_" + strings.ReplaceAll(domain, "-", "_")
	if _, err := local.JS.CreateStream(ctx, jetstream.StreamConfig{Name: localName, Subjects: []string{"local." + domain}}); err != nil {
		t.Fatal(err)
	}
	if _, err := atHub.JS.Stream(ctx, localName); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the hub's client looked up the site's stream: %v, want not found", err)
	}
	if _, err := local.JS.Stream(ctx, name); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("the site's JetStream has the hub's stream %s: %v", name, err)
	}
}

// TestPasswordNeverShown uses the stock hub's password from a file and
// from the environment, refuses it in argv, and checks that no output and
// no reconnect log line shows it.
func TestPasswordNeverShown(t *testing.T) {
	binaries(t)
	c := newCerts(t)
	h := startStockHub(t, c)
	if code, _ := run(t, cmdTimeout, "status with --password-file", nil, snapjetBin, append([]string{"status"}, h.statusArgs...)...); code != 0 {
		t.Errorf("--password-file: exit %d", code)
	}
	env := []string{"SNAPJET_PASSWORD=" + h.creds.Password}
	if code, _ := run(t, cmdTimeout, "status with SNAPJET_PASSWORD", env, snapjetBin, "status", "--server", h.clientURL, "--tls-ca", c.ca.CAFile); code != 0 {
		t.Errorf("SNAPJET_PASSWORD: exit %d", code)
	}
	wrong := []string{"SNAPJET_PASSWORD=" + secret("not-the-password"), "SNAPJET_SERVER=" + h.clientURL, "SNAPJET_TLS_CA=" + c.ca.CAFile}
	if code, out := run(t, cmdTimeout, "status with a wrong password", wrong, snapjetBin, "status"); code == 0 || !strings.Contains(out, "authentication failed") {
		t.Errorf("a wrong password: exit %d; want a failure saying authentication failed", code)
	}
	// The test itself puts the password in argv here, so check the
	// outcome rather than the command line.
	inArgs := strings.Replace(h.clientURL, "snapjet@", "snapjet:"+h.creds.Password+"@", 1)
	p := runWithSecretArgs(t, snapjetBin, "status", "--server", inArgs, "--tls-ca", c.ca.CAFile)
	if p.code != 2 || !strings.Contains(p.out, "SNAPJET_PASSWORD") || strings.Contains(p.out, h.creds.Password) {
		t.Errorf("a password in --server: exit %d, output %q; want exit 2, a pointer to SNAPJET_PASSWORD, and no password", p.code, p.out)
	}

	// A client that reconnects logs where to, without the password, even
	// when the URL (from SNAPJET_SERVER) held it.
	var logs syncBuffer
	b, err := broker.Connect(broker.Options{Server: inArgs, Name: "reconnect", Credentials: broker.Credentials{TLSCA: c.ca.CAFile},
		Log: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if strings.Contains(b.URL(), h.creds.Password) {
		t.Errorf("Broker.URL shows the password: %s", b.URL())
	}
	h.proc.kill()
	restarted := launch(t, "hub again", nil, natsBin, h.proc.cmd.Args[1:]...)
	waitFor(t, "the reconnect log line", processStartTimeout, restarted, func() bool { return strings.Contains(logs.String(), "NATS reconnected") })
	if strings.Contains(logs.String(), h.creds.Password) || !strings.Contains(logs.String(), "url=tls://127.0.0.1") {
		t.Errorf("reconnect log:\n%s\nwant the URL without the password", logs.String())
	}
	checkOutputs(t)
}

// execResult is the outcome of a command run without the secret checks.
type execResult struct {
	code int
	out  string
}

// runWithSecretArgs runs a command whose argv deliberately holds a secret
// (to check that snapjet refuses it), outside the argv check of launch. It
// exits at once, before looking at the network.
func runWithSecretArgs(t *testing.T, bin string, args ...string) execResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, _ := cmd.CombinedOutput()
	return execResult{cmd.ProcessState.ExitCode(), string(out)}
}

// TestClusterFromDeployExample starts the three nodes of deploy/nats/cluster
// as nats-server processes, creates the state bucket with snapjet status
// --replicas 3 and a replication stream with three replicas, and checks
// that a client without --replicas keeps them at three.
func TestClusterFromDeployExample(t *testing.T) {
	binaries(t)
	cl := startCluster(t)
	env, creds, urls := cl.env, cl.creds, cl.urls
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := broker.Connect(broker.Options{Server: urls, Name: "cluster", Replicas: 3, Credentials: creds, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cl.waitJetStream(t, ctx, b)

	if code, _ := run(t, cmdTimeout, "status --replicas 3", env, snapjetBin, "status", "--replicas", "3"); code != 0 {
		t.Fatalf("snapjet status --replicas 3: exit %d", code)
	}
	s, err := streams.EnsureStream(ctx, b.JS, "cluster_test", 64<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Replicas; got != 3 {
		t.Errorf("replication stream has %d replicas, want 3", got)
	}

	// A receiver opens the bucket without --replicas: it must stay R3.
	plain, err := broker.Connect(broker.Options{Server: urls, Name: "receiver", Credentials: creds, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, err := coordinator.OpenStore(ctx, plain.JS); err != nil {
		t.Fatal(err)
	}
	kv, err := plain.JS.Stream(ctx, "KV_"+streams.StateBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := kv.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Errorf("state bucket: %d replicas, cluster %+v; want 3 on three nodes", info.Config.Replicas, info.Cluster)
	}
	checkOutputs(t)
}

// cluster is the hub of deploy/nats/cluster running as three nats-server
// processes, with TLS and the password of user snapjet.
type cluster struct {
	nodes [3]*proc
	leafs [3]string // each node's leafnode listener, where sites link
	certs *certs
	urls  string   // every node, comma-separated, with the user name
	env   []string // SNAPJET_SERVER, SNAPJET_TLS_CA, SNAPJET_PASSWORD for snapjet
	creds broker.Credentials
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	c := newCerts(t)
	password := secret("cluster-password-" + filepath.Base(t.TempDir()))
	var clients, routes [3]string
	for i := range 3 {
		clients[i], routes[i] = freeAddr(t), freeAddr(t)
	}
	cl := &cluster{certs: c, creds: broker.Credentials{TLSCA: c.ca.CAFile, Password: password}}
	for i := range 3 {
		cl.leafs[i] = freeAddr(t)
		repl := []string{"0.0.0.0:4222", clients[i], "0.0.0.0:6222", routes[i], "0.0.0.0:7422", cl.leafs[i],
			"/var/lib/nats/jetstream", t.TempDir(), "CHANGE-ME-clients", password}
		for j := range 3 {
			repl = append(repl, fmt.Sprintf("hub-%d.example.net:6222", j+1), routes[j])
		}
		conf := c.render(t, fmt.Sprintf("cluster/hub-%d.conf", i+1), repl...)
		cl.nodes[i] = launch(t, fmt.Sprintf("hub-%d", i+1), nil, natsBin, "-c", conf)
	}
	var urls []string
	for i := range 3 {
		waitListening(t, cl.nodes[i], clients[i])
		urls = append(urls, "tls://snapjet@"+clients[i])
	}
	cl.urls = strings.Join(urls, ",")
	cl.env = []string{"SNAPJET_SERVER=" + cl.urls, "SNAPJET_TLS_CA=" + c.ca.CAFile, "SNAPJET_PASSWORD=" + password}
	return cl
}

// waitJetStream waits until JetStream answers, which it does once the
// nodes have elected a meta leader.
func (cl *cluster) waitJetStream(t *testing.T, ctx context.Context, b *broker.Broker) {
	t.Helper()
	waitFor(t, "a JetStream meta leader", time.Minute, nil, func() bool {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := b.JS.AccountInfo(actx)
		return err == nil
	})
}
