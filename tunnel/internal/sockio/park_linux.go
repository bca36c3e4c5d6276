package sockio

import (
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// A Spot is where a reader of an idle socket waits without a goroutine. A
// goroutine blocked on a read costs its stack (2 KiB at least) for as long
// as the socket stays idle; a parked socket costs its Spot. Park hands the
// socket to one epoll instance shared by the process, whose single waiter
// goroutine (running only while something is parked) starts the reader's
// resume function on a new goroutine once the socket is readable or its
// peer closed it. The zero Spot is ready to use; a Spot serves one socket
// at a time.
type Spot struct {
	id     uint64 // key in parking.spots while parked; 0 otherwise
	c      *net.TCPConn
	resume func()
}

// parking is the process's parked sockets. Registrations are keyed by id,
// never by descriptor: a descriptor closed while parked leaves the epoll set
// on its own, and its number may come back for another socket.
var parking struct {
	mu      sync.Mutex
	epfd    int // epoll instance; 0 until first used, then for the process's life
	wake    int // eventfd in epfd (key 0): tells the waiter to look again
	spots   map[uint64]*Spot
	next    uint64
	waiting bool // the waiter goroutine runs
}

// Park arranges for resume to run on a new goroutine, once, when c has
// something to read (data, its end, or an error), or when Wake is called.
// It fails when c is closed, leaving nothing parked.
func Park(s *Spot, c *net.TCPConn, resume func()) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	parking.mu.Lock()
	defer parking.mu.Unlock()
	if parking.epfd == 0 {
		if err := initParking(); err != nil {
			return err
		}
	}
	parking.next++
	id := parking.next
	var cerr error
	err = rc.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
		setEventKey(&ev, id)
		cerr = unix.EpollCtl(parking.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	s.id, s.c, s.resume = id, c, resume
	parking.spots[id] = s
	if !parking.waiting {
		parking.waiting = true
		go waitParked()
	}
	return nil
}

// Wake resumes s now if it is parked, and reports whether it was.
func Wake(s *Spot) bool {
	parking.mu.Lock()
	defer parking.mu.Unlock()
	if s.id == 0 {
		return false
	}
	unparkLocked(s)
	if len(parking.spots) == 0 {
		// Let the waiter see that nothing is left and stop.
		unix.Write(parking.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	}
	return true
}

// unparkLocked takes s out of the epoll set and starts its resume function.
func unparkLocked(s *Spot) {
	delete(parking.spots, s.id)
	// A closed socket has left the set already; Control then fails and the
	// descriptor, perhaps reused, is not touched.
	if rc, err := s.c.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.EpollCtl(parking.epfd, unix.EPOLL_CTL_DEL, int(fd), nil) })
	}
	resume := s.resume
	s.id, s.c, s.resume = 0, nil, nil
	go resume()
}

func initParking() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return err
	}
	parking.epfd, parking.wake, parking.spots = epfd, wake, make(map[uint64]*Spot)
	return nil
}

// waitParked waits for parked sockets to become readable and resumes their
// readers, until nothing is parked.
func waitParked() {
	events := make([]unix.EpollEvent, 64)
	var drain [8]byte
	for {
		n, err := unix.EpollWait(parking.epfd, events, -1)
		parking.mu.Lock()
		if err == nil {
			for _, ev := range events[:n] {
				id := eventKey(&ev)
				if id == 0 {
					unix.Read(parking.wake, drain[:])
					continue
				}
				// Gone already if Wake took it meanwhile.
				if s, ok := parking.spots[id]; ok {
					unparkLocked(s)
				}
			}
		}
		if len(parking.spots) == 0 {
			parking.waiting = false
			parking.mu.Unlock()
			return
		}
		parking.mu.Unlock()
	}
}

// The 64-bit key of an epoll registration is the event's Fd and Pad fields.
func setEventKey(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func eventKey(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
