//go:build !linux

package tunnel

import "net"

// waitReadable returns at once where readiness can't be asked for.
func waitReadable(net.Conn) error { return nil }
