package cni

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// fakeHooks records the pods it is given and answers with addErr and delErr.
// If block is set, AddPod waits for ctx instead and reports its cause.
type fakeHooks struct {
	addErr, delErr error
	block          bool
	cancelled      chan error

	mu         sync.Mutex
	added, del []Pod
}

func (h *fakeHooks) AddPod(ctx context.Context, p Pod) error {
	h.mu.Lock()
	h.added = append(h.added, p)
	h.mu.Unlock()
	if h.block {
		<-ctx.Done()
		h.cancelled <- ctx.Err()
		return ctx.Err()
	}
	return h.addErr
}

func (h *fakeHooks) DelPod(_ context.Context, p Pod) error {
	h.mu.Lock()
	h.del = append(h.del, p)
	h.mu.Unlock()
	return h.delErr
}

func (h *fakeHooks) calls() (added, deleted []Pod) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Pod(nil), h.added...), append([]Pod(nil), h.del...)
}

// sockPath returns a socket path in a fresh directory that does not exist yet.
func sockPath(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "run", "cni.sock")
}

// serve serves h on a fresh socket until the test ends, and returns the
// socket's path and a function that stops the server early.
func serve(t testing.TB, h Hooks, opts ...func(*Server)) (sock string, stop func()) {
	t.Helper()
	sock = sockPath(t)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := &Server{Hooks: h, Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, o := range opts {
		o(srv)
	}
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return sock, stop
}

var testPod = Pod{
	ContainerID: "0123456789abcdef",
	Netns:       "/var/run/netns/cni-0123",
	Namespace:   "default",
	Name:        "web-1",
	UID:         "6d1a8d6c-3b4e-4a36-9f3c-3a8c5d1c2e10",
	IPs:         []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")},
}

func TestRoundTrip(t *testing.T) {
	h := &fakeHooks{}
	sock, _ := serve(t, h)
	c := &Client{Socket: sock}
	if err := c.Check(t.Context()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if err := c.AddPod(t.Context(), testPod); err != nil {
		t.Fatalf("AddPod: %v", err)
	}
	gone := testPod
	gone.Netns, gone.IPs = "", nil
	if err := c.DelPod(t.Context(), gone); err != nil {
		t.Fatalf("DelPod: %v", err)
	}
	added, deleted := h.calls()
	if want := []Pod{testPod}; !reflect.DeepEqual(added, want) {
		t.Errorf("AddPod got %+v, want %+v", added, want)
	}
	if want := []Pod{gone}; !reflect.DeepEqual(deleted, want) {
		t.Errorf("DelPod got %+v, want %+v", deleted, want)
	}
}

func TestHookErrorPropagates(t *testing.T) {
	const msg = "enter netns /var/run/netns/cni-0123: no such file or directory"
	h := &fakeHooks{addErr: errors.New(msg), delErr: errors.New("del: " + msg)}
	var mu sync.Mutex
	observed := map[string]int{}
	sock, stop := serve(t, h, func(s *Server) {
		s.Observe = func(op string, _ time.Duration, err error) {
			mu.Lock()
			defer mu.Unlock()
			observed[fmt.Sprintf("%s %v", op, err != nil)]++
		}
	})
	c := &Client{Socket: sock}
	for name, call := range map[string]func(context.Context, Pod) error{"add": c.AddPod, "del": c.DelPod} {
		err := call(t.Context(), testPod)
		ae := (*AgentError)(nil)
		if !errors.As(err, &ae) || ae.Status != http.StatusInternalServerError {
			t.Fatalf("%s: err = %#v, want an *AgentError with status 500", name, err)
		}
		want := msg
		if name == "del" {
			want = "del: " + msg
		}
		if err.Error() != want {
			t.Errorf("%s: err = %q, want the hook's message %q unchanged", name, err, want)
		}
		if errors.Is(err, ErrUnreachable) {
			t.Errorf("%s: a refusal is not ErrUnreachable", name)
		}
	}
	stop()
	if want := map[string]int{"add true": 1, "del true": 1}; !reflect.DeepEqual(observed, want) {
		t.Errorf("Observe saw %v, want %v", observed, want)
	}
}

func TestBadRequests(t *testing.T) {
	h := &fakeHooks{}
	sock, _ := serve(t, h)
	hc := unixHTTP(sock)
	noNetns := `{"containerID":"c1","namespace":"default","name":"web"}`
	for _, tc := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"oversized body", "POST", pathAdd, `{"name":"` + strings.Repeat("x", maxBody) + `"}`, http.StatusRequestEntityTooLarge},
		{"not JSON", "POST", pathAdd, `{"name":`, http.StatusBadRequest},
		{"add without netns", "POST", pathAdd, noNetns, http.StatusBadRequest},
		{"no container ID", "POST", pathDel, `{"namespace":"default","name":"web"}`, http.StatusBadRequest},
		{"no name", "POST", pathDel, `{"containerID":"c1","namespace":"default"}`, http.StatusBadRequest},
		{"GET add", "GET", pathAdd, "", http.StatusMethodNotAllowed},
		{"POST health", "POST", pathHealth, "", http.StatusMethodNotAllowed},
		{"unknown version", "POST", "/v2/pods/add", noNetns, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(t.Context(), tc.method, "http://ferry"+tc.path, strings.NewReader(tc.body))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !strings.Contains(string(b), `"error":`) {
				t.Errorf("status %d body %q, want %d with an error body", resp.StatusCode, b, tc.want)
			}
		})
	}
	// A delete without netns is fine: the sandbox may be gone.
	req, _ := http.NewRequestWithContext(t.Context(), "POST", "http://ferry"+pathDel, strings.NewReader(noNetns))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("del without netns: status %d, want 204", resp.StatusCode)
	}
	if added, _ := h.calls(); len(added) != 0 {
		t.Errorf("bad requests reached AddPod: %+v", added)
	}
}

func unixHTTP(sock string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
}

func TestClientUnreachable(t *testing.T) {
	stale := sockPath(t)
	ln, err := Listen(stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*ownSocket).UnixListener.Close() // as a killed agent leaves it
	for name, sock := range map[string]string{"no socket": filepath.Join(t.TempDir(), "cni.sock"), "stale socket": stale} {
		err := (&Client{Socket: sock}).AddPod(t.Context(), testPod)
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), sock) {
			t.Errorf("%s: err = %v, want ErrUnreachable naming %s", name, err, sock)
		}
	}
}

func TestHookCancelledWhenClientGivesUp(t *testing.T) {
	h := &fakeHooks{block: true, cancelled: make(chan error, 1)}
	sock, _ := serve(t, h)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if err := (&Client{Socket: sock}).AddPod(ctx, testPod); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("AddPod = %v, want the client's deadline", err)
	}
	select {
	case err := <-h.cancelled:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("hook's ctx ended with %v, want Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the hook's ctx was not cancelled when the client left")
	}
}

func TestServeShutdownCancelsHooks(t *testing.T) {
	h := &fakeHooks{block: true, cancelled: make(chan error, 1)}
	sock, stop := serve(t, h)
	errc := make(chan error, 1)
	go func() { errc <- (&Client{Socket: sock}).AddPod(context.Background(), testPod) }()
	for {
		if added, _ := h.calls(); len(added) > 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop() // fails the test if Serve returns an error
	if err := <-h.cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("hook's ctx ended with %v, want Canceled", err)
	}
	if err := <-errc; err == nil {
		t.Error("AddPod succeeded although the agent shut down before capturing")
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after Serve: %v", err)
	}
}

func TestServeWithoutHooks(t *testing.T) {
	ln, err := Listen(sockPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Server{}).Serve(t.Context(), ln); err == nil {
		t.Fatal("Serve without Hooks succeeded")
	}
}

func TestListen(t *testing.T) {
	sock := sockPath(t)
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{sock: 0o600 | os.ModeSocket, filepath.Dir(sock): 0o700 | os.ModeDir} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", path, fi.Mode(), err, want)
		}
	}
	// A socket another agent serves is taken over (a rolling update), and
	// that agent closing later leaves the new socket alone.
	ln2, err := Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the old agent's Close removed the new socket: %v", err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if a, err := ln2.Accept(); err != nil {
		t.Fatalf("the new agent does not get the connection: %v", err)
	} else {
		a.Close()
	}
	// A stale one, left by a dead agent, is replaced too; its own Close
	// removes it.
	ln2.(*ownSocket).UnixListener.Close()
	ln, err = Listen(sock)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln.Close()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Close: %v", err)
	}
	// A file that is not a socket is not ours to remove.
	file := filepath.Join(t.TempDir(), "cni.sock")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(file); err == nil {
		ln.Close()
		t.Error("Listen replaced a regular file")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "x" {
		t.Errorf("regular file changed: %q %v", b, err)
	}
}

// TestStalledClientIsDropped sends a request whose body never comes: the
// server must answer (or hang up) within its body timeout without calling a
// hook, and keep serving others meanwhile.
func TestStalledClientIsDropped(t *testing.T) {
	testutil.System(t) // waits out the body timeout
	h := &fakeHooks{}
	sock, _ := serve(t, h)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: ferry\r\nContent-Length: 100\r\n\r\n{", pathAdd)
	if err := (&Client{Socket: sock}).Check(t.Context()); err != nil {
		t.Errorf("Check while another client stalls: %v", err)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(bodyTimeout + 5*time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("status %d, want 400", resp.StatusCode)
		}
	} else if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server still waiting for the body after %v", time.Since(start))
	}
	if added, _ := h.calls(); len(added) != 0 {
		t.Errorf("a stalled request reached AddPod: %+v", added)
	}
}
