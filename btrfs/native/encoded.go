package native

import (
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"golang.org/x/sys/unix"
)

// maxUnencoded bounds a decoded extent: btrfs compresses at most 128 KiB
// per extent, so anything far larger is hostile.
const maxUnencoded = 16 << 20

// encodedWrite applies ENCODED_WRITE: the kernel takes the compressed
// extent as it is when it can; otherwise (no support, no space for the
// compressed form, or Options.ForceDecompress) the data is decompressed
// and written plainly, as btrfs receive falls back.
func (r *Receiver) encodedWrite(c *sendstream.Command) error {
	off, e1 := c.U64(sendstream.AttrFileOffset)
	fileLen, e2 := c.U64(sendstream.AttrUnencodedFileLen)
	unLen, e3 := c.U64(sendstream.AttrUnencodedLen)
	unOff, e4 := c.U64(sendstream.AttrUnencodedOffset)
	data, e5 := c.Bytes(sendstream.AttrData)
	if err := errors.Join(e1, e2, e3, e4, e5); err != nil {
		return err
	}
	compression := c.U32(sendstream.AttrCompression)
	if enc := c.U32(sendstream.AttrEncryption); enc != 0 {
		return fmt.Errorf("encoded write: encryption %d is not supported", enc)
	}
	if unLen > maxUnencoded || unOff > unLen || fileLen > unLen-unOff {
		return fmt.Errorf("encoded write: inconsistent lengths (file %d, unencoded %d at %d)", fileLen, unLen, unOff)
	}
	p, fd, err := r.file(c)
	if err != nil {
		return err
	}
	if !r.opt.ForceDecompress {
		err = encodedWrite(fd, data, encodedIOArgs{
			Offset: int64(off), Len: fileLen, UnencodedLen: unLen, UnencodedOffset: unOff, Compression: compression,
		})
		switch {
		case err == nil:
			r.stats.DataBytes += int64(fileLen)
			return nil
		case !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) &&
			!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EPERM):
			return fmt.Errorf("encoded write to %q at %d: %w", p, off, err)
		}
	}
	plain, err := decompress(compression, data, int(unLen))
	if err != nil {
		return fmt.Errorf("encoded write to %q at %d: %w", p, off, err)
	}
	if err := pwriteAll(fd, plain[unOff:unOff+fileLen], int64(off)); err != nil {
		return fmt.Errorf("write decompressed data to %q at %d: %w", p, off, err)
	}
	r.stats.DataBytes += int64(fileLen)
	return nil
}

// decompress returns exactly size bytes: btrfs leaves the rest of an
// extent that decompresses short as zeros.
func decompress(compression uint32, data []byte, size int) ([]byte, error) {
	out := make([]byte, size)
	var err error
	switch {
	case compression == sendstream.CompressNone:
		copy(out, data)
	case compression == sendstream.CompressZlib:
		var zr io.ReadCloser
		if zr, err = zlib.NewReader(bytes.NewReader(data)); err == nil {
			_, err = io.ReadFull(zr, out)
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = nil
			}
			zr.Close()
		}
	case compression == sendstream.CompressZstd:
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxUnencoded)); err == nil {
			var n int
			n, err = io.ReadFull(zr, out)
			// btrfs pads the frame with zeros to a sector; the decoder
			// reads them as a next frame with a bad magic.
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || (n > 0 && errors.Is(err, zstd.ErrMagicMismatch)) {
				err = nil
			}
			zr.Close()
		}
	case compression >= sendstream.CompressLZO4K && compression <= sendstream.CompressLZO64K:
		err = lzoBtrfs(data, out, 4096<<(compression-sendstream.CompressLZO4K))
	default:
		return nil, fmt.Errorf("unknown compression %d", compression)
	}
	if err != nil {
		return nil, fmt.Errorf("decompress (type %d): %w", compression, err)
	}
	return out, nil
}
