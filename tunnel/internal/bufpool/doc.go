// Package bufpool hands out the tunnel's byte buffers in five size classes
// (1, 4, 16, 64 and 256 KiB). A buffer is taken when data is about to move
// and put back as soon as it has been written out, so an idle connection
// holds none.
//
//	buf := bufpool.Get(n) // len(buf) == cap(buf) >= min(n, MaxSize)
//	...
//	bufpool.Put(buf)
package bufpool
