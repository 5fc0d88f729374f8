package main

import "testing"

// --window and --chunk-size take sizes as the config file writes them.
func TestSizeFlag(t *testing.T) {
	var n int64
	f := sizeFlag{&n}
	for in, want := range map[string]int64{"64MiB": 64 << 20, "8388608": 8 << 20, "1.5GiB": 3 << 29, "50MB": 50e6} {
		if err := f.Set(in); err != nil || n != want {
			t.Errorf("Set(%q): %d, %v; want %d", in, n, err, want)
		}
	}
	n = 32 << 20
	if f.String() != "32MiB" {
		t.Errorf("String() = %q, want 32MiB", f.String())
	}
	for _, bad := range []string{"", "0", "12parsecs", "-1MiB"} {
		if err := f.Set(bad); err == nil {
			t.Errorf("Set(%q) took it", bad)
		}
	}
}
