package sendstream

import (
	"errors"
	"fmt"
	"io"
)

// Reader reads commands from a send stream, possibly several concatenated
// streams. Memory stays bounded by the largest command it accepts.
type Reader struct {
	r   io.Reader
	dec Decoder
	buf []byte // buf[start:end] holds bytes read but not yet decoded
	beg int
	end int
	off int64 // stream offset of buf[beg]
	eof bool
}

// NewReader returns a Reader that accepts commands of up to maxCommandLen
// payload bytes (0: DefaultMaxCommandLen).
func NewReader(r io.Reader, maxCommandLen int) *Reader {
	return &Reader{r: r, dec: Decoder{MaxCommandLen: maxCommandLen}, buf: make([]byte, 64<<10)}
}

// Offset is the stream offset just past the last item returned.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next command. It returns io.EOF when the input ends
// cleanly, i.e. after an END command; any other end is
// io.ErrUnexpectedEOF. The returned command is valid until the next call.
func (r *Reader) Next() (*Command, error) {
	for {
		cmd, n, err := r.dec.Decode(r.buf[r.beg:r.end])
		if err != nil {
			return nil, fmt.Errorf("send stream at offset %d: %w", r.off, err)
		}
		if n > 0 {
			r.beg += n
			r.off += int64(n)
			if cmd != nil {
				return cmd, nil
			}
			continue
		}
		if r.eof {
			if r.beg == r.end && r.dec.AtHeader() && r.off > 0 {
				return nil, io.EOF
			}
			return nil, fmt.Errorf("send stream at offset %d: %w", r.off, io.ErrUnexpectedEOF)
		}
		if err := r.fill(); err != nil {
			return nil, err
		}
	}
}

// fill reads more input, compacting and growing the buffer only as far as
// the bytes actually received require.
func (r *Reader) fill() error {
	if r.beg > 0 {
		r.end = copy(r.buf, r.buf[r.beg:r.end])
		r.beg = 0
	}
	if r.end == len(r.buf) {
		r.buf = append(r.buf, make([]byte, len(r.buf))...)
	}
	n, err := r.r.Read(r.buf[r.end:])
	r.end += n
	switch {
	case errors.Is(err, io.EOF):
		r.eof = true
	case err != nil:
		return fmt.Errorf("read send stream: %w", err)
	}
	return nil
}
