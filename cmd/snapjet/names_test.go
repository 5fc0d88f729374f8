package main

import (
	"regexp"
	"testing"
)

func TestTargetNameIsStableSafeAndTellsDirsApart(t *testing.T) {
	safe := regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	tests := []struct{ a, b string }{
		{"/mnt/site-a/backup", "/mnt/site-b/backup"},
		{"/srv/my backups.d", "/srv/my_backups_d"},
		{"/x/a very long directory name that goes on and on and on", "/y/short"},
	}
	for _, tc := range tests {
		na, nb := targetName(tc.a), targetName(tc.b)
		if na == nb {
			t.Errorf("%q and %q both named %q", tc.a, tc.b, na)
		}
		for _, n := range []string{na, nb} {
			if !safe.MatchString(n) || len(n) > 48 {
				t.Errorf("name %q is not a safe consumer/subject token", n)
			}
		}
		if targetName(tc.a) != na {
			t.Errorf("name of %q changed between calls", tc.a)
		}
	}
}
