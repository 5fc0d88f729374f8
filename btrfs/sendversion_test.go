package btrfs

import "testing"

func TestSendVersionOK(t *testing.T) {
	for _, tc := range []struct {
		content string
		ok      bool
	}{
		{"2\n", true},
		{"3\n", true},
		{"1\n", false},
		{"", false},
		{"two", false},
	} {
		if err := sendVersionOK(tc.content); (err == nil) != tc.ok {
			t.Errorf("send_stream_version %q: %v, want ok %v", tc.content, err, tc.ok)
		}
	}
}
