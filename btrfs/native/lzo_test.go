package native

import (
	"testing"
)

// FuzzLZO: untrusted extents must never make the decoder panic or write
// past its output.
func FuzzLZO(f *testing.F) {
	// A literal run "hello" then the end marker, as one btrfs segment.
	seg := []byte{17 + 5, 'h', 'e', 'l', 'l', 'o', 0x11, 0, 0}
	ext := append([]byte{byte(8 + len(seg)), 0, 0, 0, byte(len(seg)), 0, 0, 0}, seg...)
	f.Add(ext)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = lzoBtrfs(data, make([]byte, 4096), 4096)
		if n, err := lzo1x(data, make([]byte, 8192)); n > 8192 || (err == nil && n < 0) {
			t.Fatalf("lzo1x returned %d bytes for an 8 KiB buffer", n)
		}
	})
}

func TestLZOLiteralRun(t *testing.T) {
	seg := []byte{17 + 5, 'h', 'e', 'l', 'l', 'o', 0x11, 0, 0}
	ext := append([]byte{byte(8 + len(seg)), 0, 0, 0, byte(len(seg)), 0, 0, 0}, seg...)
	out := make([]byte, 8)
	if err := lzoBtrfs(ext, out, 4096); err != nil {
		t.Fatal(err)
	}
	if string(out) != "hello\x00\x00\x00" {
		t.Fatalf("got %q", out)
	}
}
