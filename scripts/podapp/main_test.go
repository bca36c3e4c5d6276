package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(handler("h", "ns/pod"))
	defer srv.Close()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{srv.URL + "/ip"}, "200\n127.0.0.1\n"},
		{[]string{srv.URL + "/ip?from=127.0.0.1"}, "200\n127.0.0.1\n"},
		{[]string{srv.URL + "/ip?from=169.254.7.127", "--expect-code", "403"}, "403\n127.0.0.1\n"},
		{[]string{srv.URL + "/"}, "200\nhostname=h pod=ns/pod\n"},
		{[]string{srv.URL + "/bytes?n=3"}, "200\nxxx"},
		{[]string{srv.URL + "/echo", "--data", "2"}, "200\nxx"},
		{[]string{srv.URL + "/bytes?n=-1", "--expect-code", "400"}, "400\nn: want 0..2^30\n"},
	} {
		var out bytes.Buffer
		if err := run(t.Context(), append([]string{"get"}, tc.args...), &out); err != nil {
			t.Errorf("get %v: %v", tc.args, err)
		}
		if out.String() != tc.want {
			t.Errorf("get %v = %q, want %q", tc.args, out.String(), tc.want)
		}
	}
}

func TestGetFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	var out bytes.Buffer
	if err := run(t.Context(), []string{"get", url, "--timeout", "2s"}, &out); err == nil {
		t.Error("get on a closed server: no error")
	}
	if !strings.HasPrefix(out.String(), "000\n") {
		t.Errorf("output %q, want 000", out.String())
	}
	out.Reset()
	if err := run(t.Context(), []string{"get", url, "--expect-code", "0"}, &out); err != nil {
		t.Errorf("get --expect-code 0 on a closed server: %v", err)
	}
}

func TestGetGate(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { requests.Add(1) }))
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := l.Addr().String()
	l.Close()
	var out bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- run(t.Context(), []string{"get", srv.URL, "--gate", gate}, &out) }()
	// Nothing is requested until the gate is opened.
	for {
		if n := requests.Load(); n != 0 {
			t.Fatalf("%d requests before the gate opened", n)
		}
		c, err := net.Dial("tcp", gate)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("get returned before its gate opened: %v (%q)", err, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := <-done; err != nil || out.String() != "200\n" || requests.Load() != 1 {
		t.Errorf("after the gate: %v, output %q", err, out.String())
	}
}

func TestHold(t *testing.T) {
	srv := httptest.NewServer(handler("h", "ns/pod"))
	defer srv.Close()
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"hold", srv.URL + "/addr", "--interval", "1ms"}, &out) }()
	for strings.Count(out.String(), "\n") < 5 {
		select {
		case err := <-done:
			t.Fatalf("hold ended: %v (%q)", err, out.String())
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("hold after cancel: %v", err)
	}
	// Every response came over the same connection: one client address.
	addrs := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		f := strings.Fields(l)
		if len(f) != 3 || f[1] != "200" {
			t.Fatalf("line %q, want TIME 200 ADDR", l)
		}
		addrs[f[2]] = true
	}
	if len(addrs) != 1 {
		t.Errorf("responses came from %d connections, want 1: %v", len(addrs), addrs)
	}
	// The server going away ends it with an error.
	srv.CloseClientConnections()
	srv.Close()
	if err := run(t.Context(), []string{"hold", srv.URL + "/addr"}, io.Discard); err == nil {
		t.Error("hold to a closed server: no error")
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
