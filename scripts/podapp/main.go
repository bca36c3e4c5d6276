package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "podapp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: podapp serve|get|hold [flags]")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:])
	case "get":
		return get(ctx, args[1:], out)
	case "hold":
		return hold(ctx, args[1:], out)
	}
	return fmt.Errorf("unknown command %q (serve, get, hold)", args[0])
}

// maxBytes bounds /bytes?n=.
const maxBytes = 1 << 30

func serve(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", ":8000", "listen address")
	name := fs.String("name", os.Getenv("POD_NAME"), "pod name reported by /")
	if err := fs.Parse(args); err != nil {
		return err
	}
	host, _ := os.Hostname()
	srv := &http.Server{
		Addr:              *addr,
		Handler:           handler(host, *name),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shut); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func handler(host, name string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ip", func(w http.ResponseWriter, r *http.Request) {
		ip, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			ip = r.RemoteAddr
		}
		if from := r.URL.Query().Get("from"); from != "" && from != ip {
			w.WriteHeader(http.StatusForbidden)
		}
		fmt.Fprintln(w, ip)
	})
	mux.HandleFunc("/addr", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, r.RemoteAddr)
	})
	mux.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 || n > maxBytes {
			http.Error(w, "n: want 0..2^30", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := bytes.Repeat([]byte{'x'}, 64<<10)
		for n > 0 {
			k := min(n, int64(len(buf)))
			if _, err := w.Write(buf[:k]); err != nil {
				return
			}
			n -= k
		}
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hostname=%s pod=%s\n", host, name)
	})
	return mux
}

func get(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 5*time.Second, "whole-request timeout")
	expect := fs.Int("expect-code", -1, "exit 0 only for this status code (0 = a failed request); default any 2xx")
	data := fs.Int("data", -1, "POST this many bytes instead of GET")
	gate := fs.String("gate", "", "listen on this address and make the request only after one connection to it")
	// Accept the URL before or after the flags.
	var url string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		url, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if url == "" && fs.NArg() == 1 {
		url = fs.Arg(0)
	} else if url == "" || fs.NArg() != 0 {
		return errors.New("usage: podapp get URL [--timeout D] [--expect-code N] [--data N] [--gate ADDR]")
	}
	if *gate != "" {
		if err := waitGate(ctx, *gate); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	method, body := http.MethodGet, io.Reader(nil)
	if *data >= 0 {
		method, body = http.MethodPost, bytes.NewReader(bytes.Repeat([]byte{'x'}, *data))
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	// No proxies from the environment, no connection reuse.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	code, b, rerr := 0, []byte(nil), error(nil)
	resp, err := tr.RoundTrip(req)
	if err == nil {
		code = resp.StatusCode
		b, rerr = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	fmt.Fprintf(out, "%03d\n", code)
	if len(b) > 0 {
		out.Write(b)
	}
	switch {
	case err != nil:
		if *expect == 0 {
			return nil
		}
		return err
	case rerr != nil:
		return fmt.Errorf("read body: %w", rerr)
	case *expect >= 0 && code != *expect:
		return fmt.Errorf("got status %d, want %d", code, *expect)
	case *expect < 0 && code/100 != 2:
		return fmt.Errorf("got status %d", code)
	}
	return nil
}

// waitGate returns after one connection to addr: a test starts a client pod
// and lets it make its request only once the pod's capture is in place.
func waitGate(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	return c.Close()
}

// hold keeps one TCP connection to the server of url and sends a GET for
// url's path on it every interval, printing the time, the status and the
// body of each response, until ctx ends (nil) or the connection fails (the
// error): a long-lived connection whose survival a test can read from the
// log.
func hold(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	interval := fs.Duration("interval", 250*time.Millisecond, "time between requests")
	gate := fs.String("gate", "", "listen on this address and connect only after one connection to it")
	var rawURL string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		rawURL, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" || fs.NArg() != 0 {
		return errors.New("usage: podapp hold URL [--interval D] [--gate ADDR]")
	}
	if *gate != "" {
		if err := waitGate(ctx, *gate); err != nil {
			return err
		}
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	br := bufio.NewReader(c)
	for {
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", u.RequestURI(), u.Host); err != nil {
			return ctxOr(ctx, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return ctxOr(ctx, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return ctxOr(ctx, err)
		}
		fmt.Fprintf(out, "%s %03d %s\n", time.Now().UTC().Format(time.RFC3339Nano), resp.StatusCode, bytes.TrimSpace(body))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

// ctxOr is nil once ctx has ended (the connection was closed on purpose),
// else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}
