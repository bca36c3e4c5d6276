package tunnel

import (
	"sync"
	"unsafe"
)

// Buffer size classes shared by the byte copier and the stream receive
// buffers. A buffer is taken from its class when data is about to move and
// returned as soon as it has been written out, so an idle connection holds
// none.
const (
	minBufSize = 1 << 10   // smallest receive chunk
	maxBufSize = 256 << 10 // largest copy buffer
)

// bufClasses are the capacities handed out: 1, 4, 16, 64, 256 KiB.
var bufClasses = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10}

// bufPools caches buffers per size class, each kept as a pointer to its
// first byte: putting a pointer in a sync.Pool does not allocate, putting a
// slice would. It holds no semantic state: any buffer may be dropped by the
// garbage collector at any time.
var bufPools [len(bufClasses)]sync.Pool

// classFor returns the index of the smallest class holding n bytes
// (the largest class when n exceeds it).
func classFor(n int) int {
	for i, c := range bufClasses {
		if n <= c {
			return i
		}
	}
	return len(bufClasses) - 1
}

// getBuf returns a buffer of len == cap == the class size for n.
func getBuf(n int) []byte {
	i := classFor(n)
	if p, ok := bufPools[i].Get().(*byte); ok {
		return unsafe.Slice(p, bufClasses[i])
	}
	return make([]byte, bufClasses[i])
}

// putBuf returns b to its pool. Buffers of a foreign capacity are dropped.
func putBuf(b []byte) {
	b = b[:cap(b)]
	for i, c := range bufClasses {
		if len(b) == c {
			bufPools[i].Put(unsafe.SliceData(b))
			return
		}
	}
}
