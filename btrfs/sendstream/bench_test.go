package sendstream

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// BenchmarkReader decodes a 64 MiB v2 stream of 128 KiB writes, the shape
// of a data-heavy real stream.
func BenchmarkReader(b *testing.B) {
	data := strings.Repeat("x", 128<<10)
	bld := v(2).Command(CmdSubvol, Str(AttrPath, "s"), Str(AttrUUID, strings.Repeat("u", 16)), U64(AttrCTransID, 1))
	for off := 0; off < 64<<20; off += len(data) {
		bld.Command(CmdWrite, Str(AttrPath, "some/file"), U64(AttrFileOffset, uint64(off)), Str(AttrData, data))
	}
	stream := bld.Command(CmdEnd).Buf
	b.SetBytes(int64(len(stream)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := NewReader(bytes.NewReader(stream), 0)
		for {
			if _, err := r.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
