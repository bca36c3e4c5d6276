package node

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/ferrymesh/ferry/internal/netns"
	"github.com/ferrymesh/ferry/node/redirect"
)

// nsSockets creates sockets inside pods' network namespaces (--capture pod)
// on one dedicated OS thread: a socket belongs to the namespace of the thread
// that created it and may be used from any goroutine afterwards. The thread
// joins the pod's namespace for the socket(2) call and returns to its own at
// once, so it never keeps a deleted pod's namespace alive. One thread costs
// two setns(2) per socket; a fresh thread per socket (netns.Do) would cost a
// clone(2) and an exit.
type nsSockets struct {
	reqs     chan nsSocketReq
	stopping chan struct{} // closed by stop
	done     chan struct{} // closed when the thread has ended
}

type nsSocketReq struct {
	ns    *netns.NetNS
	reply chan nsSocketResp
}

type nsSocketResp struct {
	fd  int
	err error
}

var errSocketsStopped = errors.New("node: the agent is stopping")

// startNSSockets starts the thread; stop ends it.
func startNSSockets() (*nsSockets, error) {
	s := &nsSockets{reqs: make(chan nsSocketReq), stopping: make(chan struct{}), done: make(chan struct{})}
	started := make(chan error, 1)
	go s.run(started)
	if err := <-started; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *nsSockets) run(started chan<- error) {
	defer close(s.done)
	// Never unlocked: the runtime ends the thread with the goroutine,
	// whatever namespace it is in.
	runtime.LockOSThread()
	home, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		started <- fmt.Errorf("node: open own network namespace: %w", err)
		return
	}
	defer unix.Close(home)
	started <- nil
	for {
		var r nsSocketReq
		select {
		case r = <-s.reqs:
		case <-s.stopping:
			return
		}
		var resp nsSocketResp
		if err := unix.Setns(r.ns.FD(), unix.CLONE_NEWNET); err != nil {
			resp.err = fmt.Errorf("node: enter pod network namespace: %w", err)
		} else {
			resp.fd, resp.err = redirect.NewSocket()
			if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
				// The thread is lost to that namespace: stop serving.
				if resp.err == nil {
					unix.Close(resp.fd)
				}
				r.reply <- nsSocketResp{err: fmt.Errorf("node: return from pod network namespace: %w", err)}
				return
			}
		}
		r.reply <- resp
	}
}

// socket returns a new TCP socket created in ns (redirect.NewSocket).
func (s *nsSockets) socket(ns *netns.NetNS) (int, error) {
	reply := make(chan nsSocketResp, 1)
	select {
	case s.reqs <- nsSocketReq{ns: ns, reply: reply}:
	case <-s.done:
		return -1, errSocketsStopped
	}
	r := <-reply
	return r.fd, r.err
}

// stop ends the thread; socket fails from then on.
func (s *nsSockets) stop() {
	close(s.stopping)
	<-s.done
}
