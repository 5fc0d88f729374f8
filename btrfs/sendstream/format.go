// Package sendstream owns the wire format of `btrfs send`: the stream
// header, the command framing with its CRC-32C, and the TLV attributes of
// protocol versions 1 and 2. It decodes; it never touches a filesystem.
//
// Two ways in:
//
//   - Decoder is a push parser for callers that receive the stream in
//     arbitrary chunks (the native applier): Decode looks at a byte slice and
//     either returns one complete item and how many bytes it used, or says
//     it needs more bytes. It keeps only the current protocol version, so it
//     holds no buffer of its own.
//   - Reader wraps an io.Reader and returns one Command at a time.
//
// Both verify every command's CRC, refuse protocol version 3 and anything
// they do not understand with a clear error, and refuse a command longer
// than MaxCommandLen (16 MiB by default) before allocating for it, so
// arbitrary input cannot make them allocate without bound. Streams may be
// concatenated: after END a new stream header may follow, as `btrfs
// receive` accepts.
package sendstream

import (
	"fmt"
)

// Magic starts every send stream, NUL included.
const Magic = "btrfs-stream\x00"

const (
	headerLen    = len(Magic) + 4 // magic, le32 version
	cmdHeaderLen = 10             // le32 len, le16 cmd, le32 crc
	tlvHeaderLen = 4              // le16 type, le16 len

	// DefaultMaxCommandLen bounds one command's payload. The kernel's
	// largest send buffer is 144 KiB (192 KiB on 64 KiB pages), so 16 MiB
	// leaves ample room and still rejects hostile lengths early.
	DefaultMaxCommandLen = 16 << 20

	// MaxVersion is the highest protocol version decoded. Version 3 (fs-verity)
	// exists only in experimental kernels and is refused.
	MaxVersion = 2
)

// Cmd is a send stream command type.
type Cmd uint16

// Command types, numbered as in btrfs-progs kernel-shared/send.h.
const (
	CmdUnspec Cmd = iota
	CmdSubvol
	CmdSnapshot
	CmdMkfile
	CmdMkdir
	CmdMknod
	CmdMkfifo
	CmdMksock
	CmdSymlink
	CmdRename
	CmdLink
	CmdUnlink
	CmdRmdir
	CmdSetXattr
	CmdRemoveXattr
	CmdWrite
	CmdClone
	CmdTruncate
	CmdChmod
	CmdChown
	CmdUtimes
	CmdEnd
	CmdUpdateExtent
	CmdFallocate    // v2
	CmdFileattr     // v2
	CmdEncodedWrite // v2
	CmdEnableVerity // v3, refused
)

var cmdNames = [...]string{
	"UNSPEC", "SUBVOL", "SNAPSHOT", "MKFILE", "MKDIR", "MKNOD", "MKFIFO", "MKSOCK",
	"SYMLINK", "RENAME", "LINK", "UNLINK", "RMDIR", "SET_XATTR", "REMOVE_XATTR",
	"WRITE", "CLONE", "TRUNCATE", "CHMOD", "CHOWN", "UTIMES", "END", "UPDATE_EXTENT",
	"FALLOCATE", "FILEATTR", "ENCODED_WRITE", "ENABLE_VERITY",
}

func (c Cmd) String() string {
	if int(c) < len(cmdNames) {
		return cmdNames[c]
	}
	return fmt.Sprintf("CMD_%d", uint16(c))
}

// minVersion is the protocol version that introduced the command.
func (c Cmd) minVersion() uint32 {
	switch {
	case c >= CmdEnableVerity:
		return 3
	case c >= CmdFallocate:
		return 2
	}
	return 1
}

// Attr is a TLV attribute type.
type Attr uint16

// Attribute types, numbered as in btrfs-progs kernel-shared/send.h.
const (
	AttrUnspec Attr = iota
	AttrUUID
	AttrCTransID
	AttrIno
	AttrSize
	AttrMode
	AttrUID
	AttrGID
	AttrRdev
	AttrCtime
	AttrMtime
	AttrAtime
	AttrOtime
	AttrXattrName
	AttrXattrData
	AttrPath
	AttrPathTo
	AttrPathLink
	AttrFileOffset
	AttrData
	AttrCloneUUID
	AttrCloneCTransID
	AttrClonePath
	AttrCloneOffset
	AttrCloneLen
	AttrFallocateMode    // v2
	AttrFileattr         // v2
	AttrUnencodedFileLen // v2
	AttrUnencodedLen     // v2
	AttrUnencodedOffset  // v2
	AttrCompression      // v2
	AttrEncryption       // v2
	attrCount
)

const (
	maxAttrV1 = AttrCloneLen
	maxAttrV2 = AttrEncryption
)

var attrNames = [...]string{
	"UNSPEC", "UUID", "CTRANSID", "INO", "SIZE", "MODE", "UID", "GID", "RDEV",
	"CTIME", "MTIME", "ATIME", "OTIME", "XATTR_NAME", "XATTR_DATA", "PATH",
	"PATH_TO", "PATH_LINK", "FILE_OFFSET", "DATA", "CLONE_UUID", "CLONE_CTRANSID",
	"CLONE_PATH", "CLONE_OFFSET", "CLONE_LEN", "FALLOCATE_MODE", "FILEATTR",
	"UNENCODED_FILE_LEN", "UNENCODED_LEN", "UNENCODED_OFFSET", "COMPRESSION",
	"ENCRYPTION",
}

func (a Attr) String() string {
	if int(a) < len(attrNames) {
		return attrNames[a]
	}
	return fmt.Sprintf("ATTR_%d", uint16(a))
}

// fixedLen is the exact value length of integer, UUID and timespec
// attributes, or 0 for variable-length ones.
func (a Attr) fixedLen() int {
	switch a {
	case AttrUUID, AttrCloneUUID:
		return 16
	case AttrCtime, AttrMtime, AttrAtime, AttrOtime:
		return 12
	case AttrFallocateMode, AttrCompression, AttrEncryption:
		return 4
	case AttrXattrName, AttrXattrData, AttrPath, AttrPathTo, AttrPathLink, AttrData, AttrClonePath:
		return 0
	}
	return 8
}

// Compression values of ENCODED_WRITE (BTRFS_ENCODED_IO_COMPRESSION_*).
const (
	CompressNone   = 0
	CompressZlib   = 1
	CompressZstd   = 2
	CompressLZO4K  = 3 // LZO with 4 KiB sectors; 4..7 are 8K..64K
	CompressLZO64K = 7
)
