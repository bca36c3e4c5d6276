package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the server. The socket is reachable by root alone, but a buggy or
// hostile local client must still not pin the agent's memory, goroutines or
// hooks for long.
const (
	headerTimeout  = 5 * time.Second  // to read a request's headers
	bodyTimeout    = 5 * time.Second  // to read its body
	writeTimeout   = 5 * time.Second  // to write the answer
	idleTimeout    = 30 * time.Second // between requests on a connection
	maxHeaderBytes = 16 << 10
	// maxHookTime bounds one hook call even if the client stays. The
	// plugin gives up after its own timeout (DefaultTimeout) and closes the
	// connection, which cancels the hook's context sooner.
	maxHookTime = 2 * time.Minute
	// maxInFlight bounds concurrent hook calls; more are refused with 503,
	// which fails that ADD and the runtime retries it. A node runs at most a
	// few hundred pods.
	maxInFlight = 256
	// shutdownGrace is how long Serve waits for hooks to return after its
	// context is done (they see the cancellation) before closing connections.
	shutdownGrace = 5 * time.Second
)

// Server answers the plugin's requests by calling Hooks. Set Hooks before
// use; the other fields are optional. A Server is an http.Handler and is safe
// for concurrent use; do not change its fields once it serves.
type Server struct {
	// Hooks is the agent's part: what to do for each pod added or deleted.
	Hooks Hooks
	// Logger logs each pod added or deleted and the outcome; nil discards.
	Logger *slog.Logger
	// Observe, if set, is called after each hook call, with op "add" or
	// "del", the time the hook took and its error: enough to count requests
	// and outcomes in the agent's metrics. It must not block.
	Observe func(op string, took time.Duration, err error)

	inFlight atomic.Int64
}

// ServeHTTP implements the protocol described in the package doc.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var op string
	switch r.URL.Path {
	case pathHealth:
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			writeError(w, http.StatusMethodNotAllowed, "cni: "+r.Method+" "+r.URL.Path+": method not allowed")
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	case pathAdd:
		op = "add"
	case pathDel:
		op = "del"
	default:
		writeError(w, http.StatusNotFound, "cni: no such path "+r.URL.Path)
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "cni: "+r.Method+" "+r.URL.Path+": method not allowed")
		return
	}
	p, status, err := readPod(w, r)
	if err == nil {
		err = p.validate(op == "add")
		status = http.StatusBadRequest
	}
	if err != nil {
		s.logger().Warn("cni: bad "+op+" request", "err", err)
		writeError(w, status, err.Error())
		return
	}
	if n := s.inFlight.Add(1); n > maxInFlight {
		s.inFlight.Add(-1)
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("cni: agent busy: %d requests in flight", n-1))
		return
	}
	defer s.inFlight.Add(-1)

	ctx, cancel := context.WithTimeout(r.Context(), maxHookTime)
	defer cancel()
	start := time.Now()
	if op == "add" {
		err = s.Hooks.AddPod(ctx, p)
	} else {
		err = s.Hooks.DelPod(ctx, p)
	}
	took := time.Since(start)
	if s.Observe != nil {
		s.Observe(op, took, err)
	}
	if err != nil {
		s.logger().Warn("cni: "+op+" pod failed", "ns", p.Namespace, "pod", p.Name, "err", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	s.logger().Debug("cni: "+op+" pod", "ns", p.Namespace, "pod", p.Name)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	w.WriteHeader(http.StatusNoContent)
}

// readPod reads one Pod from r's body within bodyTimeout and maxBody.
func readPod(w http.ResponseWriter, r *http.Request) (Pod, int, error) {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	// Clear the deadline: the server reads in the background while the
	// hook runs, to see the client leave, and a deadline there would cancel
	// the hook's context.
	_ = rc.SetReadDeadline(time.Time{})
	if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
		return Pod{}, http.StatusRequestEntityTooLarge, fmt.Errorf("cni: request body over %d bytes", maxBody)
	}
	if err != nil {
		return Pod{}, http.StatusBadRequest, fmt.Errorf("cni: read request: %w", err)
	}
	var p Pod
	if err := json.Unmarshal(body, &p); err != nil {
		return Pod{}, http.StatusBadRequest, fmt.Errorf("cni: decode pod: %w", err)
	}
	return p, 0, nil
}

// writeError answers with status and msg, and closes the connection: after a
// bad or timed-out body the server would otherwise wait to read the rest.
func writeError(w http.ResponseWriter, status int, msg string) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: msg})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve serves the protocol on ln until ctx is done, then waits briefly for
// hook calls in flight, whose context is cancelled too, and returns nil. It
// closes ln. It returns an error if ln fails or Hooks is nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Hooks == nil {
		ln.Close()
		return errors.New("cni: Server has no Hooks")
	}
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		BaseContext:       func(net.Listener) context.Context { return ctx },
		ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelDebug),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("cni: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-done // http.ErrServerClosed
	return nil
}

// Listen makes the agent's unix socket at path, mode 0600, for Server.Serve.
// It creates the socket's directory with mode 0700 if it is missing. A
// socket already there is taken over, whether its agent died or still runs:
// during a rolling update the new agent starts beside the old one (the
// DaemonSet's maxSurge), and the plugin's next request must reach the new
// one, as new connections reach its listeners. The old agent finishes the
// requests it has. A file that is not a socket is refused. Closing the
// listener removes the socket only if it is still this listener's.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("cni: listen: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("cni: listen: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("cni: listen: take over %s: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("cni: listen: %w", err)
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	// Until this chmod the socket's mode follows the umask; a directory
	// made here is 0700, which keeps others out meanwhile.
	fi, err := os.Lstat(path)
	if err == nil {
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("cni: listen: %w", err)
	}
	return &ownSocket{UnixListener: ul, path: path, file: fi}, nil
}

// ownSocket removes its path on Close unless another agent has taken it
// over since.
type ownSocket struct {
	*net.UnixListener
	path string
	file os.FileInfo
	once sync.Once
}

// TakenOver reports whether another agent has listened on the path since
// (Listen over a live socket). A path that is gone is not another's: Close
// removes it when it is still this listener's.
func (l *ownSocket) TakenOver() bool {
	fi, err := os.Lstat(l.path)
	return err == nil && !os.SameFile(fi, l.file)
}

func (l *ownSocket) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
	})
	return err
}
