package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// A JetStream domain or inbox prefix that is no NATS subject is bad input
// (exit 2) with the fix, from the flag or from the environment.
func TestConnFlagsRefuseBadSubjects(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  string
		ok   bool
	}{
		{args: []string{"--js-domain", "hub", "--inbox-prefix", "_INBOX_site-a"}, ok: true},
		{args: []string{"--inbox-prefix", "_INBOX.site-a"}, ok: true},
		{args: []string{"--inbox-prefix", "_INBOX.*"}},
		{args: []string{"--js-domain", "my hub"}},
		{env: "_INBOX.>"},
	} {
		t.Setenv("SNAPJET_INBOX_PREFIX", tc.env)
		if tc.env == "" {
			t.Setenv("SNAPJET_INBOX_PREFIX", "")
		}
		var f connFlags
		server := ""
		cmd := &cobra.Command{}
		f.add(cmd.Flags())
		cmd.Flags().StringVar(&server, "server", "", "")
		if err := cmd.Flags().Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		err := f.resolve(cmd, &server)
		var exit *exitError
		switch {
		case tc.ok && err != nil:
			t.Errorf("%v %q: %v", tc.args, tc.env, err)
		case !tc.ok && (!errors.As(err, &exit) || exit.code != 2 || !strings.Contains(err.Error(), "no wildcards")):
			t.Errorf("%v %q: %v, want exit 2 naming the fix", tc.args, tc.env, err)
		}
	}
}
