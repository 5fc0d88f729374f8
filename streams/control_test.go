package streams_test

import (
	"slices"
	"testing"

	"github.com/snapjet/snapjet/streams"
)

// A stream may use an optional encoding only when every one of its
// targets announced it: an older receiver, or one that did not answer,
// takes it out.
func TestCommonDecodes(t *testing.T) {
	now := streams.Inventory{Decodes: streams.Decodes()}
	old := streams.Inventory{}
	invs := map[string]streams.Inventory{"a": now, "b": now, "old": old,
		"odd": {Decodes: []string{"lz4", streams.EncS2}}}
	for _, tc := range []struct {
		name    string
		targets []string
		want    []string
	}{
		{"one target of this build", []string{"a"}, []string{streams.EncS2}},
		{"two of this build", []string{"a", "b"}, []string{streams.EncS2}},
		{"one older receiver among them", []string{"a", "old", "b"}, nil},
		{"a target without an inventory", []string{"a", "gone"}, nil},
		{"encodings this build does not know are not offered", []string{"odd"}, []string{streams.EncS2}},
		{"no targets", nil, nil},
	} {
		if got := streams.CommonDecodes(invs, tc.targets); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
