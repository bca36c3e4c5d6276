package main

import "testing"

func TestCategory(t *testing.T) {
	for fn, want := range map[string]string{
		"internal/runtime/syscall/linux.Syscall6":               catKernel,
		"syscall.RawSyscall6":                                   catKernel,
		"runtime.futex":                                         catKernel,
		"crypto/internal/fips140/aes/gcm.gcmAesEnc":             catCrypto,
		"p256MulInternal":                                       catCrypto,
		"runtime.mallocgc":                                      catRuntime,
		"sync.(*Mutex).Lock":                                    catRuntime,
		"github.com/ferrymesh/ferry/tunnel.(*h2conn).writeData": catFerry,
		"golang.org/x/net/http2.(*Framer).ReadFrame":            catOther,
		"net.(*TCPConn).Read":                                   catOther,
	} {
		if got := category(fn); got != want {
			t.Errorf("category(%q) = %q, want %q", fn, got, want)
		}
	}
}
