package sendstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// Errors callers tell apart with errors.Is. Every error the decoder returns
// wraps ErrMalformed or ErrUnsupported.
var (
	ErrMalformed   = errors.New("malformed send stream")
	ErrUnsupported = errors.New("unsupported send stream")
	ErrTooLarge    = fmt.Errorf("%w: command too large", ErrMalformed)
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the send stream CRC: CRC-32C with seed 0 and no final
// inversion (the kernel's crc32c(0, ...)), over the command header with a
// zero crc field followed by the payload.
func Checksum(b []byte) uint32 {
	return ^crc32.Update(^uint32(0), castagnoli, b)
}

// Command is one decoded command. Its attribute values alias the decoded
// bytes: they are valid until the caller reuses or changes that buffer.
type Command struct {
	Type    Cmd
	Version uint32 // protocol version of the stream it came from
	Len     int    // bytes on the wire, header included
	present uint64 // bit per Attr
	vals    [attrCount][]byte
}

// Has reports whether the command carries attribute a.
func (c *Command) Has(a Attr) bool { return a < attrCount && c.present&(1<<a) != 0 }

func (c *Command) get(a Attr) ([]byte, error) {
	if !c.Has(a) {
		return nil, fmt.Errorf("%w: %s without attribute %s", ErrMalformed, c.Type, a)
	}
	return c.vals[a], nil
}

// Bytes returns the raw value of a required attribute.
func (c *Command) Bytes(a Attr) ([]byte, error) { return c.get(a) }

// String returns a required string attribute (paths and names, not
// NUL-terminated on the wire).
func (c *Command) String(a Attr) (string, error) {
	v, err := c.get(a)
	return string(v), err
}

// U64 returns a required 64-bit integer attribute.
func (c *Command) U64(a Attr) (uint64, error) {
	v, err := c.get(a)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(v), nil
}

// U32 returns a 32-bit attribute, or 0 when absent: the only ones are
// FALLOCATE_MODE, COMPRESSION and ENCRYPTION, whose absence means 0.
func (c *Command) U32(a Attr) uint32 {
	if !c.Has(a) {
		return 0
	}
	return binary.LittleEndian.Uint32(c.vals[a])
}

// UUID returns a required UUID attribute.
func (c *Command) UUID(a Attr) ([16]byte, error) {
	var u [16]byte
	v, err := c.get(a)
	copy(u[:], v)
	return u, err
}

// Time returns a required timespec attribute.
func (c *Command) Time(a Attr) (time.Time, error) {
	v, err := c.get(a)
	if err != nil {
		return time.Time{}, err
	}
	sec := int64(binary.LittleEndian.Uint64(v))
	nsec := int64(binary.LittleEndian.Uint32(v[8:]))
	if nsec >= 1e9 {
		return time.Time{}, fmt.Errorf("%w: %s %s: nanoseconds %d out of range", ErrMalformed, c.Type, a, nsec)
	}
	return time.Unix(sec, nsec), nil
}

// Decoder decodes a byte stream item by item. The zero value expects a
// stream header first.
type Decoder struct {
	// MaxCommandLen caps a command's payload; 0 means DefaultMaxCommandLen.
	MaxCommandLen int

	version uint32 // of the current stream; 0 before its header
}

// Version is the protocol version of the stream being decoded, 0 when the
// next item must be a stream header.
func (d *Decoder) Version() uint32 { return d.version }

// SetVersion restores the decoder's position after a checkpoint: 0 means a
// stream header comes next, otherwise commands of that version.
func (d *Decoder) SetVersion(v uint32) error {
	if v > MaxVersion {
		return fmt.Errorf("%w: protocol version %d", ErrUnsupported, v)
	}
	d.version = v
	return nil
}

// AtHeader reports whether the decoder sits between streams: at the start,
// or after an END command. Only there may the input end cleanly.
func (d *Decoder) AtHeader() bool { return d.version == 0 }

// Decode decodes the item at the start of b. A stream header is consumed
// on its own: it returns n == headerLen and cmd == nil. A command returns
// the decoded command. When b holds only part of the next item it returns
// n == 0 and no error, and the caller supplies more bytes. END makes the
// decoder expect a new stream header.
func (d *Decoder) Decode(b []byte) (cmd *Command, n int, err error) {
	if d.version == 0 {
		n, err := d.decodeHeader(b)
		return nil, n, err
	}
	if len(b) < cmdHeaderLen {
		return nil, 0, nil
	}
	plen := binary.LittleEndian.Uint32(b[0:4])
	max := d.MaxCommandLen
	if max <= 0 {
		max = DefaultMaxCommandLen
	}
	if uint64(plen) > uint64(max) {
		return nil, 0, fmt.Errorf("%w: %d payload bytes, the limit is %d", ErrTooLarge, plen, max)
	}
	total := cmdHeaderLen + int(plen)
	if len(b) < total {
		return nil, 0, nil
	}
	cmd = &Command{}
	if err := d.decodeCommand(b[:total], cmd); err != nil {
		return nil, 0, err
	}
	if cmd.Type == CmdEnd {
		d.version = 0
	}
	return cmd, total, nil
}

func (d *Decoder) decodeHeader(b []byte) (int, error) {
	if len(b) < headerLen {
		// Reject a wrong magic as early as possible, so that garbage is
		// not buffered until a full header has arrived.
		m := min(len(b), len(Magic))
		if string(b[:m]) != Magic[:m] {
			return 0, fmt.Errorf("%w: bad stream magic", ErrMalformed)
		}
		return 0, nil
	}
	if string(b[:len(Magic)]) != Magic {
		return 0, fmt.Errorf("%w: bad stream magic", ErrMalformed)
	}
	v := binary.LittleEndian.Uint32(b[len(Magic):])
	switch {
	case v == 0:
		return 0, fmt.Errorf("%w: protocol version 0", ErrMalformed)
	case v > MaxVersion:
		return 0, fmt.Errorf("%w: protocol version %d (this receiver handles 1 and 2; version 3 adds fs-verity and is experimental)", ErrUnsupported, v)
	}
	d.version = v
	return headerLen, nil
}

// decodeCommand checks the CRC and splits the payload of b (header
// included) into attributes.
func (d *Decoder) decodeCommand(b []byte, cmd *Command) error {
	cmd.Type = Cmd(binary.LittleEndian.Uint16(b[4:6]))
	cmd.Version = d.version
	cmd.Len = len(b)
	want := binary.LittleEndian.Uint32(b[6:10])
	crc := crc32.Update(^uint32(0), castagnoli, b[:6])
	crc = crc32.Update(crc, castagnoli, []byte{0, 0, 0, 0})
	crc = ^crc32.Update(crc, castagnoli, b[cmdHeaderLen:])
	if crc != want {
		return fmt.Errorf("%w: %s: crc %#08x, header says %#08x", ErrMalformed, cmd.Type, crc, want)
	}
	switch {
	case cmd.Type == CmdUnspec || cmd.Type > CmdEnableVerity:
		return fmt.Errorf("%w: unknown command %d", ErrMalformed, uint16(cmd.Type))
	case cmd.Type.minVersion() == 3:
		return fmt.Errorf("%w: %s needs protocol version 3", ErrUnsupported, cmd.Type)
	case cmd.Type.minVersion() > d.version:
		return fmt.Errorf("%w: %s in a version %d stream", ErrMalformed, cmd.Type, d.version)
	}
	maxAttr := maxAttrV1
	if d.version >= 2 {
		maxAttr = maxAttrV2
	}
	p := b[cmdHeaderLen:]
	for len(p) > 0 {
		if len(p) < 2 {
			return fmt.Errorf("%w: %s: truncated attribute header", ErrMalformed, cmd.Type)
		}
		a := Attr(binary.LittleEndian.Uint16(p))
		if a == AttrUnspec || a > maxAttr {
			return fmt.Errorf("%w: %s: attribute type %d invalid in version %d", ErrMalformed, cmd.Type, uint16(a), d.version)
		}
		var v []byte
		if a == AttrData && d.version >= 2 {
			// Since v2 DATA has no length: it runs to the end of the command.
			v, p = p[2:], nil
		} else {
			if len(p) < tlvHeaderLen {
				return fmt.Errorf("%w: %s: truncated attribute header", ErrMalformed, cmd.Type)
			}
			l := int(binary.LittleEndian.Uint16(p[2:]))
			if len(p)-tlvHeaderLen < l {
				return fmt.Errorf("%w: %s: attribute %s overruns the command", ErrMalformed, cmd.Type, a)
			}
			v, p = p[tlvHeaderLen:tlvHeaderLen+l], p[tlvHeaderLen+l:]
		}
		if fl := a.fixedLen(); fl != 0 && len(v) != fl {
			return fmt.Errorf("%w: %s: attribute %s has %d bytes, want %d", ErrMalformed, cmd.Type, a, len(v), fl)
		}
		cmd.present |= 1 << a
		cmd.vals[a] = v
	}
	return nil
}
