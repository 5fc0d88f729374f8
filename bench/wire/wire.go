// Package wire counts the bytes that cross the pipes between benchmarked
// processes of a shell-style pipeline. The TCP relay between networked
// processes, which can also cut its connections, is internal/netfault.
package wire

import (
	"io"
	"net"
	"sync/atomic"
)

// bufSize is large enough that the relay's own syscalls stay far below the
// cost of the processes it sits between.
const bufSize = 256 << 10

// Copy copies src to dst like io.Copy and adds every byte written to n as
// it goes, so a watcher can read progress while the copy runs.
func Copy(dst io.Writer, src io.Reader, n *atomic.Int64) (int64, error) {
	buf := make([]byte, bufSize)
	var total int64
	for {
		r, rerr := src.Read(buf)
		if r > 0 {
			w, werr := dst.Write(buf[:r])
			total += int64(w)
			n.Add(int64(w))
			if werr != nil {
				return total, werr
			}
			if w != r {
				return total, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// FreePort returns a loopback TCP port that was free a moment ago, for a
// server that must be told its port up front.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
