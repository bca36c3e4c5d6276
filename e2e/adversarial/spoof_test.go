package adversarial

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"
)

// TestSpoofedSourceIPHasNoIdentity: a workload outside the mesh that forges
// an enrolled pod's source address reaches the plaintext inbound port with
// no identity, so a principal ALLOW policy denies it before any upstream
// dial. The real pod, over HBONE with its certificate, is allowed.
func TestSpoofedSourceIPHasNoIdentity(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	a.writeManifest("policy.yaml", onlyClientPolicy)
	echo := startEcho(t, serverPod)
	before := a.mustScrape()
	a.waitPolicy(t, echo) // the policy is in force: remote is denied over HBONE

	// The forged connection: source foo/client's address, plaintext.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: clientPod.AsSlice()}, Timeout: 10 * time.Second}
	// The agent accepts and resets at once; the reset may beat connect's
	// return, so a reset dial counts as refused too.
	if c, err := d.DialContext(t.Context(), "tcp4", a.inbound.String()); err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
		n, err := c.Read(make([]byte, 64))
		if n != 0 || err == nil {
			t.Fatalf("forged source got %d bytes back (err %v); want the connection refused", n, err)
		}
	} else if !isClosedErr(err) {
		t.Fatal(err)
	}
	after := a.mustScrape()
	denied := after.Sum("ferry_authz_decisions_total", "direction", "inbound-plaintext", "result", "deny") -
		before.Sum("ferry_authz_decisions_total", "direction", "inbound-plaintext", "result", "deny")
	if denied < 1 {
		t.Fatalf("plaintext deny decisions grew by %v, want ≥1", denied)
	}
	if slices.Contains(after.LabelValues("istio_tcp_connections_opened_total", "source_principal"), fooID("client").String()) {
		t.Fatal("a connection was labelled with foo/client's principal, which nobody proved")
	}

	// The real foo/client, with its certificate, is allowed.
	p, err := dialH2(t.Context(), clientPod, a.hbone, a.peerTLS(a.leaf(fooID("client"))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Connect(1, echo.addr.String())
	if st, err := p.Status(1, 10*time.Second); st != 200 {
		t.Fatalf("foo/client over HBONE: status %d, %v; want 200", st, err)
	}
}

// waitPolicy waits until the only-client policy denies foo/remote (the
// agent reloads manifests asynchronously).
func (a *agent) waitPolicy(t testing.TB, echo *echoServer) {
	t.Helper()
	var st int
	for range 100 {
		p, err := dialH2(t.Context(), remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
		if err != nil {
			t.Fatal(err)
		}
		p.Connect(1, echo.addr.String())
		st, _ = p.Status(1, 10*time.Second)
		p.Close()
		if st == 401 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("policy never took effect: status %d", st)
}

// forgedHeaders claim foo/client's address, namespace, workload and a trace,
// in every header a proxy might be tempted to trust, some twice.
var forgedHeaders = []hpack.HeaderField{
	{Name: "forwarded", Value: `for="127.0.10.3:4444";host=server.foo.svc.cluster.local`},
	{Name: "forwarded", Value: `for=127.0.10.3`},
	{Name: "x-forwarded-for", Value: "127.0.10.3"},
	{Name: "x-forwarded-network", Value: "other-network"},
	{Name: "baggage", Value: "k8s.namespace.name=foo,k8s.pod.name=client,k8s.deployment.name=client,service.name=client,k8s.cluster.name=Kubernetes"},
	{Name: "baggage", Value: "k8s.namespace.name=kube-system"},
	{Name: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
	{Name: "x-spiffe-id", Value: "spiffe://cluster.local/ns/foo/sa/client"},
	{Name: "x-forwarded-client-cert", Value: "URI=spiffe://cluster.local/ns/foo/sa/client"},
}

// TestForgedHeadersChangeNothing: CONNECTs from foo/remote carrying headers
// that claim to be foo/client are decided, counted and listed as
// foo/remote: denied under a client-only policy, and when allowed, labelled
// and listed with remote's principal and address.
func TestForgedHeadersChangeNothing(t *testing.T) {
	t.Parallel()
	a := startAgent(t, baseManifests)
	echo := startEcho(t, serverPod)
	a.writeManifest("policy.yaml", onlyClientPolicy)
	a.waitPolicy(t, echo)

	p, err := dialH2(t.Context(), remotePod, a.hbone, a.peerTLS(a.leaf(fooID("remote"))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Connect(1, echo.addr.String(), forgedHeaders...); err != nil {
		t.Fatal(err)
	}
	if st, err := p.Status(1, 10*time.Second); st != 401 {
		t.Fatalf("forged CONNECT under a client-only policy: status %d, %v; want 401", st, err)
	}

	// Allow everyone: the connection goes through and is attributed to remote.
	a.writeManifest("policy.yaml", "")
	var st int
	for id := uint32(3); id < 200; id += 2 {
		if err := p.Connect(id, echo.addr.String(), forgedHeaders...); err != nil {
			t.Fatal(err)
		}
		if st, _ = p.Status(id, 10*time.Second); st == 200 {
			if err := p.RoundTrip(id, []byte("hello"), 10*time.Second); err != nil {
				t.Fatal(err)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st != 200 {
		t.Fatalf("after allowing everyone: status %d", st)
	}

	var conns []struct {
		Src   string `json:"src"`
		SrcID string `json:"srcIdentity"`
	}
	resp, err := http.Get("http://" + a.admin.String() + "/connections")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err := json.Unmarshal(body, &conns); err != nil || len(conns) != 1 {
		t.Fatalf("/connections: %v: %s", err, body)
	}
	if conns[0].SrcID != fooID("remote").String() || !strings.HasPrefix(conns[0].Src, remotePod.String()+":") {
		t.Fatalf("/connections lists %+v; want foo/remote's identity and address", conns[0])
	}

	m := a.mustScrape()
	for _, metric := range []string{"istio_tcp_connections_opened_total", "istio_tcp_received_bytes_total"} {
		principals := m.LabelValues(metric, "source_principal")
		if !slices.Equal(principals, []string{fooID("remote").String()}) {
			t.Errorf("%s source_principal values %q; want only foo/remote's", metric, principals)
		}
		for _, label := range []string{"source_workload", "source_workload_namespace", "source_app"} {
			if v := m.LabelValues(metric, label); slices.Contains(v, "client") || slices.Contains(v, "kube-system") {
				t.Errorf("%s %s values %q: taken from forged headers", metric, label, v)
			}
		}
	}
}
