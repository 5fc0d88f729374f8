package native

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var errLZO = errors.New("corrupt lzo data")

// lzoBtrfs decodes btrfs's LZO extent layout into out: a le32 total
// length, then segments of le32 length plus LZO1X data, each expanding to
// at most one sector. A segment header never straddles a sector: when
// fewer than 4 bytes remain in a sector, the rest is padding.
func lzoBtrfs(in, out []byte, sector int) error {
	if len(in) < 4 {
		return errLZO
	}
	total := int(binary.LittleEndian.Uint32(in))
	if total > len(in) || total < 4 {
		return fmt.Errorf("%w: total length %d of %d bytes", errLZO, total, len(in))
	}
	pos, o := 4, 0
	for pos < total && o < len(out) {
		if rem := sector - pos%sector; rem < 4 {
			pos += rem
			if pos >= total {
				break
			}
		}
		if total-pos < 4 {
			return fmt.Errorf("%w: truncated segment header", errLZO)
		}
		seg := int(binary.LittleEndian.Uint32(in[pos:]))
		pos += 4
		if seg > total-pos {
			return fmt.Errorf("%w: segment of %d bytes overruns", errLZO, seg)
		}
		end := min(o+sector, len(out))
		n, err := lzo1x(in[pos:pos+seg], out[o:end])
		if err != nil {
			return err
		}
		o += n
		pos += seg
	}
	return nil
}

// lzo1x decompresses one LZO1X block into out and returns the bytes
// written. Every read and copy is bounds-checked: the input is untrusted.
func lzo1x(in, out []byte) (int, error) {
	ip, op := 0, 0
	next := func() (int, error) {
		if ip >= len(in) {
			return 0, fmt.Errorf("%w: input overrun", errLZO)
		}
		ip++
		return int(in[ip-1]), nil
	}
	literals := func(n int) error {
		if n > len(in)-ip || n > len(out)-op {
			return fmt.Errorf("%w: literal run overruns", errLZO)
		}
		op += copy(out[op:], in[ip:ip+n])
		ip += n
		return nil
	}
	match := func(dist, n int) error {
		src := op - dist
		if src < 0 || n > len(out)-op {
			return fmt.Errorf("%w: match out of range", errLZO)
		}
		for i := 0; i < n; i++ { // may overlap: copy bytewise
			out[op] = out[src+i]
			op++
		}
		return nil
	}
	// zeroRun reads the extended length that follows a zero length field.
	zeroRun := func(base int) (int, error) {
		n := 0
		for {
			b, err := next()
			if err != nil {
				return 0, err
			}
			if b != 0 {
				return n + base + b, nil
			}
			n += 255
			if n > 1<<24 {
				return 0, fmt.Errorf("%w: length run too long", errLZO)
			}
		}
	}

	// longMatch reads the length of an M3 or M4 match (the bits of t in
	// mask, extended by a zero run when they are 0) and the le16 after it.
	longMatch := func(t, mask int) (n, v int, err error) {
		n = t&mask + 2
		if n == 2 {
			if n, err = zeroRun(mask); err != nil {
				return 0, 0, err
			}
			n += 2
		}
		if len(in)-ip < 2 {
			return 0, 0, fmt.Errorf("%w: input overrun", errLZO)
		}
		v = int(binary.LittleEndian.Uint16(in[ip:]))
		ip += 2
		return n, v, nil
	}

	state := 0
	if len(in) > 0 && in[0] > 17 {
		t := int(in[0]) - 17
		ip = 1
		if err := literals(t); err != nil {
			return op, err
		}
		state = min(t, 4)
	}
	for {
		t, err := next()
		if err != nil {
			return op, err
		}
		var dist, n int
		switch {
		case t < 16 && state == 0: // literal run
			if t == 0 {
				if t, err = zeroRun(15); err != nil {
					return op, err
				}
			}
			if err := literals(t + 3); err != nil {
				return op, err
			}
			state = 4
			continue
		case t < 16: // short match after literals
			b, err := next()
			if err != nil {
				return op, err
			}
			if state == 4 {
				dist, n = 1+0x800+(t>>2)+(b<<2), 3
			} else {
				dist, n = 1+(t>>2)+(b<<2), 2
			}
		case t >= 64: // M2
			b, err := next()
			if err != nil {
				return op, err
			}
			dist, n = 1+((t>>2)&7)+(b<<3), (t>>5)+1
		case t >= 32: // M3
			var v int
			if n, v, err = longMatch(t, 31); err != nil {
				return op, err
			}
			dist = 1 + v>>2
			t = v // low two bits: trailing literals
		default: // M4, or the end marker
			var v int
			if n, v, err = longMatch(t, 7); err != nil {
				return op, err
			}
			dist = (t&8)<<11 + v>>2
			if dist == 0 {
				return op, nil // end of stream
			}
			dist += 0x4000
			t = v
		}
		if err := match(dist, n); err != nil {
			return op, err
		}
		state = t & 3
		if err := literals(state); err != nil {
			return op, err
		}
	}
}
