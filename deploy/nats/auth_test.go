package natsconf_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// TestCredsAndNkey runs nats-server in operator mode (users from creds
// files) and with an nkey user, and checks that snapjet connects with
// --creds and --nkey (or SNAPJET_CREDS, SNAPJET_NKEY), and that a wrong
// credential fails with a message naming the cause and the fix, and no
// seed in any output.
func TestCredsAndNkey(t *testing.T) {
	binaries(t)
	dir := t.TempDir()
	write := func(name, text string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}

	// Operator mode: an operator signs the account, the account its user.
	op, _ := nkeys.CreateOperator()
	opPub, _ := op.PublicKey()
	opJWT, err := jwt.NewOperatorClaims(opPub).Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	acc, _ := nkeys.CreateAccount()
	accPub, _ := acc.PublicKey()
	ac := jwt.NewAccountClaims(accPub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accJWT, err := ac.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	// JetStream needs a system account in operator mode.
	sys, _ := nkeys.CreateAccount()
	sysPub, _ := sys.PublicKey()
	sysJWT, err := jwt.NewAccountClaims(sysPub).Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	userCreds := func(name string, signer nkeys.KeyPair) string {
		u, _ := nkeys.CreateUser()
		pub, _ := u.PublicKey()
		seed, _ := u.Seed()
		secret(string(seed))
		uJWT, err := jwt.NewUserClaims(pub).Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		creds, err := jwt.FormatUserConfig(uJWT, seed)
		if err != nil {
			t.Fatal(err)
		}
		return write(name, string(creds))
	}
	good := userCreds("good.creds", acc)
	stranger, _ := nkeys.CreateAccount() // an account the server does not know
	bad := userCreds("stranger.creds", stranger)

	operatorAddr, operatorLeaf := freeAddr(t), freeAddr(t)
	conf := write("operator.conf", fmt.Sprintf("listen: %s\noperator: %q\nsystem_account: %s\nresolver: MEMORY\nresolver_preload: { %s: %q, %s: %q }\njetstream { store_dir: %q, domain: hub }\nleafnodes { listen: %s }\n",
		operatorAddr, opJWT, sysPub, accPub, accJWT, sysPub, sysJWT, filepath.Join(dir, "js-operator"), operatorLeaf))
	operatorHub := launch(t, "operator-mode server", nil, natsBin, "-c", conf)
	waitListening(t, operatorHub, operatorAddr)
	waitListening(t, operatorHub, operatorLeaf)

	// An nkey user.
	user, _ := nkeys.CreateUser()
	userPub, _ := user.PublicKey()
	seed, _ := user.Seed()
	seedFile := write("user.nk", secret(string(seed)))
	wrong, _ := nkeys.CreateUser()
	wrongSeed, _ := wrong.Seed()
	wrongFile := write("wrong.nk", secret(string(wrongSeed)))
	nkeyAddr := freeAddr(t)
	conf = write("nkey.conf", fmt.Sprintf("listen: %s\nauthorization { users = [ { nkey: %s } ] }\njetstream { store_dir: %q }\n",
		nkeyAddr, userPub, filepath.Join(dir, "js-nkey")))
	waitListening(t, launch(t, "nkey server", nil, natsBin, "-c", conf), nkeyAddr)

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string // "" for success, else what the error must say
	}{
		{"--creds", nil, []string{"--server", "nats://" + operatorAddr, "--creds", good}, ""},
		{"SNAPJET_CREDS", []string{"SNAPJET_SERVER=nats://" + operatorAddr, "SNAPJET_CREDS=" + good}, nil, ""},
		{"creds of an unknown account", nil, []string{"--server", "nats://" + operatorAddr, "--creds", bad}, "--creds"},
		{"missing creds file", nil, []string{"--server", "nats://" + operatorAddr, "--creds", filepath.Join(dir, "nope.creds")}, "does not exist"},
		{"--nkey", nil, []string{"--server", "nats://" + nkeyAddr, "--nkey", seedFile}, ""},
		{"SNAPJET_NKEY", []string{"SNAPJET_SERVER=nats://" + nkeyAddr, "SNAPJET_NKEY=" + seedFile}, nil, ""},
		{"wrong nkey", nil, []string{"--server", "nats://" + nkeyAddr, "--nkey", wrongFile}, "authentication failed"},
		{"no credentials", nil, []string{"--server", "nats://" + nkeyAddr}, "authentication failed"},
	} {
		code, out := run(t, cmdTimeout, "status "+tc.name, tc.env, snapjetBin, append([]string{"status"}, tc.args...)...)
		switch {
		case tc.want == "" && code != 0:
			t.Errorf("%s: exit %d, want 0", tc.name, code)
		case tc.want != "" && (code == 0 || !strings.Contains(out, tc.want)):
			t.Errorf("%s: exit %d, output %q; want a failure naming %q", tc.name, code, out, tc.want)
		}
	}

	// A site node whose link to the hub authenticates with --hub-creds.
	siteAddr := freeAddr(t)
	site := launch(t, "site with --hub-creds", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", siteAddr,
		"--domain", "site-a", "--hub", "nats-leaf://"+operatorLeaf, "--hub-creds", good)
	waitFor(t, "the site's link to the hub", processStartTimeout, site, func() bool { return strings.Contains(site.out.String(), "link to hub up") })
	if code, _ := run(t, cmdTimeout, "status of the hub from the site", nil, snapjetBin, "status", "--server", "nats://"+siteAddr, "--js-domain", "hub"); code != 0 {
		t.Errorf("snapjet status --js-domain hub through a site linked with --hub-creds: exit %d", code)
	}
	// With the creds of an account the hub does not know, the site says why.
	refused := launch(t, "site with wrong --hub-creds", nil, snapjetBin, "server", "--store", t.TempDir(), "--listen", freeAddr(t),
		"--domain", "site-b", "--hub", "nats-leaf://"+operatorLeaf, "--hub-creds", bad)
	waitFor(t, "the refused link's error", processStartTimeout, refused, func() bool {
		return strings.Contains(refused.out.String(), "level=ERROR") && strings.Contains(refused.out.String(), "Authorization Violation")
	})
	checkOutputs(t)
}
