package redirect

import (
	"net"
	"time"
)

// KeepAlive is the TCP keepalive of every data-plane socket, accepted or
// dialled: ztunnel's 180 s idle, 180 s interval, 9 probes, rather than Go's
// 15 s, which would probe every idle connection of every pod four times a
// minute. A dead peer is found within 30 minutes; HBONE connections also
// send HTTP/2 PINGs.
var KeepAlive = net.KeepAliveConfig{Enable: true, Idle: 180 * time.Second, Interval: 180 * time.Second, Count: 9}
