package bufpool

import (
	"sync"
	"unsafe"
)

const (
	MinSize = 1 << 10   // smallest class
	MaxSize = 256 << 10 // largest class
)

// classes are the capacities handed out.
var classes = [...]int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10}

// pools caches buffers per class, each kept as a pointer to its first byte:
// putting a pointer in a sync.Pool does not allocate, putting a slice
// would. Any buffer may be dropped by the garbage collector at any time.
var pools [len(classes)]sync.Pool

// classFor returns the index of the smallest class holding n bytes (the
// largest class when n exceeds it).
func classFor(n int) int {
	for i, c := range classes {
		if n <= c {
			return i
		}
	}
	return len(classes) - 1
}

// Get returns a buffer whose len and cap are the size of n's class.
func Get(n int) []byte {
	i := classFor(n)
	if p, ok := pools[i].Get().(*byte); ok {
		return unsafe.Slice(p, classes[i])
	}
	return make([]byte, classes[i])
}

// Put returns b to its class. A buffer of a foreign capacity is dropped.
func Put(b []byte) {
	b = b[:cap(b)]
	for i, c := range classes {
		if len(b) == c {
			pools[i].Put(unsafe.SliceData(b))
			return
		}
	}
}
