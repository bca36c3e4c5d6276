package certs_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/ferrymesh/ferry/certs"
)

// An agent with a local CA: create a root once, load it, keep certificates
// for the node's service accounts, and serve HBONE with the Store's hooks.
func Example() {
	dir, _ := os.MkdirTemp("", "ferry-ca")
	defer os.RemoveAll(dir)
	if err := certs.InitCA(dir); err != nil { // ferry ca init --out DIR
		panic(err)
	}
	ca, err := certs.LoadLocalCA(filepath.Join(dir, certs.RootCertFile), filepath.Join(dir, certs.RootKeyFile))
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	store, err := certs.NewStore(certs.StoreConfig{TrustDomain: "cluster.local", Roots: roots}, ca, slog.New(slog.DiscardHandler))
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go store.Run(ctx)

	web := certs.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	store.SetIdentities([]certs.Identity{web}) // the service accounts with a pod on this node
	if err := store.WaitReady(ctx, web); err != nil {
		panic(err)
	}

	// The HBONE server presents the certificate of the pod it was dialled at.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	srv := tls.NewListener(ln, store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return web, nil }))
	_ = srv
	// An HBONE client from web to a server that must be web too.
	_ = store.ClientConfig(web, web)
}
