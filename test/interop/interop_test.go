package interop

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"istio.io/istio/pkg/hbone"

	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/tunnel"
)

var (
	idClient = certs.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "client"}
	idServer = certs.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "server"}
	// denied is an authority the test policy refuses.
	denied = netip.MustParseAddrPort("127.0.0.9:9")
)

// echoBackend echoes on loopback and half-closes after the client's EOF.
func echoBackend(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			})
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

// ferryServer runs Ferry's HBONE server on loopback.
func ferryServer(t *testing.T, store *certs.Store) netip.AddrPort {
	t.Helper()
	srv, err := tunnel.NewServer(tunnel.ServerConfig{
		TLS:          store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil }),
		Destinations: tunnel.DestinationsFunc(func(a netip.Addr) bool { return a.Is4() && a.IsLoopback() }),
		Authorizer: tunnel.AuthorizerFunc(func(_ context.Context, r tunnel.Request) error {
			if r.Dst == denied || r.Peer != idClient {
				return errors.New("denied by test policy")
			}
			return nil
		}),
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

func TestIstioClientToFerryServer(t *testing.T) {
	ca := certstest.NewCA(t)
	store := ca.Store(t, idClient, idServer)
	backend := echoBackend(t)
	addr := ferryServer(t, store)

	d := hbone.NewDialer(hbone.Config{ProxyAddress: addr.String(), TLS: store.ClientConfig(idClient, idServer)})
	c, err := d.Dial("tcp", backend.String())
	if err != nil {
		t.Fatal(err)
	}
	msg := strings.Repeat("istio to ferry ", 10000)
	go c.Write([]byte(msg))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if string(got) != msg {
		t.Fatal("echo mismatch")
	}
	for _, tc := range []struct {
		authority, want string
	}{
		{denied.String(), "401"},
		{"[::1]:80", "503"},
	} {
		_, err := d.Dial("tcp", tc.authority)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CONNECT %s: %v, want %s", tc.authority, err, tc.want)
		}
	}
}

func TestFerryClientToIstioServer(t *testing.T) {
	ca := certstest.NewCA(t)
	store := ca.Store(t, idClient, idServer)
	backend := echoBackend(t)

	srv := hbone.NewServer()
	srv.TLSConfig = store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return idServer, nil })
	srv.Protocols.SetHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		srv.Close()
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("istio server: %v", err)
		}
	}()

	cli, err := tunnel.NewClient(tunnel.ClientConfig{
		TLS: func(src, want certs.Identity) (*tls.Config, error) { return store.ClientConfig(src, want), nil },
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for i := range 3 { // three streams on one pooled connection
		// Early data reaches Istio's server before its 200 answers.
		early := fmt.Sprintf("stream %d, sent with the CONNECT; ", i)
		st, err := cli.Dial(t.Context(), tunnel.DialRequest{
			Src: idClient, Dst: idServer,
			SrcAddr:   netip.MustParseAddrPort("127.0.0.1:40000"),
			HBONEAddr: netip.MustParseAddrPort(ln.Addr().String()),
			Authority: backend,
			Early:     []byte(early),
		})
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Repeat("ferry to istio ", 10000)
		go func() {
			st.Write([]byte(msg))
			st.CloseWrite() // Istio's server passes the half-close to the echo
		}()
		got, err := io.ReadAll(st)
		st.Close()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != early+msg {
			t.Fatalf("echo: %d bytes, want %d", len(got), len(early)+len(msg))
		}
	}
	if n := cli.Conns(); n != 1 {
		t.Fatalf("pool holds %d connections, want 1", n)
	}
	// A server holding the wrong identity is refused by the client.
	_, err = cli.Dial(t.Context(), tunnel.DialRequest{
		Src: idClient, Dst: certs.Identity{TrustDomain: "cluster.local", Namespace: "b", ServiceAccount: "other"},
		HBONEAddr: netip.MustParseAddrPort(ln.Addr().String()), Authority: backend,
	})
	if err == nil {
		t.Fatal("client accepted a server with the wrong identity")
	}
}

func TestNodeHTTP2Client(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	ca := certstest.NewCA(t)
	store := ca.Store(t, idServer)
	backend := echoBackend(t)
	addr := ferryServer(t, store)

	dir := t.TempDir()
	leaf := ca.Leaf(t, idClient)
	var chain []byte
	for _, der := range leaf.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	key, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"cert.pem": chain,
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key}),
		"ca.pem":   ca.RootPEM(),
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, authority string
		status          int
	}{
		{"echo", backend.String(), 200},
		{"denied", denied.String(), 401},
		{"not local", "[::1]:80", 503},
		{"malformed authority", "example.com:80", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, node, "connect.js", strconv.Itoa(int(addr.Port())), tc.authority,
				filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "ca.pem"),
				"hello from node").CombinedOutput()
			if err != nil {
				t.Fatalf("node: %v\n%s", err, out)
			}
			var res struct {
				Status int    `json:"status"`
				Data   string `json:"data"`
				Error  string `json:"error"`
			}
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatalf("node output %q: %v", out, err)
			}
			if res.Status != tc.status {
				t.Fatalf("status %d, want %d (%s)", res.Status, tc.status, out)
			}
			if tc.status == 200 && res.Data != "hello from node" {
				t.Fatalf("echo %q (%s)", res.Data, out)
			}
		})
	}
}
