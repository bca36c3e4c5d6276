package tunnel

import (
	"bytes"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
)

// checkLocks turns on lock-order assertions (see h2conn). Tests set it;
// production leaves it off, where it costs a branch per lock.
var checkLocks bool

// connMutex is h2conn.mu: a mutex that, under checkLocks, knows which
// goroutine holds it.
type connMutex struct {
	sync.Mutex
	holder atomic.Int64 // goroutine ID, under checkLocks
}

func (m *connMutex) Lock() {
	m.Mutex.Lock()
	if checkLocks {
		m.holder.Store(goroutineID())
	}
}

func (m *connMutex) Unlock() {
	if checkLocks {
		m.holder.Store(0)
	}
	m.Mutex.Unlock()
}

// assertNotHeld panics, under checkLocks, when the calling goroutine holds m:
// it is about to wait for wmu, which lock order forbids.
func (m *connMutex) assertNotHeld() {
	if checkLocks && m.holder.Load() == goroutineID() {
		panic("tunnel: waiting for wmu while holding mu (lock order: wmu before mu)")
	}
}

// goroutineID reads the calling goroutine's ID from its stack header
// ("goroutine 42 [running]:"); slow, for checks only.
func goroutineID() int64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseInt(string(b), 10, 64)
	return id
}
