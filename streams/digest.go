package streams

import (
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
)

// DigestPrefix names the digest scheme in a Digest's string form, so a
// record written by a snapjet that hashed differently is told apart from a
// corrupt stream.
const DigestPrefix = "chunksums-sha256:"

// Digest is the end-to-end digest of a send stream: SHA-256 over each
// chunk's index, length and xxh64 checksum, in stream order. Sender and
// receiver already compute the xxh64 of every chunk (the receiver verifies
// each chunk's bytes against it), so this proves the receiver applied the
// same chunks in the same order as the sender read them, for 24 bytes of
// hashing per chunk instead of a second pass of SHA-256 over every byte on
// each side (10-18 % of their CPU in the profiles).
type Digest struct{ h hash.Hash }

// NewDigest starts the digest of an empty stream.
func NewDigest() *Digest { return &Digest{h: sha256.New()} }

// Add appends chunk index of rawLen bytes whose xxh64 is sum.
func (d *Digest) Add(index int64, rawLen int, sum uint64) {
	var rec [24]byte
	binary.BigEndian.PutUint64(rec[0:], uint64(index))
	binary.BigEndian.PutUint64(rec[8:], uint64(rawLen))
	binary.BigEndian.PutUint64(rec[16:], sum)
	d.h.Write(rec[:])
}

// String is the digest of the chunks added so far, with its scheme.
func (d *Digest) String() string { return DigestPrefix + hex.EncodeToString(d.h.Sum(nil)) }

// MarshalBinary saves the running state, for a receiver's checkpoint.
func (d *Digest) MarshalBinary() ([]byte, error) {
	return d.h.(encoding.BinaryMarshaler).MarshalBinary()
}

// UnmarshalDigest restores a running state saved by MarshalBinary.
func UnmarshalDigest(state []byte) (*Digest, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, fmt.Errorf("restore the stream digest: %w", err)
	}
	return &Digest{h: h}, nil
}
