package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// peer is one way from the client pod to the sink: direct TCP, or a tunnel
// pair whose client side runs in node a and server side in node b.
type peer struct {
	name       string
	port       uint16 // the server pod's port the load generator dials
	perConnTLS bool   // one TLS handshake per application connection
	// bothSides: one process holds both sockets of each proxied connection
	// (its accepted and its dialled one), so it needs two descriptors per
	// connection.
	bothSides bool
	procs     []*proc
	// adminA and adminB, when set, are Go admin endpoints (127.0.0.1:port in
	// node a and node b, or in adminNS) serving /debug/pprof/.
	adminA, adminB string
	// adminNS, when set, are the namespaces adminA and adminB listen in
	// instead of node a's and node b's.
	adminNS [2]string
	// reach, when its ns is set, is where the load generator reaches the
	// peer instead of the server pod's address at port from node a: the
	// capture section's peers live on testbeds of their own.
	reach struct {
		ns  string
		dst netip.AddrPort
	}
	// agents are processes of the peer that a testbed started, not the
	// suite: their CPU counts as the peer's, and their exit fails it.
	agents []int
}

func (p *peer) tunnel() bool { return p.name != "direct" }

func (p *peer) pids() []int {
	out := slices.Clone(p.agents)
	for _, pr := range p.procs {
		out = append(out, pr.pid())
	}
	return out
}

// usage is the peer processes' CPU time and RSS now.
func (p *peer) usage() (time.Duration, uint64) { return treeUsage(p.pids()) }

func (p *peer) stop() {
	for _, pr := range p.procs {
		pr.stop()
	}
}

// checkAlive fails if a peer process has exited.
func (p *peer) checkAlive() error {
	for _, pr := range p.procs {
		if pr.exited() {
			return fmt.Errorf("%s: process %s exited:\n%s", p.name, pr.name, pr.tail())
		}
	}
	for _, pid := range p.agents {
		if syscall.Kill(pid, 0) != nil {
			return fmt.Errorf("%s: agent (pid %d) exited", p.name, pid)
		}
	}
	return nil
}

var heapAllocRE = regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)`)

// heap returns the Go heap in use (after a forced GC) of both sides, whose
// admin endpoints listen in nsA and nsB, or false when the peer has no admin
// endpoint.
func (p *peer) heap(ctx context.Context, nsA, nsB string) (uint64, bool, error) {
	if p.adminA == "" {
		return 0, false, nil
	}
	var sum uint64
	for _, side := range []struct{ ns, addr string }{{nsA, p.adminA}, {nsB, p.adminB}} {
		ap := netip.MustParseAddrPort(side.addr)
		c, err := dialFrom(ctx, side.ns, netip.Addr{}, ap)
		if err != nil {
			return 0, false, err
		}
		b, err := httpGetOn(c, "/debug/pprof/heap?debug=1&gc=1")
		if err != nil {
			return 0, false, err
		}
		m := heapAllocRE.FindSubmatch(b)
		if m == nil {
			return 0, false, errors.New("heap profile without HeapAlloc")
		}
		n, _ := strconv.ParseUint(string(m[1]), 10, 64)
		sum += n
	}
	return sum, true, nil
}

// httpGetOn sends one GET over an already connected socket.
func httpGetOn(c net.Conn, path string) ([]byte, error) {
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) { return c, nil }}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	resp, err := cl.Get("http://" + c.RemoteAddr().String() + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return b, err
}

// env is what starting a peer needs.
type env struct {
	topo  *topo
	dir   string // run directory: configs and logs
	pki   *pki
	ferry string // binary paths; "" when not available
	// baseline is a second ferry binary, run as peer ferry-baseline so that
	// a change is measured against its predecessor in the same run.
	baseline string
	self     string
	ghost    string
	istio    string
}

// peerSpec starts one peer kind.
type peerSpec struct {
	name       string
	port       uint16
	perConnTLS bool
	bothSides  bool
	available  func(e *env) error
	start      func(ctx context.Context, e *env, p *peer) error
}

func lookPath(name string) func(*env) error {
	return func(*env) error {
		_, err := exec.LookPath(name)
		return err
	}
}

func have(path *string) func(*env) error {
	return func(e *env) error {
		if *path == "" {
			return errors.New("not built")
		}
		_, err := os.Stat(*path)
		return err
	}
}

// serverPort is the port of a peer's server side (in node b): 1000 above
// its client side's.
func serverPort(p uint16) uint16 { return p + 1000 }

func addr(ip netip.Addr, port uint16) string { return netip.AddrPortFrom(ip, port).String() }

func peerSpecs(e *env) []peerSpec {
	return []peerSpec{
		{name: "direct", port: directPort, available: func(*env) error { return nil },
			start: func(context.Context, *env, *peer) error { return nil }},
		{name: "ferry", port: 20001, available: have(&e.ferry), start: startFerry},
		{name: "ferry-baseline", port: 20008, available: have(&e.baseline), start: startFerryBaseline},
		{name: "go-tls", bothSides: true, port: 20002, perConnTLS: true, available: have(&e.self), start: startGoTLS},
		{name: "ghostunnel", bothSides: true, port: 20003, perConnTLS: true, available: have(&e.ghost), start: startGhostunnel},
		{name: "haproxy", bothSides: true, port: 20004, perConnTLS: true, available: lookPath("haproxy"), start: startHAProxy},
		{name: "nginx", port: 20005, perConnTLS: true, available: nginxAvailable, start: startNginx},
		{name: "stunnel", bothSides: true, port: 20006, perConnTLS: true, available: lookPath("stunnel4"), start: startStunnel},
		{name: "istio-hbone", port: 20007, available: have(&e.istio), start: startIstioHBONE},
	}
}

// waitListening waits until something accepts connections at dst from ns.
// In node a, src must be the client pod's address: replies to the server
// pod's own address would leave through the veth.
func waitListening(ctx context.Context, p *peer, ns string, src netip.Addr, dst netip.AddrPort) error {
	return waitFor(ctx, 30*time.Second, func() error {
		if err := p.checkAlive(); err != nil {
			return err
		}
		c, err := dialFrom(ctx, ns, src, dst)
		if err != nil {
			return fmt.Errorf("%s: not listening on %s: %w", p.name, dst, err)
		}
		c.Close()
		return nil
	})
}

func (p *peer) run(e *env, ns, side string, argv ...string) error {
	pr, err := startProc(ns, e.dir, p.name+"-"+side, argv...)
	if err != nil {
		return err
	}
	p.procs = append(p.procs, pr)
	return nil
}

// ready waits for both sides: the server side listening in node b, the
// client side in node a.
func (p *peer) ready(ctx context.Context, e *env) error {
	if err := waitListening(ctx, p, e.topo.nsB, netip.Addr{}, netip.AddrPortFrom(serverPod, serverPort(p.port))); err != nil {
		return err
	}
	return waitListening(ctx, p, e.topo.nsA, clientPod, netip.AddrPortFrom(serverPod, p.port))
}

const ferryManifest = `apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec: {nodeName: a, serviceAccountName: client}
status: {podIP: %s}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {nodeName: b, serviceAccountName: server}
status: {podIP: %s}
`

// startFerry runs two agents with --redirect none: node a's outbound
// listener at the server pod's address (standing in for capture), node b's
// HBONE listener on port 15008 delivering to the sink.
func startFerry(ctx context.Context, e *env, p *peer) error {
	return startAgents(ctx, e, p, e.ferry, agentPorts{hbone: hbonePort, inbound: 15006, outboundB: 15001, admin: 15000})
}

// startFerryBaseline runs the baseline binary's agents like startFerry's,
// on ports of their own.
func startFerryBaseline(ctx context.Context, e *env, p *peer) error {
	return startAgents(ctx, e, p, e.baseline, agentPorts{hbone: baselineHBONEPort, inbound: 15016, outboundB: 15011, admin: 15040})
}

// baselineHBONEPort is the HBONE port of the ferry-baseline agents.
const baselineHBONEPort = 15010

// agentPorts are the ports one pair of agents listens on: HBONE and inbound
// on both nodes, node b's outbound, and admin (metrics and readiness on the
// next two ports) inside each node.
type agentPorts struct {
	hbone, inbound, outboundB, admin uint16
}

func startAgents(ctx context.Context, e *env, p *peer, bin string, ports agentPorts) error {
	m := filepath.Join(e.dir, "ferry-manifests")
	if err := os.MkdirAll(m, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(m, "cluster.yaml"), fmt.Appendf(nil, ferryManifest, clientPod, serverPod), 0o644); err != nil {
		return err
	}
	local := func(port uint16) string { return addr(netip.MustParseAddr("127.0.0.1"), port) }
	common := []string{bin, "agent", "--manifests", m, "--ca-cert", e.pki.caCert, "--ca-key", e.pki.caKey,
		"--redirect", "none", "--log-level", "warn", "--drain-timeout", "1s",
		"--admin-addr", local(ports.admin), "--metrics-addr", local(ports.admin + 20), "--readiness-addr", local(ports.admin + 21)}
	// The agents' HBONE port must be equal: a client dials the port of its own --hbone-addr.
	a := append(append([]string{}, common...), "--node", "a",
		"--outbound-addr", addr(serverPod, p.port), "--inbound-addr", addr(nodeAIP, ports.inbound), "--hbone-addr", addr(nodeAIP, ports.hbone))
	b := append(append([]string{}, common...), "--node", "b",
		"--outbound-addr", addr(nodeBIP, ports.outboundB), "--inbound-addr", addr(nodeBIP, ports.inbound), "--hbone-addr", addr(serverPod, ports.hbone))
	if err := p.run(e, e.topo.nsA, "a", a...); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsB, "b", b...); err != nil {
		return err
	}
	p.adminA, p.adminB = local(ports.admin), local(ports.admin)
	for _, ns := range []string{e.topo.nsA, e.topo.nsB} {
		err := waitFor(ctx, 60*time.Second, func() error {
			if err := p.checkAlive(); err != nil {
				return err
			}
			c, err := dialFrom(ctx, ns, netip.Addr{}, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ports.admin+21))
			if err != nil {
				return err
			}
			_, err = httpGetOn(c, "/healthz/ready")
			return err
		})
		if err != nil {
			return fmt.Errorf("%s agent not ready: %w", p.name, err)
		}
	}
	return nil
}

// pqHBONEPort is the HBONE port of the post-quantum agent startFerryPQ runs.
const pqHBONEPort = 15009

// startFerryPQ runs, in node b, a second Ferry agent offering
// X25519MLKEM768 (--post-quantum), on ports of its own, and waits for its
// HBONE listener. The caller stops it.
func startFerryPQ(ctx context.Context, e *env) (*proc, error) {
	m := filepath.Join(e.dir, "ferry-manifests")
	pr, err := startProc(e.topo.nsB, e.dir, "ferry-pq", e.ferry, "agent", "--manifests", m, "--ca-cert", e.pki.caCert, "--ca-key", e.pki.caKey,
		"--redirect", "none", "--log-level", "warn", "--drain-timeout", "1s", "--post-quantum", "--node", "b",
		"--admin-addr", "127.0.0.1:15030", "--metrics-addr", "127.0.0.1:15031", "--readiness-addr", "127.0.0.1:15032",
		"--outbound-addr", addr(nodeBIP, 15031), "--inbound-addr", addr(nodeBIP, 15036), "--hbone-addr", addr(serverPod, pqHBONEPort))
	if err != nil {
		return nil, err
	}
	if err := waitAccepting(ctx, 60*time.Second, pr, e.topo.nsB, netip.AddrPortFrom(serverPod, pqHBONEPort)); err != nil {
		return nil, fmt.Errorf("post-quantum agent: %w", err)
	}
	return pr, nil
}

// waitAccepting waits until dst, in namespace ns, accepts a connection,
// for at most timeout; pr exiting first fails it. On failure pr is stopped.
func waitAccepting(ctx context.Context, timeout time.Duration, pr *proc, ns string, dst netip.AddrPort) error {
	err := waitFor(ctx, timeout, func() error {
		if pr.exited() {
			return fmt.Errorf("exited: %s", pr.tail())
		}
		c, err := dialFrom(ctx, ns, netip.Addr{}, dst)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		pr.stop()
	}
	return err
}

func startGoTLS(ctx context.Context, e *env, p *peer) error {
	tls := []string{"-cert", e.pki.cert, "-key", e.pki.key, "-ca", e.pki.caCert}
	if err := p.run(e, e.topo.nsB, "server", append([]string{e.self, "gotls", "server",
		"-listen", addr(serverPod, serverPort(p.port)), "-target", addr(serverPod, p.port), "-debug-addr", "127.0.0.1:15100"}, tls...)...); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsA, "client", append([]string{e.self, "gotls", "client",
		"-listen", addr(serverPod, p.port), "-target", addr(serverPod, serverPort(p.port)), "-debug-addr", "127.0.0.1:15100"}, tls...)...); err != nil {
		return err
	}
	p.adminA, p.adminB = "127.0.0.1:15100", "127.0.0.1:15100"
	return p.ready(ctx, e)
}

func startGhostunnel(ctx context.Context, e *env, p *peer) error {
	common := []string{e.ghost, "--quiet=all", "--no-use-landlock"}
	if err := p.run(e, e.topo.nsB, "server", append(common, "server", "--listen", addr(serverPod, serverPort(p.port)),
		"--target", addr(serverPod, p.port), "--unsafe-target", "--keystore", e.pki.combined, "--cacert", e.pki.caCert, "--allow-all")...); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsA, "client", append(common, "client", "--listen", addr(serverPod, p.port), "--unsafe-listen",
		"--target", addr(serverPod, serverPort(p.port)), "--keystore", e.pki.combined, "--cacert", e.pki.caCert,
		"--override-server-name", "localhost")...); err != nil {
		return err
	}
	return p.ready(ctx, e)
}

func writeConf(e *env, name, text string) (string, error) {
	path := filepath.Join(e.dir, name)
	return path, os.WriteFile(path, []byte(text), 0o644)
}

// The OpenSSL peers are pinned to TLS 1.3 with TLS_AES_128_GCM_SHA256 (what
// Go picks here) and X25519, with the same certificates as the Go peers.
const haproxyConf = `global
	maxconn 9500
	ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256
	ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256
	ssl-default-bind-options ssl-min-ver TLSv1.3
	ssl-default-server-options ssl-min-ver TLSv1.3
	ssl-default-bind-curves X25519
defaults
	mode tcp
	timeout connect 10s
	timeout client 1h
	timeout server 1h
frontend in
	%s
	default_backend out
backend out
	%s
`

func startHAProxy(ctx context.Context, e *env, p *peer) error {
	server, err := writeConf(e, "haproxy-server.cfg", fmt.Sprintf(haproxyConf,
		fmt.Sprintf("bind %s ssl crt %s ca-file %s verify required", addr(serverPod, serverPort(p.port)), e.pki.combined, e.pki.caCert),
		"server s "+addr(serverPod, p.port)))
	if err != nil {
		return err
	}
	client, err := writeConf(e, "haproxy-client.cfg", fmt.Sprintf(haproxyConf,
		"bind "+addr(serverPod, p.port),
		fmt.Sprintf("server s %s ssl crt %s ca-file %s verify required verifyhost localhost", addr(serverPod, serverPort(p.port)), e.pki.combined, e.pki.caCert)))
	if err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsB, "server", "haproxy", "-db", "-f", server); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsA, "client", "haproxy", "-db", "-f", client); err != nil {
		return err
	}
	return p.ready(ctx, e)
}

const nginxModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

func nginxAvailable(*env) error {
	if _, err := exec.LookPath("nginx"); err != nil {
		return err
	}
	_, err := os.Stat(nginxModule)
	return err
}

const nginxConf = `load_module %s;
worker_processes 2;
worker_rlimit_nofile 100000;
pid %s;
error_log %s warn;
events { worker_connections 45000; }
stream {
	server {
		%s
	}
}
`

func startNginx(ctx context.Context, e *env, p *peer) error {
	side := func(name, body string) (string, error) {
		prefix := filepath.Join(e.dir, "nginx-"+name)
		if err := os.MkdirAll(prefix, 0o755); err != nil {
			return "", err
		}
		return writeConf(e, "nginx-"+name+".conf", fmt.Sprintf(nginxConf, nginxModule,
			filepath.Join(prefix, "nginx.pid"), filepath.Join(prefix, "error.log"), body))
	}
	server, err := side("server", fmt.Sprintf(`listen %s ssl;
		ssl_certificate %s; ssl_certificate_key %s;
		ssl_protocols TLSv1.3; ssl_ecdh_curve X25519;
		ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
		ssl_verify_client on; ssl_client_certificate %s;
		proxy_pass %s;`, addr(serverPod, serverPort(p.port)), e.pki.cert, e.pki.key, e.pki.caCert, addr(serverPod, p.port)))
	if err != nil {
		return err
	}
	client, err := side("client", fmt.Sprintf(`listen %s;
		proxy_ssl on; proxy_ssl_protocols TLSv1.3;
		proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
		proxy_ssl_conf_command Curves X25519;
		proxy_ssl_certificate %s; proxy_ssl_certificate_key %s;
		proxy_ssl_verify on; proxy_ssl_trusted_certificate %s; proxy_ssl_name localhost;
		proxy_ssl_session_reuse on;
		proxy_pass %s;`, addr(serverPod, p.port), e.pki.cert, e.pki.key, e.pki.caCert, addr(serverPod, serverPort(p.port))))
	if err != nil {
		return err
	}
	for _, s := range []struct{ ns, side, conf string }{{e.topo.nsB, "server", server}, {e.topo.nsA, "client", client}} {
		prefix := filepath.Join(e.dir, "nginx-"+s.side)
		if err := p.run(e, s.ns, s.side, "nginx", "-e", filepath.Join(prefix, "error.log"), "-p", prefix, "-c", s.conf, "-g", "daemon off;"); err != nil {
			return err
		}
	}
	return p.ready(ctx, e)
}

const stunnelConf = `foreground = yes
pid =
debug = 3
[svc]
client = %s
accept = %s
connect = %s
cert = %s
key = %s
CAfile = %s
verifyChain = yes
%s
sslVersionMin = TLSv1.3
ciphersuites = TLS_AES_128_GCM_SHA256
curves = X25519
`

func startStunnel(ctx context.Context, e *env, p *peer) error {
	server, err := writeConf(e, "stunnel-server.conf", fmt.Sprintf(stunnelConf, "no",
		addr(serverPod, serverPort(p.port)), addr(serverPod, p.port), e.pki.cert, e.pki.key, e.pki.caCert, ""))
	if err != nil {
		return err
	}
	client, err := writeConf(e, "stunnel-client.conf", fmt.Sprintf(stunnelConf, "yes",
		addr(serverPod, p.port), addr(serverPod, serverPort(p.port)), e.pki.cert, e.pki.key, e.pki.caCert, "checkHost = localhost"))
	if err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsB, "server", "stunnel4", server); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsA, "client", "stunnel4", client); err != nil {
		return err
	}
	return p.ready(ctx, e)
}

// startIstioHBONE runs bench/istiohbone's binary (Istio's pkg/hbone) as a
// client/server pair.
func startIstioHBONE(ctx context.Context, e *env, p *peer) error {
	tls := []string{"-cert", e.pki.cert, "-key", e.pki.key, "-ca", e.pki.caCert}
	if err := p.run(e, e.topo.nsB, "server", append([]string{e.istio, "server",
		"-listen", addr(serverPod, serverPort(p.port)), "-debug-addr", "127.0.0.1:15101"}, tls...)...); err != nil {
		return err
	}
	if err := p.run(e, e.topo.nsA, "client", append([]string{e.istio, "client",
		"-listen", addr(serverPod, p.port), "-proxy", addr(serverPod, serverPort(p.port)),
		"-target", addr(serverPod, p.port), "-debug-addr", "127.0.0.1:15101"}, tls...)...); err != nil {
		return err
	}
	p.adminA, p.adminB = "127.0.0.1:15101", "127.0.0.1:15101"
	return p.ready(ctx, e)
}
