package streams_test

import (
	"bytes"
	"errors"
	"math/rand"
	"strconv"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"

	"github.com/snapjet/snapjet/streams"
)

func newCodec(t testing.TB) *streams.Codec {
	t.Helper()
	c, err := streams.NewCodec()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// randomBytes is incompressible data, the same on every run.
func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// textBytes is word soup that compresses roughly like source code or logs.
func textBytes(n int, seed int64) []byte {
	words := strings.Fields("the btrfs send stream carries every write of a snapshot as commands " +
		"receive replays them into a subvolume chunk offset checksum attempt target replication " +
		"func return error nil context if for range struct package import")
	rng := rand.New(rand.NewSource(seed))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[rng.Intn(len(words))])
		if rng.Intn(12) == 0 {
			b.WriteString(".\n")
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

func TestChunkRoundTrip(t *testing.T) {
	codec := newCodec(t)
	tests := []struct {
		name    string
		raw     []byte
		level   streams.Level
		wantEnc string
	}{
		{name: "compressible", raw: textBytes(1<<20, 1), level: streams.LevelDefault, wantEnc: "zstd"},
		{name: "incompressible stays raw", raw: randomBytes(1<<20, 2), level: streams.LevelDefault, wantEnc: "none"},
		{name: "compression skipped by the sender", raw: textBytes(64<<10, 3), level: streams.LevelNone, wantEnc: "none"},
		{name: "empty chunk", raw: []byte{}, level: streams.LevelDefault, wantEnc: "none"},
		{name: "one byte", raw: []byte{0x42}, level: streams.LevelDefault, wantEnc: "none"},
		{name: "largest chunk", raw: textBytes(streams.MaxChunk, 4), level: streams.LevelDefault, wantEnc: "zstd"},
		{name: "fastest", raw: textBytes(1<<20, 5), level: streams.LevelFastest, wantEnc: "zstd"},
		{name: "better", raw: textBytes(1<<20, 6), level: streams.LevelBetter, wantEnc: "zstd"},
		{name: "s2", raw: textBytes(1<<20, 7), level: streams.LevelS2, wantEnc: "s2"},
		{name: "s2, incompressible stays raw", raw: randomBytes(1<<20, 8), level: streams.LevelS2, wantEnc: "none"},
		{name: "s2, largest chunk", raw: textBytes(streams.MaxChunk, 9), level: streams.LevelS2, wantEnc: "s2"},
		{name: "s2, empty chunk", raw: []byte{}, level: streams.LevelS2, wantEnc: "none"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			orig := bytes.Clone(tc.raw)
			msg := codec.EncodeChunk("src-20261124T064512Z", 3, 7, 7<<20, tc.raw, xxhash.Sum64(tc.raw), tc.level, nil)
			if got := msg.Header.Get(streams.HdrEncoding); got != tc.wantEnc {
				t.Errorf("encoding %q, want %q", got, tc.wantEnc)
			}
			if tc.wantEnc != "none" && len(msg.Data) >= len(tc.raw) {
				t.Errorf("%s payload %d bytes is not smaller than the raw %d", tc.wantEnc, len(msg.Data), len(tc.raw))
			}
			if msg.Subject != streams.Subject("src-20261124T064512Z") {
				t.Errorf("subject %q", msg.Subject)
			}
			if got, want := msg.Header.Get(nats.MsgIdHdr), streams.MsgID("src-20261124T064512Z", 3, 7); got != want {
				t.Errorf("message id %q, want %q", got, want)
			}
			// The receiver's buffer from an earlier, larger chunk is reused.
			m, err := codec.Decode(msg.Header, msg.Data, make([]byte, 0, 2<<20))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !bytes.Equal(m.Raw, orig) {
				t.Fatalf("decoded %d bytes differ from the %d encoded", len(m.Raw), len(orig))
			}
			if m.Kind != streams.KindChunk || m.Repl != "src-20261124T064512Z" || m.Attempt != 3 || m.Index != 7 || m.Offset != 7<<20 {
				t.Errorf("identity %+v", m)
			}
			if m.Sum != xxhash.Sum64(orig) {
				t.Errorf("sum %016x, want %016x", m.Sum, xxhash.Sum64(orig))
			}
		})
	}
}

func TestEndMarkerRoundTrip(t *testing.T) {
	const digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	msg := streams.EncodeEnd("r1", 2, 12, 12582912, digest)
	if got, want := msg.Header.Get(nats.MsgIdHdr), streams.MsgID("r1", 2, -1); got != want {
		t.Errorf("message id %q, want %q", got, want)
	}
	for name, decode := range map[string]func() (streams.Message, error){
		"Decode":       func() (streams.Message, error) { return newCodec(t).Decode(msg.Header, msg.Data, nil) },
		"DecodeHeader": func() (streams.Message, error) { return streams.DecodeHeader(msg.Header) },
	} {
		m, err := decode()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := streams.Message{Kind: streams.KindEnd, Repl: "r1", Attempt: 2, Chunks: 12, TotalBytes: 12582912, Digest: digest}
		if m.Kind != want.Kind || m.Repl != want.Repl || m.Attempt != want.Attempt || m.Chunks != want.Chunks ||
			m.TotalBytes != want.TotalBytes || m.Digest != want.Digest || m.Raw != nil {
			t.Errorf("%s: got %+v, want %+v", name, m, want)
		}
	}
}

// A receiver must refuse every message it cannot prove intact, and say why.
func TestDecodeRefuses(t *testing.T) {
	codec := newCodec(t)
	text, random := textBytes(256<<10, 5), randomBytes(256<<10, 6)
	zipped := func() *nats.Msg {
		return codec.EncodeChunk("r1", 1, 3, 0, text, xxhash.Sum64(text), streams.LevelDefault, nil)
	}
	s2ed := func() *nats.Msg {
		return codec.EncodeChunk("r1", 1, 3, 0, text, xxhash.Sum64(text), streams.LevelS2, nil)
	}
	plain := func() *nats.Msg {
		return codec.EncodeChunk("r1", 1, 3, 0, random, xxhash.Sum64(random), streams.LevelDefault, nil)
	}
	end := func() *nats.Msg { return streams.EncodeEnd("r1", 1, 4, 1<<20, "sha256:00") }
	set := func(name, v string) func(*nats.Msg) { return func(m *nats.Msg) { m.Header.Set(name, v) } }
	del := func(name string) func(*nats.Msg) { return func(m *nats.Msg) { m.Header.Del(name) } }
	flip := func(at func(n int) int) func(*nats.Msg) {
		return func(m *nats.Msg) {
			m.Data = bytes.Clone(m.Data)
			m.Data[at(len(m.Data))] ^= 0x01
		}
	}
	// A zstd frame that inflates beyond MaxChunk while claiming MaxChunk.
	bomb := func(m *nats.Msg) {
		enc, _ := zstd.NewWriter(nil)
		m.Data = enc.EncodeAll(make([]byte, streams.MaxChunk+1), nil)
		m.Header.Set(streams.HdrRawLen, strconv.Itoa(streams.MaxChunk))
	}
	// An S2 block that inflates beyond MaxChunk while claiming MaxChunk.
	s2bomb := func(m *nats.Msg) {
		m.Data = s2.Encode(nil, make([]byte, streams.MaxChunk+1))
		m.Header.Set(streams.HdrRawLen, strconv.Itoa(streams.MaxChunk))
	}
	tests := []struct {
		name   string
		msg    func() *nats.Msg
		tamper func(*nats.Msg)
		want   error
		says   string // the error must contain this
	}{
		{"future version", zipped, set(streams.HdrVersion, "99"), streams.ErrUnknownVersion, "upgrade snapjet"},
		{"future version of an end marker", end, set(streams.HdrVersion, "3"), streams.ErrUnknownVersion, "upgrade snapjet on the receiving side"},
		{"past version", plain, set(streams.HdrVersion, "1"), streams.ErrUnknownVersion, "upgrade snapjet on the sending side"},
		{"no version", plain, del(streams.HdrVersion), streams.ErrUnknownVersion, "upgrade snapjet"},
		{"flipped byte in compressed payload", zipped, flip(func(n int) int { return n / 2 }), streams.ErrCorrupt, "chunk 3"},
		{"flipped last byte of compressed payload", zipped, flip(func(n int) int { return n - 1 }), streams.ErrCorrupt, "chunk 3"},
		{"flipped byte in raw payload", plain, flip(func(n int) int { return n / 2 }), streams.ErrCorrupt, "checksum"},
		{"checksum header changed", plain, set(streams.HdrSum, "0123456789abcdef"), streams.ErrCorrupt, "checksum"},
		{"payload truncated", plain, func(m *nats.Msg) { m.Data = m.Data[:len(m.Data)-1] }, streams.ErrCorrupt, "header says"},
		{"raw length one more", plain, set(streams.HdrRawLen, strconv.Itoa(len(random)+1)), streams.ErrCorrupt, "header says"},
		{"raw length one less on zstd", zipped, set(streams.HdrRawLen, strconv.Itoa(len(text)-1)), streams.ErrCorrupt, "chunk 3"},
		{"raw length over MaxChunk", plain, set(streams.HdrRawLen, strconv.Itoa(streams.MaxChunk+1)), streams.ErrCorrupt, "raw length"},
		{"raw length negative", plain, set(streams.HdrRawLen, "-1"), streams.ErrCorrupt, "raw length"},
		{"raw length missing", plain, del(streams.HdrRawLen), streams.ErrCorrupt, "raw length"},
		{"raw length not a number", plain, set(streams.HdrRawLen, "1MiB"), streams.ErrCorrupt, "raw length"},
		{"decompression bomb", zipped, bomb, streams.ErrCorrupt, "chunk 3"},
		{"flipped byte in s2 payload", s2ed, flip(func(n int) int { return n / 2 }), streams.ErrCorrupt, "chunk 3"},
		{"s2 payload truncated", s2ed, func(m *nats.Msg) { m.Data = m.Data[:len(m.Data)-1] }, streams.ErrCorrupt, "chunk 3"},
		{"raw length one less on s2", s2ed, set(streams.HdrRawLen, strconv.Itoa(len(text)-1)), streams.ErrCorrupt, "header says"},
		{"s2 decompression bomb", s2ed, s2bomb, streams.ErrCorrupt, "header says"},
		{"s2 claimed for raw bytes", plain, set(streams.HdrEncoding, "s2"), streams.ErrCorrupt, "chunk 3"},
		{"zstd claimed for an s2 payload", s2ed, set(streams.HdrEncoding, "zstd"), streams.ErrCorrupt, "decompress"},
		{"s2 claimed for a zstd payload", zipped, set(streams.HdrEncoding, "s2"), streams.ErrCorrupt, "chunk 3"},
		{"unknown encoding", zipped, set(streams.HdrEncoding, "lz4"), streams.ErrCorrupt, "unknown encoding"},
		{"missing encoding", plain, del(streams.HdrEncoding), streams.ErrCorrupt, "unknown encoding"},
		{"zstd claimed for raw bytes", plain, set(streams.HdrEncoding, "zstd"), streams.ErrCorrupt, "decompress"},
		{"unknown kind", plain, set(streams.HdrKind, "chunks"), streams.ErrCorrupt, "unknown message kind"},
		{"missing kind", plain, del(streams.HdrKind), streams.ErrCorrupt, "unknown message kind"},
		{"missing attempt", plain, del(streams.HdrAttempt), streams.ErrCorrupt, streams.HdrAttempt},
		{"negative attempt", plain, set(streams.HdrAttempt, "-1"), streams.ErrCorrupt, streams.HdrAttempt},
		{"missing chunk index", plain, del(streams.HdrChunk), streams.ErrCorrupt, streams.HdrChunk},
		{"negative chunk index", plain, set(streams.HdrChunk, "-1"), streams.ErrCorrupt, streams.HdrChunk},
		{"missing offset", plain, del(streams.HdrOffset), streams.ErrCorrupt, streams.HdrOffset},
		{"negative offset", plain, set(streams.HdrOffset, "-4096"), streams.ErrCorrupt, streams.HdrOffset},
		{"offset overflows int64", plain, set(streams.HdrOffset, "9223372036854775808"), streams.ErrCorrupt, streams.HdrOffset},
		{"missing checksum", plain, del(streams.HdrSum), streams.ErrCorrupt, streams.HdrSum},
		{"checksum not hex", plain, set(streams.HdrSum, "xyz"), streams.ErrCorrupt, streams.HdrSum},
		{"end: missing chunk count", end, del(streams.HdrChunks), streams.ErrCorrupt, streams.HdrChunks},
		{"end: negative chunk count", end, set(streams.HdrChunks, "-2"), streams.ErrCorrupt, streams.HdrChunks},
		{"end: missing total bytes", end, del(streams.HdrTotalBytes), streams.ErrCorrupt, streams.HdrTotalBytes},
		{"end: negative total bytes", end, set(streams.HdrTotalBytes, "-1"), streams.ErrCorrupt, streams.HdrTotalBytes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.msg()
			tc.tamper(m)
			got, err := codec.Decode(m.Header, m.Data, nil)
			if err == nil {
				t.Fatalf("Decode accepted the message: %s of %s attempt %d, chunk %d, %d bytes", got.Kind, got.Repl, got.Attempt, got.Index, len(got.Raw))
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.says) {
				t.Errorf("error %q does not say %q", err, tc.says)
			}
		})
	}
}

// Whatever byte of a payload is altered, Decode either refuses the chunk
// or returns exactly the sender's bytes (a few bits of a zstd frame do not
// change its output).
func TestDecodeNeverAcceptsAlteredBytes(t *testing.T) {
	codec := newCodec(t)
	for _, c := range []struct {
		raw   []byte
		level streams.Level
	}{{textBytes(16<<10, 11), streams.LevelDefault}, {textBytes(16<<10, 13), streams.LevelS2}, {randomBytes(2<<10, 12), streams.LevelDefault}} {
		raw := c.raw
		msg := codec.EncodeChunk("r1", 1, 0, 0, raw, xxhash.Sum64(raw), c.level, nil)
		refused := 0
		for i := range msg.Data {
			for _, bit := range []byte{0x01, 0x80} {
				data := bytes.Clone(msg.Data)
				data[i] ^= bit
				m, err := codec.Decode(msg.Header, data, nil)
				switch {
				case errors.Is(err, streams.ErrCorrupt):
					refused++
				case err != nil:
					t.Fatalf("%s payload, byte %d: error %v is not ErrCorrupt", msg.Header.Get(streams.HdrEncoding), i, err)
				case !bytes.Equal(m.Raw, raw):
					t.Fatalf("%s payload, byte %d: altered bytes accepted", msg.Header.Get(streams.HdrEncoding), i)
				}
			}
		}
		if refused == 0 {
			t.Errorf("%s payload: no alteration refused", msg.Header.Get(streams.HdrEncoding))
		}
	}
}

// The header check alone must already refuse unknown versions and bad
// numbers, since the coordinator reads headers without payloads.
func TestDecodeHeaderRefusesBeforePayload(t *testing.T) {
	codec := newCodec(t)
	m := codec.EncodeChunk("r1", 1, 0, 0, []byte("abc"), xxhash.Sum64([]byte("abc")), streams.LevelNone, nil)
	m.Header.Set(streams.HdrVersion, "99")
	_, err := streams.DecodeHeader(m.Header)
	if !errors.Is(err, streams.ErrUnknownVersion) || !strings.Contains(err.Error(), "upgrade") {
		t.Fatalf("DecodeHeader of version 99: %v, want ErrUnknownVersion asking to upgrade", err)
	}
	m = codec.EncodeChunk("r1", 1, 5, 0, []byte("abc"), xxhash.Sum64([]byte("abc")), streams.LevelNone, nil)
	m.Header.Set(streams.HdrRawLen, "-1") // a payload matter, not the header's
	h, err := streams.DecodeHeader(m.Header)
	if err != nil || h.Index != 5 || h.Kind != streams.KindChunk {
		t.Fatalf("DecodeHeader: %+v, %v", h, err)
	}
}

// JetStream de-duplicates by message id: two different chunks must never
// share one, and the same chunk must always get the same.
func TestMsgIDUniquePerReplAttemptIndex(t *testing.T) {
	seen := map[string]string{}
	for _, repl := range []string{"r", "r1", "r-1", "r_1", "r-1-1", "src-20261124T064512Z"} {
		for attempt := 1; attempt <= 12; attempt++ {
			for index := int64(-1); index <= 120; index++ {
				id := streams.MsgID(repl, attempt, index)
				key := repl + "/" + strconv.Itoa(attempt) + "/" + strconv.FormatInt(index, 10)
				if prev, ok := seen[id]; ok {
					t.Fatalf("MsgID %q given to both %s and %s", id, prev, key)
				}
				seen[id] = key
				if again := streams.MsgID(repl, attempt, index); again != id {
					t.Fatalf("MsgID(%s) not stable: %q then %q", key, id, again)
				}
			}
		}
	}
}

func TestValidID(t *testing.T) {
	tests := []struct {
		id   string
		want bool
	}{
		{"src-20261124T064512Z", true},
		{"a", true},
		{"A_b-9", true},
		{strings.Repeat("x", 200), true},
		{"", false},
		{strings.Repeat("x", 201), false},
		{"a.b", false},  // a subject token separator
		{"a*", false},   // subject wildcard
		{"a>", false},   // subject wildcard
		{"a b", false},  // space
		{"a/b", false},  // path and KV key separator
		{"../x", false}, // path traversal in staging
		{"é", false},    // non-ASCII
		{"a\n", false},  // trailing newline must not slip past the anchor
		{"snap\x00", false},
	}
	for _, tc := range tests {
		if got := streams.ValidID(tc.id); got != tc.want {
			t.Errorf("ValidID(%q) = %v, want %v", tc.id, got, tc.want)
		}
	}
}

func benchData() map[string][]byte {
	return map[string][]byte{"random": randomBytes(1<<20, 7), "text": textBytes(1<<20, 8)}
}

func BenchmarkEncodeChunk(b *testing.B) {
	codec := newCodec(b)
	for _, name := range []string{"random", "text"} {
		raw := benchData()[name]
		b.Run(name, func(b *testing.B) {
			dst := make([]byte, 0, len(raw))
			b.SetBytes(int64(len(raw)))
			var wire int
			for b.Loop() {
				wire = len(codec.EncodeChunk("bench", 1, 0, 0, raw, xxhash.Sum64(raw), streams.LevelDefault, dst).Data)
			}
			b.ReportMetric(float64(wire)/float64(len(raw)), "wire/raw")
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	codec := newCodec(b)
	for _, name := range []string{"random", "text"} {
		raw := benchData()[name]
		b.Run(name, func(b *testing.B) {
			msg := codec.EncodeChunk("bench", 1, 0, 0, raw, xxhash.Sum64(raw), streams.LevelDefault, nil)
			dst := make([]byte, 0, len(raw))
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := codec.Decode(msg.Header, msg.Data, dst); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Arbitrary headers and payloads never panic, and whatever Decode accepts is
// what its headers promise.
func FuzzDecode(f *testing.F) {
	codec := newCodec(f)
	for _, m := range []*nats.Msg{
		codec.EncodeChunk("r1", 1, 0, 0, textBytes(4096, 9), xxhash.Sum64(textBytes(4096, 9)), streams.LevelDefault, nil),
		codec.EncodeChunk("r1", 2, 5, 1<<20, randomBytes(512, 10), xxhash.Sum64(randomBytes(512, 10)), streams.LevelDefault, nil),
		codec.EncodeChunk("r1", 1, 0, 0, nil, xxhash.Sum64(nil), streams.LevelDefault, nil),
		codec.EncodeChunk("r1", 1, 2, 8192, textBytes(4096, 14), xxhash.Sum64(textBytes(4096, 14)), streams.LevelS2, nil),
		streams.EncodeEnd("r1", 1, 3, 3000, "sha256:ab"),
	} {
		h := func(k string) string { return m.Header.Get(k) }
		f.Add(h(streams.HdrVersion), h(streams.HdrAttempt), h(streams.HdrKind), h(streams.HdrChunk), h(streams.HdrOffset),
			h(streams.HdrRawLen), h(streams.HdrEncoding), h(streams.HdrSum), h(streams.HdrChunks), h(streams.HdrTotalBytes), m.Data)
	}
	f.Fuzz(func(t *testing.T, version, attempt, kind, chunk, offset, rawLen, enc, sum, chunks, total string, data []byte) {
		h := nats.Header{}
		for k, v := range map[string]string{
			streams.HdrVersion: version, streams.HdrRepl: "r1", streams.HdrAttempt: attempt, streams.HdrKind: kind,
			streams.HdrChunk: chunk, streams.HdrOffset: offset, streams.HdrRawLen: rawLen, streams.HdrEncoding: enc,
			streams.HdrSum: sum, streams.HdrChunks: chunks, streams.HdrTotalBytes: total,
		} {
			h.Set(k, v)
		}
		m, err := codec.Decode(h, data, nil)
		if err != nil {
			if !errors.Is(err, streams.ErrCorrupt) && !errors.Is(err, streams.ErrUnknownVersion) {
				t.Fatalf("error %v is neither ErrCorrupt nor ErrUnknownVersion", err)
			}
			return
		}
		switch m.Kind {
		case streams.KindChunk:
			if n, _ := strconv.Atoi(rawLen); len(m.Raw) != n || len(m.Raw) > streams.MaxChunk {
				t.Fatalf("accepted %d bytes for raw length %q", len(m.Raw), rawLen)
			}
			if xxhash.Sum64(m.Raw) != m.Sum {
				t.Fatalf("accepted bytes whose checksum is not the header's")
			}
			if m.Index < 0 || m.Offset < 0 {
				t.Fatalf("accepted negative index %d or offset %d", m.Index, m.Offset)
			}
		case streams.KindEnd:
			if m.Chunks < 0 || m.TotalBytes < 0 {
				t.Fatalf("accepted negative end counts %+v", m)
			}
		default:
			t.Fatalf("accepted kind %q", m.Kind)
		}
	})
}
