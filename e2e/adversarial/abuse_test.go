package adversarial

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"github.com/ferrymesh/ferry/internal/h2peer"
)

// TestTunnelAbuse sends CONNECTs the agent must refuse, each on its own
// stream of one connection, and checks every status and that the refusals
// are counted. The connection itself stays usable throughout.
func TestTunnelAbuse(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	closed := netip.AddrPortFrom(serverPod, freePort(t, serverPod)) // nothing listens

	pseudo := func(kv ...string) []hpack.HeaderField {
		var f []hpack.HeaderField
		for i := 0; i+1 < len(kv); i += 2 {
			f = append(f, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return f
	}
	srv := serverPod.String()
	type abuse struct {
		name   string
		fields []hpack.HeaderField
		want   int
	}
	cases := []abuse{
		{name: "pod on another node", fields: h2peer.ConnectFields(netip.AddrPortFrom(remotePod, echo.addr.Port()).String()), want: 400},
		{name: "other pod on this node", fields: h2peer.ConnectFields(netip.AddrPortFrom(clientPod, echo.addr.Port()).String()), want: 400},
		{name: "the node's loopback", fields: h2peer.ConnectFields(a.admin.String()), want: 400},
		{name: "admin port via pod IP", fields: h2peer.ConnectFields(netip.AddrPortFrom(serverPod, a.admin.Port()).String()), want: 503},
		{name: "nothing listening", fields: h2peer.ConnectFields(closed.String()), want: 503},
		{name: "GET", fields: pseudo(":method", "GET", ":scheme", "https", ":authority", echo.addr.String(), ":path", "/"), want: 400},
		{name: "POST", fields: pseudo(":method", "POST", ":scheme", "https", ":authority", echo.addr.String(), ":path", "/"), want: 400},
		{name: "lower-case connect", fields: pseudo(":method", "connect", ":authority", echo.addr.String()), want: 400},
		{name: "no authority", fields: pseudo(":method", "CONNECT"), want: 400},
		{name: "empty authority", fields: h2peer.ConnectFields(""), want: 400},
		{name: "hostname authority", fields: h2peer.ConnectFields("server.foo.svc.cluster.local:" + portOf(echo.addr)), want: 400},
		{name: "no port", fields: h2peer.ConnectFields(srv), want: 400},
		{name: "port 0", fields: h2peer.ConnectFields(srv + ":0"), want: 400},
		{name: "port out of range", fields: h2peer.ConnectFields(srv + ":70000"), want: 400},
		{name: "IPv6 authority", fields: h2peer.ConnectFields("[::1]:" + portOf(echo.addr)), want: 400},
		{name: "path in authority", fields: h2peer.ConnectFields(echo.addr.String() + "/x"), want: 400},
		{name: "userinfo in authority", fields: h2peer.ConnectFields("u@" + echo.addr.String()), want: 400},
		{name: "NUL in authority", fields: h2peer.ConnectFields(echo.addr.String() + "\x00"), want: 400},
		{name: "URL authority", fields: h2peer.ConnectFields("http://" + echo.addr.String()), want: 400},
		{name: "leading zeros", fields: h2peer.ConnectFields("127.000.010.002:" + portOf(echo.addr)), want: 400},
		// RFC 9113 §8.3: a repeated pseudo-header, or one after a regular
		// field, makes the request malformed (a proxy in front may read
		// another value than the one Ferry authorizes).
		{name: "two authorities", fields: append(h2peer.ConnectFields(echo.addr.String()), hpack.HeaderField{Name: ":authority", Value: closed.String()}), want: 400},
		{name: "two methods", fields: append(h2peer.ConnectFields(echo.addr.String()), hpack.HeaderField{Name: ":method", Value: "GET"}), want: 400},
		{name: "pseudo-header after a regular one", fields: append([]hpack.HeaderField{{Name: ":method", Value: "CONNECT"}, {Name: "x-a", Value: "b"}},
			hpack.HeaderField{Name: ":authority", Value: echo.addr.String()}), want: 400},
	}
	before := a.mustScrape()
	p, err := dialH2(t.Context(), remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	id := uint32(1)
	counted := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.WriteHeaders(id, false, tc.fields...); err != nil {
				t.Fatal(err)
			}
			st, err := p.Status(id, 10*time.Second)
			id += 2
			if err != nil {
				t.Fatalf("no status: %v", err)
			}
			if st != tc.want {
				t.Fatalf("status %d, want %d", st, tc.want)
			}
			counted++
		})
	}
	if n := echo.accepted.Load(); n != 0 {
		t.Errorf("the upstream accepted %d connections from refused CONNECTs", n)
	}
	// The connection still carries a good CONNECT.
	if err := p.Connect(id, echo.addr.String()); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(id, 10*time.Second); st != 200 {
		t.Fatalf("good CONNECT after the abuse: status %d, %v", st, err)
	}

	t.Run("counted", func(t *testing.T) {
		after := a.mustScrape()
		grew := func(name string) float64 { return after.Sum(name) - before.Sum(name) }
		rejected, decisions := grew("ferry_tunnel_rejected_total"), grew("ferry_authz_decisions_total")
		t.Logf("refused %d CONNECTs: ferry_tunnel_rejected_total +%v, ferry_authz_decisions_total +%v", counted, rejected, decisions)
		// Every refusal shows in ferry_tunnel_rejected_total, by reason.
		if rejected < float64(counted) {
			t.Errorf("ferry_tunnel_rejected_total grew by %v for %d refusals", rejected, counted)
		}
	})
}

func portOf(ap netip.AddrPort) string {
	return strconv.Itoa(int(ap.Port()))
}

// TestAdminAddrMustBeLoopback: the agent refuses to serve its admin
// endpoint (config_dump, certificates, pprof) on an address a pod could
// reach.
func TestAdminAddrMustBeLoopback(t *testing.T) {
	t.Parallel()
	a := newAgent(t, baseManifests)
	caCert, caKey := a.ca.WriteFiles(t, a.dir)
	for _, addr := range []string{"0.0.0.0:15000", ":15000", "[::]:15000", "198.18.0.1:15000"} {
		t.Run(addr, func(t *testing.T) {
			ctx := ctxTimeout(t, 20*time.Second)
			cmd := exec.CommandContext(ctx, ferryBinary(t), "agent", "--node", "a", "--manifests", filepath.Join(a.dir, "m"),
				"--ca-cert", caCert, "--ca-key", caKey, "--redirect", "none",
				"--hbone-addr", a.hbone.String(), "--outbound-addr", a.outbound.String(), "--inbound-addr", a.inbound.String(),
				"--metrics-addr", a.metrics.String(), "--readiness-addr", a.ready.String(), "--admin-addr", addr)
			out, err := cmd.CombinedOutput()
			if err == nil || ctx.Err() != nil {
				t.Fatalf("the agent ran with --admin-addr %s: %v\n%s", addr, err, out)
			}
			if !strings.Contains(string(out), "loopback") {
				t.Errorf("the refusal does not say why: %s", out)
			}
		})
	}
}
