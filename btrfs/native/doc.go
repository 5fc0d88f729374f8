// Package native is a resumable `btrfs receive` written in Go: it applies
// a send stream (btrfs/sendstream) with syscalls and btrfs ioctls, and can
// continue after its process was killed.
//
// # API
//
// The stream arrives as ordered chunks whose boundaries need not match
// command boundaries:
//
//	r, err := native.New(ctx, dir, native.Options{})   // or native.Resume(ctx, dir, cp, opt)
//	for each chunk { r.Write(chunk) }                  // applies every complete command
//	cp, err := r.Checkpoint()                          // at any chunk boundary
//	res, err := r.Finish()                             // after the last chunk
//
// Write buffers the incomplete tail (at most one command, bounded by
// Options.MaxCommandLen). Checkpoint first calls Options.Sync (syncfs by
// default) and only then returns, so a checkpoint never claims more than
// is durable; it carries the buffered tail, so the caller persists the
// checkpoint and continues feeding with the byte at Checkpoint.Fed(). After
// a crash, Resume(ctx, dir, cp, opt) reopens the partial subvolume and
// expects the stream from cp.Fed() on. Checkpoint is a plain struct with a
// JSON form (Marshal, UnmarshalCheckpoint). A caller that must not stop
// feeding while the filesystem syncs splits Checkpoint in two: Mark takes
// the state at once, and Sync, which may run in another goroutine while
// Write goes on, makes it valid when it returns.
//
// Persist a first checkpoint before feeding the first byte (Checkpoint on
// a new Receiver returns the start). Without one, a crash right after the
// subvolume was created leaves a partial subvolume that New refuses to
// take over (btrfs.ErrExists), where Resume would have continued it.
//
// Finish requires the stream to have ended with END and nothing left
// over; it syncs, sets the received UUID and stransid
// (BTRFS_IOC_SET_RECEIVED_SUBVOL) and makes the subvolume read-only,
// exactly as btrfs receive does, and syncs again. A subvolume is therefore
// never read-only with a received UUID unless it is complete. Concatenated
// streams create several subvolumes; each is finished when the next one
// begins (the next may be incremental on top of it), the last by Finish.
// Abort leaves the partial subvolume for the caller to resume, or to
// delete with Discard(ctx, dir, cp), which removes only the partial
// subvolume the checkpoint names. The subvolume is received in place: a
// read-only subvolume cannot be moved to another directory (EROFS), so
// dir should be where it is meant to stay.
//
// Errors to act on (errors.Is): ErrNotResumable (Discard and start over),
// ErrUnsafePath (a hostile stream), btrfs.ErrExists (the subvolume is
// already there), btrfs.ErrParentMissing (no snapshot parent or clone
// source), sendstream.ErrMalformed and sendstream.ErrUnsupported (a bad or
// version 3 stream). Stats reports commands applied and skipped and data
// bytes written.
//
// # Resuming safely
//
// A checkpoint marks stream offset O: every command before O is applied
// and synced. The process may have applied many more before it died, and
// replaying namespace commands (MKFILE, RENAME, LINK, UNLINK, ...) more
// than once is not safe in general: "mkfile o1; rename o1 a; link b a"
// replayed would put a new empty inode under a. So the receiver keeps a
// journal: after each namespace command it stores the stream offset past
// it, with the boot ID and the stream's UUID, in the xattr
// trusted.snapjet.receive on the root of the subvolume being received
// (removed before it becomes read-only). On resume, commands before the
// journal offset are skipped; the commands from there on are replayed,
// and each of them is safe to replay once:
//
//   - data and attribute commands (WRITE, CLONE, TRUNCATE, CHMOD, CHOWN,
//     UTIMES, SET_XATTR, FALLOCATE, ENCODED_WRITE, FILEATTR) assign state
//     and converge when repeated in order; REMOVE_XATTR accepts ENODATA;
//   - the first namespace command after the journal offset may have run:
//     MKFILE/MKDIR/MKNOD/MKFIFO/MKSOCK/SYMLINK accept an existing entry of
//     the same type (and target), RENAME accepts a missing source with an
//     existing target, LINK an existing name on the same inode, UNLINK and
//     RMDIR a missing name;
//   - SUBVOL/SNAPSHOT create the subvolume under a temporary name
//     (".NAME.partial-UUIDPREFIX"), write its journal, and only then give
//     it its name. A resume adopts a subvolume under the stream's name
//     only if it is writable, has the expected parent and a journal of
//     this stream, and one under the temporary name (a kill before the
//     rename); anything else is never written to.
//
// END is journaled too, so a process that died while finishing (immutable
// flags set, received UUID set, journal removed: in that order) is never
// replayed into; a subvolume that already has its received UUID counts as
// finished, and the rest of its stream is skipped.
//
// The journal is filesystem metadata, so it is never more durable than the
// change it records. After a reboot, though, data written before the
// journal offset may be lost while the namespace changes survived; a
// resume then fails with ErrNotResumable unless the journal does not go
// past the checkpoint, and the caller starts over.
//
// # Finding parents and clone sources
//
// SNAPSHOT's parent and CLONE's external sources are found among the
// direct child subvolumes of Options.SearchDirs (default: the receive
// directory) on the same filesystem: first by received UUID (like btrfs
// receive, without comparing ctransid, which btrfs.Info does not carry as
// stransid), then by UUID plus ctransid. This scan with btrfs.Inspect replaces the UUID-tree
// search btrfs receive does (BTRFS_IOC_TREE_SEARCH plus root backref path
// resolution): it is simpler and confines a stream to the subvolumes the
// caller manages. Clones whose UUID is the stream's own read from the
// subvolume being received.
//
// # Safety
//
// Nothing outside the subvolume being received is written. Paths are
// checked (no absolute paths, "..", "." or empty components) and resolved
// with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS|
// RESOLVE_NO_XDEV) from the subvolume root; the final component is acted
// on with *at calls that do not follow symlinks. Malformed or hostile
// input gets an error naming the command and its stream offset.
//
// # Differences from btrfs receive
//
// FILEATTR is applied (btrfs receive ignores it); immutable and
// append-only flags are set in Finish so that later commands still work.
// Encoded writes go to the kernel (BTRFS_IOC_ENCODED_WRITE) and are
// decompressed (zlib, zstd, LZO) when it refuses them. Protocol version 3
// (fs-verity) is refused.
package native
