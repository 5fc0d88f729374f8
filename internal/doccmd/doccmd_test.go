package doccmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestQuotedAndWords(t *testing.T) {
	f := filepath.Join(t.TempDir(), "doc.md")
	doc := "| x | `nats kv ls snapjet_state`, `nats kv watch snapjet_state 'work.<target>.>'` |\n`natsy no` and `nats req a.b ''`\n"
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	cmds, err := Quoted(f, "nats")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cmds {
		got = append(got, fmt.Sprintf("%q", Words(c)))
	}
	want := `["nats" "kv" "ls" "snapjet_state"] ["nats" "kv" "watch" "snapjet_state" "work.<target>.>"] ["nats" "req" "a.b" ""]`
	if strings.Join(got, " ") != want {
		t.Errorf("got %s\nwant %s", strings.Join(got, " "), want)
	}
	if c := Clip([]byte(strings.Repeat("x", 200) + "\n\xff")); !strings.HasSuffix(strings.Split(c, "\n")[0], "…") || !strings.Contains(c, "?") {
		t.Errorf("Clip: %q", c)
	}
}
