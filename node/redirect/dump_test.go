//go:build linux

package redirect

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestDumpRetriesInterrupted(t *testing.T) {
	calls := 0
	got, err := dump(func() ([]int, error) {
		calls++
		if calls < 3 {
			return []int{-1}, netlink.ErrDumpInterrupted
		}
		return []int{calls}, nil
	})
	if err != nil || len(got) != 1 || got[0] != 3 {
		t.Errorf("dump = %v, %v after %d calls; want [3], nil", got, err, calls)
	}

	calls = 0
	_, err = dump(func() ([]int, error) {
		calls++
		return nil, netlink.ErrDumpInterrupted
	})
	if !errors.Is(err, netlink.ErrDumpInterrupted) || calls != dumpRetries {
		t.Errorf("always interrupted: %v after %d calls, want ErrDumpInterrupted after %d", err, calls, dumpRetries)
	}

	calls = 0
	boom := errors.New("boom")
	_, err = dump(func() ([]int, error) {
		calls++
		return nil, boom
	})
	if !errors.Is(err, boom) || calls != 1 {
		t.Errorf("other error: %v after %d calls, want it at once", err, calls)
	}
}
