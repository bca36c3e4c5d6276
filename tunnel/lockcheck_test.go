package tunnel

import (
	"strings"
	"testing"
)

// TestLockOrder: with the checks on (as in every test of this package),
// waiting for wmu while holding mu panics; the allowed order does not.
func TestLockOrder(t *testing.T) {
	if !checkLocks {
		t.Fatal("TestMain did not turn lock checks on")
	}
	c := &h2conn{wmu: make(fifoLock, 1)}
	c.lockW()
	c.mu.Lock() // wmu, then mu: allowed
	c.nextID = 1
	c.mu.Unlock()
	c.wmu.Unlock()
	c.writers.Add(-1)

	c.mu.Lock()
	defer c.mu.Unlock()
	defer func() {
		r := recover()
		if msg, _ := r.(string); !strings.Contains(msg, "lock order") {
			t.Fatalf("lockW while holding mu: recovered %v, want a lock-order panic", r)
		}
	}()
	c.lockW()
	t.Fatal("lockW while holding mu did not panic")
}
