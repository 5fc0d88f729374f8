package btrfs

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DataSize is how many bytes of file data a send of a subvolume carries,
// read from its file extent items: what a progress bar needs, where the
// files' sizes count holes, data that travels compressed, and for an
// incremental send everything that did not change.
type DataSize struct {
	// Plain is the data decompressed: every extent's referenced bytes,
	// holes and preallocated ranges left out (send protocol 1).
	Plain int64
	// Encoded counts a compressed extent that a file references whole at
	// its size on disk, as send --compressed-data carries it; the rest as
	// Plain does.
	Encoded int64
}

// Send's view of the extent items (<linux/btrfs_tree.h>).
const (
	iocTreeSearch = 0xd0009411 // _IOWR(0x94, 17, struct btrfs_ioctl_search_args)

	extentDataKey    = 108 // BTRFS_EXTENT_DATA_KEY
	fileExtentInline = 0   // BTRFS_FILE_EXTENT_INLINE
	fileExtentReg    = 1   // BTRFS_FILE_EXTENT_REG

	// Offsets in struct btrfs_file_extent_item (packed).
	feRAMBytes     = 8
	feCompression  = 16
	feType         = 20
	feInlineData   = 21
	feDiskBytenr   = 21
	feDiskNumBytes = 29
	feOffset       = 37
	feNumBytes     = 45
	feRegSize      = 53

	searchHeaderSize = 32 // struct btrfs_ioctl_search_header
)

// searchKey mirrors struct btrfs_ioctl_search_key (104 bytes).
type searchKey struct {
	TreeID      uint64
	MinObjectID uint64
	MaxObjectID uint64
	MinOffset   uint64
	MaxOffset   uint64
	MinTransID  uint64
	MaxTransID  uint64
	MinType     uint32
	MaxType     uint32
	NrItems     uint32
	_           uint32
	_           [4]uint64
}

// searchArgs mirrors struct btrfs_ioctl_search_args (4096 bytes).
type searchArgs struct {
	Key searchKey
	Buf [4096 - 104]byte
}

var (
	_ [104 - unsafe.Sizeof(searchKey{})]struct{} // layout guards
	_ [unsafe.Sizeof(searchKey{}) - 104]struct{}
	_ [4096 - unsafe.Sizeof(searchArgs{})]struct{}
)

// DataSizeOf reads the file extent items of the subvolume at path that
// were written after transaction since (0 for all of them: a full send;
// the parent's CTransID for an incremental one), with
// BTRFS_IOC_TREE_SEARCH, which needs CAP_SYS_ADMIN as send does. The
// figure is an estimate: data shared between files counts each time,
// though send may clone it, and an incremental send also carries what
// changed without new data (renames, deletions, metadata). It stops with
// ctx's error when ctx ends: a large subvolume has millions of items.
func DataSizeOf(ctx context.Context, path string, since uint64) (DataSize, error) {
	f, err := os.Open(path)
	if err != nil {
		return DataSize{}, fmt.Errorf("data size of %s: %w", path, err)
	}
	defer f.Close()
	var size DataSize
	// Tree 0 is the tree of the subvolume that holds the open file. The
	// key range is compound (objectid, type, offset): items of other
	// types inside it come back too and are skipped. The transaction
	// range skips the tree blocks unchanged since then; a changed block
	// also holds older items, which the item's own generation tells.
	args := searchArgs{Key: searchKey{MinObjectID: firstFreeObjectID, MaxObjectID: math.MaxUint64,
		MinType: extentDataKey, MaxType: extentDataKey, MaxOffset: math.MaxUint64, MinTransID: since + 1, MaxTransID: math.MaxUint64}}
	for {
		if err := ctx.Err(); err != nil {
			return DataSize{}, fmt.Errorf("data size of %s: %w", path, err)
		}
		args.Key.NrItems = math.MaxUint32
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), iocTreeSearch, uintptr(unsafe.Pointer(&args))); errno != 0 {
			return DataSize{}, fmt.Errorf("data size of %s: tree search: %w", path, errno)
		}
		if args.Key.NrItems == 0 {
			return size, nil
		}
		var objectID, offset uint64
		var typ uint32
		buf := args.Buf[:]
		for range args.Key.NrItems {
			if len(buf) < searchHeaderSize {
				return DataSize{}, fmt.Errorf("data size of %s: short search result", path)
			}
			objectID, offset = binary.LittleEndian.Uint64(buf[8:]), binary.LittleEndian.Uint64(buf[16:])
			typ = binary.LittleEndian.Uint32(buf[24:])
			n := int(binary.LittleEndian.Uint32(buf[28:]))
			if len(buf) < searchHeaderSize+n {
				return DataSize{}, fmt.Errorf("data size of %s: short search result", path)
			}
			if item := buf[searchHeaderSize : searchHeaderSize+n]; typ == extentDataKey && len(item) >= 8 && binary.LittleEndian.Uint64(item) > since {
				size.add(item)
			}
			buf = buf[searchHeaderSize+n:]
		}
		// Go on after the last key returned.
		if !nextKey(&args.Key, objectID, typ, offset) {
			return size, nil
		}
	}
}

// nextKey sets k's minimum to the key after (objectID, typ, offset) in the
// compound order, and reports false past the last one.
func nextKey(k *searchKey, objectID uint64, typ uint32, offset uint64) bool {
	switch {
	case offset < math.MaxUint64:
		offset++
	case typ < math.MaxUint8:
		offset, typ = 0, typ+1
	case objectID < math.MaxUint64:
		offset, typ, objectID = 0, 0, objectID+1
	default:
		return false
	}
	k.MinObjectID, k.MinType, k.MinOffset = objectID, typ, offset
	return true
}

// add counts one file extent item.
func (s *DataSize) add(item []byte) {
	if len(item) < feInlineData {
		return
	}
	ram := int64(binary.LittleEndian.Uint64(item[feRAMBytes:]))
	compressed := item[feCompression] != 0
	switch item[feType] {
	case fileExtentInline:
		s.Plain += ram
		if compressed {
			s.Encoded += int64(len(item) - feInlineData)
		} else {
			s.Encoded += ram
		}
	case fileExtentReg:
		if len(item) < feRegSize || binary.LittleEndian.Uint64(item[feDiskBytenr:]) == 0 {
			return // a hole
		}
		num := int64(binary.LittleEndian.Uint64(item[feNumBytes:]))
		s.Plain += num
		whole := binary.LittleEndian.Uint64(item[feOffset:]) == 0 && num == ram
		if compressed && whole {
			s.Encoded += int64(binary.LittleEndian.Uint64(item[feDiskNumBytes:]))
		} else {
			s.Encoded += num
		}
	}
	// Preallocated extents hold no data: send writes none.
}
