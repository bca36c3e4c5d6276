package testutil

import "runtime"

// Retained returns the heap bytes that what build returns keeps alive, as
// the garbage collector counts them after a full collection on each side.
// Inputs build reads but does not keep must be made before the call and
// kept alive after it, or their freeing hides what build kept.
func Retained[T any](build func() T) (T, int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	v := build()
	runtime.GC()
	runtime.ReadMemStats(&after)
	return v, int64(after.HeapAlloc) - int64(before.HeapAlloc)
}
