package streams

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
)

// Errors a receiver classifies as permanent for the message at hand: the
// same bytes will be delivered again, so retrying the message cannot help.
var (
	ErrUnknownVersion = errors.New("unknown message format version")
	ErrCorrupt        = errors.New("corrupt chunk")
)

// Kind tells a chunk from the end marker.
type Kind string

const (
	KindChunk Kind = "chunk"
	KindEnd   Kind = "end"
)

// Message is one decoded replication message.
type Message struct {
	Kind    Kind
	Repl    string
	Attempt int
	// Chunk fields.
	Index  int64
	Offset int64
	Raw    []byte // the verified, decompressed send-stream bytes
	Sum    uint64
	// End fields.
	Chunks     int64
	TotalBytes int64
	Digest     string
}

// Level is how hard EncodeChunk compresses a chunk, from the cheapest to
// the smallest. On 1 MiB chunks of text, per core, S2 gives about 0.46 of
// the raw size at 400 MB/s; zstd's levels give about 0.33, 0.30 and 0.29
// at 200, 140 and 80 MB/s (zstd -3 of the whole stream: 0.296).
type Level int

const (
	LevelNone    Level = iota // store the chunk raw
	LevelS2                   // S2: where every target reads it; auto's floor while the link has room
	LevelFastest              // zstd's fastest
	LevelDefault              // about zstd -3
	LevelBetter               // about zstd -7
)

var levelNames = [...]string{"none", "s2", "fastest", "default", "better"}

// Chunk payload encodings: the Snapjet-Enc header.
const (
	EncNone = "none"
	EncZstd = "zstd"
	// EncS2 is optional: a receiver announces it in its inventory
	// (Inventory.Decodes), and a sender uses it only when every target of
	// the record did. Receivers older than S2 read it as a corrupt chunk.
	EncS2 = "s2"
)

// Decodes lists the optional encodings this build reads, for its
// receivers' inventories. none and zstd every version reads.
func Decodes() []string { return []string{EncS2} }

func (l Level) String() string {
	if l < 0 || int(l) >= len(levelNames) {
		return "level(" + strconv.Itoa(int(l)) + ")"
	}
	return levelNames[l]
}

// CompressAuto is the compression mode in which the sender picks each
// chunk's level from what holds the transfer back, the link or the CPU.
const CompressAuto = "auto"

// ParseCompression reads a compression mode: CompressAuto (also "") or a
// level's name.
func ParseCompression(s string) (l Level, auto bool, err error) {
	if s == CompressAuto || s == "" {
		return LevelDefault, true, nil
	}
	for i, n := range levelNames {
		if s == n {
			return Level(i), false, nil
		}
	}
	return 0, false, fmt.Errorf("unknown compression %q (use auto, none, s2, fastest, default or better)", s)
}

var zstdLevels = [...]zstd.EncoderLevel{LevelFastest: zstd.SpeedFastest, LevelDefault: zstd.SpeedDefault, LevelBetter: zstd.SpeedBetterCompression}

// Codec encodes and decodes chunks. It is safe for concurrent use.
type Codec struct {
	enc [len(levelNames)]*zstd.Encoder // by Level; none at LevelNone and LevelS2
	dec *zstd.Decoder
}

// NewCodec builds a codec for every level. An encoder allocates its tables
// on first use, so a receiver, which only decodes, pays for none.
func NewCodec() (*Codec, error) {
	c := &Codec{}
	for l := LevelFastest; l <= LevelBetter; l++ {
		// Entropy-coding the literals of blocks with few matches is what
		// makes text without repeats (logs, base64) shrink as with the zstd
		// CLI. One encoder per core: the sender compresses chunks in
		// parallel, and EncodeAll waits for a free encoder.
		// A 1 MiB window: a chunk is a frame of its own, so matches never
		// reach further than the chunk (1 MiB by default); the default
		// 8 MiB window cost 8 MiB of history per encoder for nothing.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevels[l]), zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)), zstd.WithLowerEncoderMem(true),
			zstd.WithAllLitEntropyCompression(true), zstd.WithWindowSize(1<<20))
		if err != nil {
			return nil, fmt.Errorf("zstd encoder: %w", err)
		}
		c.enc[l] = enc
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(MaxChunk), zstd.WithDecoderMaxWindow(MaxChunk))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	c.dec = dec
	return c, nil
}

// MaxWire is the most bytes EncodeChunk may write into dst for raw bytes
// of size n at level: a dst of that capacity spares it an allocation.
func MaxWire(level Level, n int) int {
	if level == LevelS2 {
		return max(n, s2.MaxEncodedLen(n))
	}
	return n
}

// MsgID is the JetStream de-duplication id of chunk index of an attempt.
func MsgID(repl string, attempt int, index int64) string {
	return repl + "." + strconv.Itoa(attempt) + "." + strconv.FormatInt(index, 10)
}

// EncodeChunk builds the message for raw bytes at offset, whose xxh64 is
// sum (the sender computes it once, for the stream's digest too). The
// payload is compressed at level (S2, or zstd at one of its levels) unless
// that would not make it smaller; LevelNone skips the attempt (the
// sender's choice for data it has seen to be incompressible). dst, if
// given, is reused for the compressed payload (see MaxWire).
func (c *Codec) EncodeChunk(repl string, attempt int, index, offset int64, raw []byte, sum uint64, level Level, dst []byte) *nats.Msg {
	m := newMsg(repl, attempt, KindChunk)
	m.Header.Set(HdrChunk, strconv.FormatInt(index, 10))
	m.Header.Set(HdrOffset, strconv.FormatInt(offset, 10))
	m.Header.Set(HdrRawLen, strconv.Itoa(len(raw)))
	m.Header.Set(HdrSum, fmt.Sprintf("%016x", sum))
	m.Header.Set(nats.MsgIdHdr, MsgID(repl, attempt, index))
	m.Data = raw
	m.Header.Set(HdrEncoding, EncNone)
	var z []byte
	enc := EncZstd
	switch {
	case level == LevelS2:
		// s2.Encode writes into dst only when it has MaxWire's room.
		z, enc = s2.Encode(dst[:cap(dst)], raw), EncS2
	case level > LevelNone && int(level) < len(c.enc):
		z = c.enc[level].EncodeAll(raw, dst[:0])
	}
	if z != nil && len(z) < len(raw) {
		m.Data = z
		m.Header.Set(HdrEncoding, enc)
	}
	return m
}

// newMsg starts a message of this format version with its identity headers.
func newMsg(repl string, attempt int, kind Kind) *nats.Msg {
	m := nats.NewMsg(Subject(repl))
	m.Header.Set(HdrVersion, strconv.Itoa(Version))
	m.Header.Set(HdrRepl, repl)
	m.Header.Set(HdrAttempt, strconv.Itoa(attempt))
	m.Header.Set(HdrKind, string(kind))
	return m
}

// EncodeEnd builds the end marker of an attempt.
func EncodeEnd(repl string, attempt int, chunks, totalBytes int64, digest string) *nats.Msg {
	m := newMsg(repl, attempt, KindEnd)
	m.Header.Set(HdrChunks, strconv.FormatInt(chunks, 10))
	m.Header.Set(HdrTotalBytes, strconv.FormatInt(totalBytes, 10))
	m.Header.Set(HdrDigest, digest)
	m.Header.Set(nats.MsgIdHdr, MsgID(repl, attempt, -1))
	return m
}

// DecodeHeader reads a message's identity without touching its payload.
// It refuses an unknown format version before anything else.
func DecodeHeader(h nats.Header) (Message, error) {
	var m Message
	if v := h.Get(HdrVersion); v != strconv.Itoa(Version) {
		side := "the receiving side"
		if n, err := strconv.Atoi(v); err == nil && n < Version {
			side = "the sending side"
		}
		return m, fmt.Errorf("%w %q (this snapjet reads version %d; upgrade snapjet on %s)", ErrUnknownVersion, v, Version, side)
	}
	m.Kind = Kind(h.Get(HdrKind))
	m.Repl = h.Get(HdrRepl)
	var err error
	if m.Attempt, err = strconv.Atoi(h.Get(HdrAttempt)); err != nil || m.Attempt < 1 {
		return m, fmt.Errorf("%w: bad %s header %q", ErrCorrupt, HdrAttempt, h.Get(HdrAttempt))
	}
	num := func(name string) int64 {
		if err != nil {
			return 0
		}
		var n int64
		n, err = strconv.ParseInt(h.Get(name), 10, 64)
		if err == nil && n < 0 {
			err = fmt.Errorf("negative")
		}
		if err != nil {
			err = fmt.Errorf("%w: bad %s header: %v", ErrCorrupt, name, err)
		}
		return n
	}
	switch m.Kind {
	case KindChunk:
		m.Index, m.Offset = num(HdrChunk), num(HdrOffset)
		if err == nil {
			m.Sum, err = strconv.ParseUint(h.Get(HdrSum), 16, 64)
			if err != nil {
				err = fmt.Errorf("%w: bad %s header: %v", ErrCorrupt, HdrSum, err)
			}
		}
	case KindEnd:
		m.Chunks, m.TotalBytes = num(HdrChunks), num(HdrTotalBytes)
		m.Digest = h.Get(HdrDigest)
	default:
		return m, fmt.Errorf("%w: unknown message kind %q", ErrCorrupt, m.Kind)
	}
	return m, err
}

// Decode verifies and decodes one message. A chunk's payload is
// decompressed into dst (reused when large enough) and checked against its
// length and checksum; nothing unverified is ever returned.
func (c *Codec) Decode(h nats.Header, data []byte, dst []byte) (Message, error) {
	m, err := DecodeHeader(h)
	if err != nil || m.Kind != KindChunk {
		return m, err
	}
	rawLen, err := strconv.Atoi(h.Get(HdrRawLen))
	if err != nil || rawLen < 0 || rawLen > MaxChunk {
		return m, fmt.Errorf("%w: chunk %d: bad raw length %q", ErrCorrupt, m.Index, h.Get(HdrRawLen))
	}
	switch h.Get(HdrEncoding) {
	case EncNone:
		m.Raw = data
	case EncZstd:
		if m.Raw, err = c.dec.DecodeAll(data, dst[:0]); err != nil {
			return m, fmt.Errorf("%w: chunk %d: decompress: %v", ErrCorrupt, m.Index, err)
		}
	case EncS2:
		// The decoded size is in the payload's first bytes: check it
		// against the header before s2 allocates anything for it.
		n, err := s2.DecodedLen(data)
		if err != nil {
			return m, fmt.Errorf("%w: chunk %d: decompress: %v", ErrCorrupt, m.Index, err)
		}
		if n != rawLen {
			return m, fmt.Errorf("%w: chunk %d: s2 payload of %d bytes, header says %d", ErrCorrupt, m.Index, n, rawLen)
		}
		if m.Raw, err = s2.Decode(dst[:cap(dst)], data); err != nil {
			return m, fmt.Errorf("%w: chunk %d: decompress: %v", ErrCorrupt, m.Index, err)
		}
	default:
		return m, fmt.Errorf("%w: chunk %d: unknown encoding %q", ErrCorrupt, m.Index, h.Get(HdrEncoding))
	}
	if len(m.Raw) != rawLen {
		return m, fmt.Errorf("%w: chunk %d: %d bytes, header says %d", ErrCorrupt, m.Index, len(m.Raw), rawLen)
	}
	if sum := xxhash.Sum64(m.Raw); sum != m.Sum {
		return m, fmt.Errorf("%w: chunk %d: checksum %016x, header says %016x", ErrCorrupt, m.Index, sum, m.Sum)
	}
	return m, nil
}
