package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"istio.io/istio/pkg/hbone"
)

func main() {
	if len(os.Args) < 2 || (os.Args[1] != "client" && os.Args[1] != "server") {
		fmt.Fprintln(os.Stderr, "usage: istiohbone client|server -listen ADDR [-proxy ADDR -target ADDR] -cert F -key F -ca F [-debug-addr ADDR]")
		os.Exit(2)
	}
	side := os.Args[1]
	fs := flag.NewFlagSet(side, flag.ExitOnError)
	listen := fs.String("listen", "", "listen address")
	proxy := fs.String("proxy", "", "client: the HBONE server")
	target := fs.String("target", "", "client: the CONNECT authority")
	cert := fs.String("cert", "", "certificate chain (PEM)")
	key := fs.String("key", "", "key (PEM)")
	ca := fs.String("ca", "", "roots (PEM)")
	debug := fs.String("debug-addr", "", "serve /debug/pprof/ here")
	fs.Parse(os.Args[2:])
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, log, side, *listen, *proxy, *target, *cert, *key, *ca, *debug); err != nil {
		log.Error("istiohbone", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, log *slog.Logger, side, listen, proxy, target, certFile, keyFile, caFile, debug string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	if debug != "" {
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		dsrv := &http.Server{Addr: debug, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go dsrv.ListenAndServe()
		context.AfterFunc(ctx, func() { dsrv.Close() })
	}
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, "tcp4", listen)
	if err != nil {
		return err
	}
	tcfg := &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		CurvePreferences: []tls.CurveID{tls.X25519}, NextProtos: []string{"h2"},
	}
	if side == "server" {
		tcfg.ClientAuth = tls.RequireAndVerifyClientCert
		tcfg.ClientCAs = pool
		srv := hbone.NewServer()
		srv.TLSConfig = tcfg
		srv.Protocols.SetHTTP2(true)
		context.AfterFunc(ctx, func() { srv.Close() })
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	tcfg.RootCAs = pool
	tcfg.ServerName = "localhost"
	d := hbone.NewDialer(hbone.Config{ProxyAddress: proxy, TLS: tcfg})
	context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			up, err := d.DialContext(ctx, "tcp", target)
			if err != nil {
				log.Warn("dial", "err", err)
				return
			}
			defer up.Close()
			pipe(c, up)
		})
	}
}

// pipe copies both ways; the first direction to end closes both
// connections (net.Pipe, which the HBONE dialer returns, cannot half-close).
func pipe(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.CopyBuffer(dst, src, make([]byte, 32<<10))
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	a.Close()
	b.Close()
	<-done
}
