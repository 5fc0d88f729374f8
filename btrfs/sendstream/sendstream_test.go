package sendstream

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestChecksumVector(t *testing.T) {
	// Seed 0 without inversion differs from the standard CRC-32C (0xe3069283).
	if got := Checksum([]byte("123456789")); got != 0x58e3fa20 {
		t.Fatalf("Checksum = %#x, want 0x58e3fa20", got)
	}
}

// readAll decodes a whole stream and renders one line per command.
func readAll(data []byte) ([]string, error) {
	r := NewReader(bytes.NewReader(data), 0)
	var out []string
	for {
		c, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		line := c.Type.String()
		if c.Has(AttrPath) {
			p, _ := c.String(AttrPath)
			line += " " + p
		}
		if c.Has(AttrData) {
			d, _ := c.Bytes(AttrData)
			line += " data=" + string(d)
		}
		out = append(out, line)
	}
}

func v(version uint32) *Builder { return (&Builder{Version: version}).Header() }

func TestDecode(t *testing.T) {
	uuid := Str(AttrUUID, strings.Repeat("u", 16))
	subvol := []Attribute{Str(AttrPath, "sub"), uuid, U64(AttrCTransID, 7)}
	badCRC := v(1).Command(CmdSubvol, subvol...).Command(CmdEnd).Buf
	badCRC[len(Magic)+4+cmdHeaderLen+6] ^= 1
	hugeLen := v(1).Buf
	hugeLen = append(hugeLen, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 0, 0)

	tests := []struct {
		name    string
		stream  []byte
		want    []string
		wantErr error
		errText string
	}{
		{name: "v1 minimal", stream: v(1).Command(CmdSubvol, subvol...).Command(CmdEnd).Buf,
			want: []string{"SUBVOL sub", "END"}},
		{name: "v1 data has a length", stream: v(1).Command(CmdSubvol, subvol...).
			Command(CmdWrite, Str(AttrData, "abc"), Str(AttrPath, "f"), U64(AttrFileOffset, 0)).Command(CmdEnd).Buf,
			want: []string{"SUBVOL sub", "WRITE f data=abc", "END"}},
		{name: "v2 data runs to the end", stream: v(2).Command(CmdSubvol, subvol...).
			Command(CmdWrite, Str(AttrPath, "f"), U64(AttrFileOffset, 0), Str(AttrData, "\x0f\x00\x05\x00xyz")).Command(CmdEnd).Buf,
			want: []string{"SUBVOL sub", "WRITE f data=\x0f\x00\x05\x00xyz", "END"}},
		{name: "concatenated streams", stream: append(v(1).Command(CmdSubvol, subvol...).Command(CmdEnd).Buf,
			v(2).Command(CmdSubvol, Str(AttrPath, "two"), uuid, U64(AttrCTransID, 8)).Command(CmdEnd).Buf...),
			want: []string{"SUBVOL sub", "END", "SUBVOL two", "END"}},
		{name: "empty path is the subvolume root", stream: v(1).Command(CmdSubvol, subvol...).
			Command(CmdUtimes, Str(AttrPath, ""), Timespec(AttrAtime, 1, 2), Timespec(AttrMtime, 1, 2), Timespec(AttrCtime, 1, 2)).Command(CmdEnd).Buf,
			want: []string{"SUBVOL sub", "UTIMES ", "END"}},
		{name: "empty input", stream: nil, wantErr: io.ErrUnexpectedEOF},
		{name: "cut before END", stream: v(1).Command(CmdSubvol, subvol...).Buf, wantErr: io.ErrUnexpectedEOF},
		{name: "cut inside a command", stream: v(1).Command(CmdSubvol, subvol...).Buf[:30], wantErr: io.ErrUnexpectedEOF},
		{name: "bad magic", stream: []byte("btrfs-strean\x00\x01\x00\x00\x00"), wantErr: ErrMalformed, errText: "magic"},
		{name: "version 3 refused", stream: v(3).Command(CmdEnd).Buf, wantErr: ErrUnsupported, errText: "version 3"},
		{name: "version 0", stream: v(0).Buf, wantErr: ErrMalformed},
		{name: "bad crc", stream: badCRC, wantErr: ErrMalformed, errText: "crc"},
		{name: "command too large", stream: hugeLen, wantErr: ErrTooLarge},
		{name: "unknown command", stream: v(1).Command(Cmd(99)).Buf, wantErr: ErrMalformed, errText: "unknown command"},
		{name: "verity refused", stream: v(2).Command(CmdEnableVerity, Str(AttrPath, "f")).Buf, wantErr: ErrUnsupported, errText: "ENABLE_VERITY"},
		{name: "v2 command in v1", stream: v(1).Command(CmdFileattr, Str(AttrPath, "f"), U64(AttrFileattr, 0)).Buf,
			wantErr: ErrMalformed, errText: "FILEATTR in a version 1"},
		{name: "v2 attribute in v1", stream: v(1).Command(CmdWrite, U32(AttrCompression, 0)).Buf,
			wantErr: ErrMalformed, errText: "attribute type 30"},
		{name: "wrong integer size", stream: v(1).Command(CmdTruncate, Str(AttrPath, "f"), Str(AttrSize, "1234")).Buf,
			wantErr: ErrMalformed, errText: "SIZE has 4 bytes"},
		{name: "attribute overruns", stream: func() []byte {
			b := v(1).Command(CmdUnlink, Str(AttrPath, "abc")).Buf
			b = b[:len(b)-1] // drop a byte and fix up the framing
			return fixLen(b[:len(Magic)+4], b[len(Magic)+4:])
		}(), wantErr: ErrMalformed, errText: "overruns"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readAll(tc.stream)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.wantErr, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("got %q\nwant %q", got, tc.want)
			}
		})
	}
}

// fixLen rewrites the length and CRC of the single command cmd.
func fixLen(hdr, cmd []byte) []byte {
	c := append([]byte(nil), cmd...)
	n := len(c) - cmdHeaderLen
	c[0], c[1], c[2], c[3] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
	copy(c[6:10], []byte{0, 0, 0, 0})
	s := Checksum(c)
	c[6], c[7], c[8], c[9] = byte(s), byte(s>>8), byte(s>>16), byte(s>>24)
	return append(append([]byte(nil), hdr...), c...)
}

// TestDecoderChunked feeds a stream one byte at a time, as the applier
// does with chunks that do not line up with commands.
func TestDecoderChunked(t *testing.T) {
	stream := v(2).Command(CmdSubvol, Str(AttrPath, "s"), Str(AttrUUID, strings.Repeat("x", 16)), U64(AttrCTransID, 1)).
		Command(CmdMkfile, Str(AttrPath, "o257-5-0"), U64(AttrIno, 257)).
		Command(CmdWrite, Str(AttrPath, "o257-5-0"), U64(AttrFileOffset, 0), Str(AttrData, "hello")).
		Command(CmdEnd).Buf
	var d Decoder
	var pending []byte
	var types []Cmd
	for i := range stream {
		pending = append(pending, stream[i])
		for {
			c, n, err := d.Decode(pending)
			if err != nil {
				t.Fatalf("byte %d: %v", i, err)
			}
			if n == 0 {
				break
			}
			if c != nil {
				types = append(types, c.Type)
			}
			pending = pending[n:]
		}
	}
	if len(pending) != 0 || !d.AtHeader() {
		t.Fatalf("left %d bytes, at header %v", len(pending), d.AtHeader())
	}
	want := []Cmd{CmdSubvol, CmdMkfile, CmdWrite, CmdEnd}
	if len(types) != len(want) {
		t.Fatalf("got %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("got %v, want %v", types, want)
		}
	}
}

// seeds are the fuzz seeds: built streams plus the small real streams
// TestRealStreams saves under testdata.
func seeds(t testing.TB) [][]byte {
	out := [][]byte{
		v(1).Command(CmdSubvol, Str(AttrPath, "s"), Str(AttrUUID, strings.Repeat("x", 16)), U64(AttrCTransID, 1)).Command(CmdEnd).Buf,
		v(2).Command(CmdWrite, Str(AttrPath, "f"), Str(AttrData, "zz")).Command(CmdEnd).Buf,
	}
	files, _ := filepath.Glob("testdata/*.stream")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzReader: go test ./btrfs/sendstream -run X -fuzz FuzzReader -fuzzminimizetime 2s
// (the default minimisation of a new input takes up to a minute per input).
func FuzzReader(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A small limit makes the oversize path reachable; Reader must
		// never hold much more than the input it was given.
		r := NewReader(bytes.NewReader(data), 1<<20)
		for i := 0; ; i++ {
			c, err := r.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unclassified error: %v", err)
				}
				break
			}
			if c.Len < cmdHeaderLen || r.Offset() > int64(len(data)) {
				t.Fatalf("command %d: len %d, offset %d of %d", i, c.Len, r.Offset(), len(data))
			}
			if cap(r.buf) > 2*len(data)+128<<10 {
				t.Fatalf("buffer grew to %d for %d input bytes", cap(r.buf), len(data))
			}
		}
	})
}
