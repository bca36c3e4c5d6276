package interop

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/internal/testutil"

	"istio.io/istio/pkg/hbone"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/node"
	"github.com/ferrymesh/ferry/node/inventory"
)

// staticSource publishes one snapshot.
type staticSource struct{ snap *inventory.Snapshot }

func (s staticSource) Run(ctx context.Context, publish func(*inventory.Snapshot)) error {
	publish(s.snap)
	<-ctx.Done()
	return nil
}

// received is what the waypoint saw of one CONNECT.
type received struct {
	authority string
	peer      string
}

// TestWaypointWithIstioHBONE runs a Ferry agent whose Service sits behind a
// waypoint, as istiod describes it, and Istio's own pkg/hbone server as the
// waypoint (no Envoy runs here): the client's connection to the Service
// address reaches the waypoint over mutual TLS with the client's identity
// and the Service address as the CONNECT authority (not translated to an
// endpoint), the agent refuses a waypoint that cannot prove the waypoint's
// identity, and the waypoint's reply flows back.
func TestWaypointWithIstioHBONE(t *testing.T) {
	var (
		clientPod   = netip.MustParseAddr("127.0.10.3")
		vip         = netip.MustParseAddrPort("127.0.30.10:80")
		waypointPod = netip.MustParseAddr("127.0.40.9")
		endpointPod = netip.MustParseAddr("127.0.20.2")
		idWaypoint  = certs.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "waypoint"}
		idClient    = certs.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "client"}
	)
	ca := certstest.NewCA(t)
	backend := echoBackend(t)

	// The waypoint: Istio's HBONE server with the waypoint's identity. It
	// records each CONNECT, then forwards it where an Envoy waypoint would
	// route the Service (here: the echo backend).
	var mu sync.Mutex
	var got []received
	serve := func(id certs.Identity) netip.AddrPort {
		store := ca.Store(t, id)
		srv := hbone.NewServer()
		inner := srv.Handler
		srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			peer := ""
			if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) > 0 {
				peer = r.TLS.PeerCertificates[0].URIs[0].String()
			}
			mu.Lock()
			got = append(got, received{authority: r.Host, peer: peer})
			mu.Unlock()
			r.Host = backend.String()
			inner.ServeHTTP(w, r)
		})
		srv.TLSConfig = store.ServerConfig(func(netip.Addr) (certs.Identity, error) { return id, nil })
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP2(true)
		ln, err := net.Listen("tcp", netip.AddrPortFrom(waypointPod, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.ServeTLS(ln, "", "") }()
		t.Cleanup(func() {
			srv.Close()
			if err := <-served; !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("waypoint: %v", err)
			}
		})
		return netip.MustParseAddrPort(ln.Addr().String())
	}
	waypoint := serve(idWaypoint)
	impostor := serve(certs.Identity{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "impostor"})

	// The mesh as istiod sends it: web.shop behind the waypoint (by the
	// waypoint pod's address), its endpoint on another node.
	snapshot := func(wp netip.AddrPort) *inventory.Snapshot {
		return &inventory.Snapshot{
			Namespaces: map[string]inventory.Namespace{"shop": {Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
			Pods: []*inventory.Pod{
				{Name: "client", Namespace: "shop", ServiceAccount: "client", NodeName: "a", IP: clientPod},
				{Name: "web-0", Namespace: "shop", ServiceAccount: "web", NodeName: "b", IP: endpointPod,
					Mesh: &inventory.MeshWorkload{HBONE: true, Healthy: true, Capacity: 1, Services: inventory.MakeNames("shop/web.shop.svc.cluster.local")}},
				{Name: "waypoint-0", Namespace: "shop", ServiceAccount: "waypoint", NodeName: "c", IP: wp.Addr(),
					Labels: map[string]string{"istio.io/dataplane-mode": "none"},
					Mesh:   &inventory.MeshWorkload{Healthy: true, Capacity: 1}},
			},
			Services: []inventory.Service{{Name: "web", Namespace: "shop", Hostname: "web.shop.svc.cluster.local",
				ClusterIPs: []netip.Addr{vip.Addr()}, Ports: []inventory.ServicePort{{Port: vip.Port(), TargetPort: 8080}},
				Waypoint: &inventory.Waypoint{Address: wp.Addr(), HBONEPort: wp.Port()}}},
			TranslatedPolicies: []authz.TranslatedPolicy{},
		}
	}
	dial := func(t *testing.T, wp netip.AddrPort) (net.Conn, error) {
		outbound := startAgent(t, ca, staticSource{snapshot(wp)}, vip)
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}, Timeout: 5 * time.Second}
		return d.DialContext(t.Context(), "tcp", outbound.String())
	}

	t.Run("through the waypoint", func(t *testing.T) {
		c, err := dial(t, waypoint)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := "to web.shop through its waypoint\n"
		fmt.Fprint(c, msg)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo through the waypoint: %q, %v", buf, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 1 || got[0].authority != vip.String() || got[0].peer != idClient.String() {
			t.Fatalf("the waypoint received %+v, want one CONNECT to %s from %s", got, vip, idClient)
		}
	})

	t.Run("a waypoint with another identity is refused", func(t *testing.T) {
		mu.Lock()
		got = nil
		mu.Unlock()
		c, err := dial(t, impostor)
		if err == nil {
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("the connection went through an impostor waypoint: n=%d err=%v", n, err)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(got) != 0 {
			t.Fatalf("the impostor received %+v", got)
		}
	})
}

// startAgent runs a Ferry agent for node a in user-space mode (no capture):
// its outbound listener is bound at the destination the client dials.
func startAgent(t *testing.T, ca *certstest.CA, src staticSource, dst netip.AddrPort) netip.AddrPort {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile := ca.WriteFiles(t, dir)
	lo := netip.MustParseAddr("127.0.0.1")
	free := func(ip netip.Addr) string {
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}
	control := testutil.ControlAddrs(t, 3)
	cfg := node.Config{
		NodeName: "a", Kube: true, CACert: certFile, CAKey: keyFile,
		TrustDomain: "cluster.local", SystemNamespace: "istio-system", Redirect: node.RedirectNone,
		OutboundAddr: dst.String(), InboundAddr: free(lo), HBONEAddr: free(lo),
		AdminAddr: control[0], MetricsAddr: control[1], ReadinessAddr: control[2], DrainTimeout: time.Second,
	}
	a, err := node.New(cfg, node.Deps{Log: slog.New(slog.DiscardHandler), Source: src, Version: "interop"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	for range 200 {
		if resp, err := http.Get("http://" + cfg.ReadinessAddr + "/healthz/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return dst
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("agent never ready")
	return netip.AddrPort{}
}
