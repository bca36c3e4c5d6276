package node

import (
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"
)

// fanIn is one net.Listener fed by many: with --capture pod each enrolled pod
// has its own outbound, inbound and HBONE listeners, and the tunnel serves
// one fanIn of each kind for the agent's lifetime. A pod leaves by closing its
// listeners, which touches no other pod's connections (ending a tunnel Serve
// would end them all).
type fanIn struct {
	name  string
	addr  net.Addr
	log   *slog.Logger
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup // one goroutine per added listener
}

func newFanIn(name string, addr net.Addr, log *slog.Logger) *fanIn {
	return &fanIn{name: name, addr: addr, log: log, conns: make(chan net.Conn), done: make(chan struct{})}
}

// add accepts on ln until ln is closed or f is, handing each connection to
// f's Accept.
func (f *fanIn) add(ln net.Listener) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		var delay time.Duration
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				// Out of descriptors or memory: back off, as the
				// tunnel's own accept loops do.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				f.log.Warn("accept in pod", "listener", f.name, "addr", ln.Addr(), "err", err)
				select {
				case <-time.After(delay):
					continue
				case <-f.done:
					return
				}
			}
			delay = 0
			select {
			case f.conns <- c:
			case <-f.done:
				c.Close()
				return
			}
		}
	}()
}

// Accept implements net.Listener.
func (f *fanIn) Accept() (net.Conn, error) {
	select {
	case c := <-f.conns:
		return c, nil
	case <-f.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener: Accept fails from then on. The pods'
// listeners are their owners' to close; wait waits for their goroutines.
func (f *fanIn) Close() error {
	f.once.Do(func() { close(f.done) })
	return nil
}

// wait returns once every listener added has been closed (or f has) and
// its goroutine has ended.
func (f *fanIn) wait() { f.wg.Wait() }

// Addr implements net.Listener: the address each pod's listener binds.
func (f *fanIn) Addr() net.Addr { return f.addr }
