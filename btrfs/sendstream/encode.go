package sendstream

import (
	"encoding/binary"
	"fmt"
)

// Builder writes send streams. Tests and tools use it to produce streams a
// kernel would not: hostile paths, odd attribute orders, other versions.
type Builder struct {
	Version uint32
	Buf     []byte
}

// Header appends a stream header for b.Version.
func (b *Builder) Header() *Builder {
	b.Buf = append(b.Buf, Magic...)
	b.Buf = binary.LittleEndian.AppendUint32(b.Buf, b.Version)
	return b
}

// Attribute is one TLV for Builder.Command. Use the constructors.
type Attribute struct {
	Type  Attr
	Value []byte
}

// Str is a string or binary attribute.
func Str(a Attr, s string) Attribute { return Attribute{a, []byte(s)} }

// U64 is a 64-bit integer attribute.
func U64(a Attr, v uint64) Attribute { return Attribute{a, binary.LittleEndian.AppendUint64(nil, v)} }

// U32 is a 32-bit integer attribute.
func U32(a Attr, v uint32) Attribute { return Attribute{a, binary.LittleEndian.AppendUint32(nil, v)} }

// Timespec is a time attribute.
func Timespec(a Attr, sec int64, nsec uint32) Attribute {
	v := binary.LittleEndian.AppendUint64(nil, uint64(sec))
	return Attribute{a, binary.LittleEndian.AppendUint32(v, nsec)}
}

// Command appends one command with a correct CRC. In version 2 and later a
// DATA attribute is written without length, so it must come last.
func (b *Builder) Command(c Cmd, attrs ...Attribute) *Builder {
	start := len(b.Buf)
	b.Buf = append(b.Buf, make([]byte, cmdHeaderLen)...)
	for _, a := range attrs {
		b.Buf = binary.LittleEndian.AppendUint16(b.Buf, uint16(a.Type))
		if a.Type != AttrData || b.Version < 2 {
			if len(a.Value) > 0xffff {
				panic(fmt.Sprintf("sendstream: attribute %s of %d bytes does not fit a TLV", a.Type, len(a.Value)))
			}
			b.Buf = binary.LittleEndian.AppendUint16(b.Buf, uint16(len(a.Value)))
		}
		b.Buf = append(b.Buf, a.Value...)
	}
	h := b.Buf[start:]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(h)-cmdHeaderLen))
	binary.LittleEndian.PutUint16(h[4:], uint16(c))
	binary.LittleEndian.PutUint32(h[6:], Checksum(h))
	return b
}
