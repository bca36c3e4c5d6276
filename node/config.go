package node

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"time"

	"github.com/ferrymesh/ferry/certs"
)

// Redirect modes.
const (
	// RedirectEBPF captures enrolled pods' TCP with the sk_lookup program and
	// policy routing; the agent runs in the node's network namespace.
	RedirectEBPF = "ebpf"
	// RedirectNone captures nothing: the original destination of an outbound
	// connection is its local address. For user-space tests on loopback.
	RedirectNone = "none"
)

// Where eBPF redirection captures (DESIGN §3, §3b).
const (
	// CaptureNode captures in the node's network namespace: for CNIs whose
	// pod traffic crosses the node's routing (bridge, ptp, flannel, Calico
	// in iptables mode).
	CaptureNode = "node"
	// CapturePod captures inside each enrolled pod's network namespace,
	// which the CNI plugin hands the agent: any CNI, including those that
	// bypass the node's routing (macvlan, ipvlan, Cilium, Calico eBPF). The
	// default: it works wherever node capture does, for about the same cost
	// (bench/README.md, capture section), and where node capture cannot.
	CapturePod = "pod"
)

// Config is the agent's configuration. The zero value of each field means the
// default given by RegisterFlags.
type Config struct {
	NodeName        string // this node's name, as pods' spec.nodeName says
	Manifests       string // local mode: a manifests file or directory
	Kube            bool   // read the inventory from the Kubernetes API instead
	Kubeconfig      string // with Kube: a kubeconfig file; "" means in-cluster
	CACert, CAKey   string // local CA root certificate and key (PEM files)
	CAAddr          string // Istio CA protocol endpoint (istiod or `ferry ca serve`), instead of a local CA
	CARoot          string // with CAAddr: the mesh's root certificate(s), PEM
	CATokenFile     string // with CAAddr: the bearer token (audience istio-ca), re-read per request
	XDSAddr         string // with Kube: istiod's workload xDS endpoint; the mesh then comes from istiod
	ClusterID       string // the cluster's ID in the mesh, sent to istiod
	TrustDomain     string
	ClusterDomain   string // Services' DNS suffix: NAME.NAMESPACE.svc.<ClusterDomain> in destination_service
	PostQuantum     bool   // offer the hybrid X25519MLKEM768 key exchange
	SystemNamespace string // Istio's root namespace: mesh-wide policies, the agent's own pods
	Redirect        string // RedirectEBPF or RedirectNone
	Capture         string // with RedirectEBPF: CaptureNode or CapturePod
	BPFPinDir       string
	// With CapturePod: the CNI plugin's socket, the directory recording
	// the captured pods for the next agent, and the address the node
	// sends the kubelet's probes from ("" exempts none).
	CNISocket, StateDir, ProbeSource string
	// With CapturePod: the node's CNI configuration and plugin directories
	// the agent keeps the ferry-cni plugin installed in ("": the operator
	// installs it).
	CNIConfDir, CNIBinDir string
	// With CapturePod: the container runtime's CRI endpoint, which says
	// where the pods that were running before the CNI plugin, or became
	// enrolled later, have their network namespaces ("": none).
	CRISocket string
	// With ProbeSource: the kubelet's cgroup (v2), whose connections to
	// captured pods leave from ProbeSource.
	ProbeCgroup string

	OutboundAddr, InboundAddr, HBONEAddr  string
	AdminAddr, MetricsAddr, ReadinessAddr string

	// DrainTimeout bounds how long SIGTERM waits for open connections.
	DrainTimeout time.Duration

	// Limits of the metrics and readiness servers, which listen on all
	// interfaces: any pod or host that can reach the node can connect.
	// HTTPReadTimeout bounds reading a request, headers included, so a
	// client that trickles its headers is closed (0 means 5 s).
	HTTPReadTimeout time.Duration
	// HTTPWriteTimeout bounds serving a request and writing its response
	// (0 means 10 s).
	HTTPWriteTimeout time.Duration
	// HTTPIdleTimeout bounds how long a keep-alive connection waits for its
	// next request (0 means 15 s).
	HTTPIdleTimeout time.Duration
	// HTTPMaxConns caps each server's open connections (0 means 128). At
	// the cap a new connection is served and the oldest one not in a
	// handler is closed, so scrapes and probes keep answering while others
	// hold connections.
	HTTPMaxConns int
}

// RegisterFlags registers the agent's flags, with their defaults, on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeName, "node", "", "this node's name (pods' spec.nodeName); default $NODE_NAME")
	fs.StringVar(&c.Manifests, "manifests", "", "local mode: file or directory of Namespace, Pod, AuthorizationPolicy and PeerAuthentication YAML, reloaded on change")
	fs.BoolVar(&c.Kube, "kube", false, "read pods, namespaces and Istio policies from the Kubernetes API (in-cluster, or --kubeconfig)")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "with --kube: kubeconfig file (default: in-cluster service account)")
	fs.StringVar(&c.CACert, "ca-cert", "", "local CA root certificate (PEM); see `ferry ca init`")
	fs.StringVar(&c.CAKey, "ca-key", "", "local CA root key (PEM)")
	fs.StringVar(&c.CAAddr, "ca-addr", "", "Istio CA endpoint host:port (istiod:15012 or `ferry ca serve`), instead of --ca-cert/--ca-key")
	fs.StringVar(&c.CARoot, "ca-root", "", "with --ca-addr: PEM file of the mesh's root certificate(s)")
	fs.StringVar(&c.CATokenFile, "ca-token-file", "/var/run/secrets/tokens/istio-token", "with --ca-addr: service-account token (audience istio-ca) sent to the CA")
	fs.StringVar(&c.XDSAddr, "xds-addr", "", "with --kube: istiod's xDS endpoint host:port (istiod.istio-system.svc:15012): pods, Services and policies come from istiod, only this node's pods and the namespaces from the API server; TLS verified with --ca-root, authenticated with --ca-token-file")
	fs.StringVar(&c.ClusterID, "cluster-id", "Kubernetes", "the cluster's ID in the mesh (istiod's CLUSTER_ID), sent to istiod and its CA")
	fs.StringVar(&c.TrustDomain, "trust-domain", certs.DefaultTrustDomain, "SPIFFE trust domain of the mesh")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain, as the kubelet's --cluster-domain: Services are named NAME.NAMESPACE.svc.DOMAIN in metrics and access logs")
	fs.BoolVar(&c.PostQuantum, "post-quantum", false, "offer and prefer the hybrid X25519MLKEM768 key exchange on HBONE (about a third more CPU per handshake; default X25519)")
	fs.StringVar(&c.SystemNamespace, "system-namespace", "istio-system", "root namespace: its policies apply mesh-wide")
	fs.StringVar(&c.Redirect, "redirect", RedirectEBPF, "traffic capture: ebpf (sk_lookup + policy routing) or none (user-space tests)")
	fs.StringVar(&c.Capture, "capture", CapturePod, "with --redirect ebpf, where enrolled pods' TCP is captured: pod (inside each pod's namespace, handed over by the ferry-cni plugin or found through --cri-socket; any CNI) or node (the node's network namespace; only CNIs whose pod traffic crosses the node's routing)")
	fs.StringVar(&c.CNISocket, "cni-socket", "/var/run/ferry/cni.sock", "with --capture pod: the unix socket the ferry-cni plugin reports new pods on")
	fs.StringVar(&c.StateDir, "state-dir", "/var/run/ferry", "with --capture pod: where the agent records the pods it captured, for the next agent and `ferry cleanup`")
	fs.StringVar(&c.ProbeSource, "probe-source", "", "with --capture pod: an address only the node uses (Istio uses 169.254.7.127), put on lo; the kubelet's connections to captured pods leave from it and reach them uncaptured (empty: probes are captured like any node traffic)")
	fs.StringVar(&c.CRISocket, "cri-socket", "unix:///run/containerd/containerd.sock", "with --capture pod: the container runtime's CRI endpoint, asked for the network namespaces of enrolled pods the CNI plugin did not report (running before it, or enrolled later); empty: only pods the plugin reports are captured")
	fs.StringVar(&c.ProbeCgroup, "probe-cgroup", "/sys/fs/cgroup/system.slice/kubelet.service", "with --probe-source: the kubelet's cgroup (v2); its TCP connections to captured pods leave from --probe-source, so health probes pass STRICT pods uncaptured while every other node process is captured")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", "", "with --capture pod: the node's CNI configuration directory (/etc/cni/net.d), where the agent chains the ferry-cni plugin after the network plugin and keeps it there; empty: installed by hand")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", "/opt/cni/bin", "with --capture pod and --cni-conf-dir: the node's CNI plugin directory, where the agent copies its binary as ferry-cni")
	fs.StringVar(&c.BPFPinDir, "bpf-pin-dir", "/sys/fs/bpf/ferry", "bpffs directory for Ferry's pinned maps and links (one per agent)")
	fs.StringVar(&c.OutboundAddr, "outbound-addr", "0.0.0.0:15001", "outbound capture listener")
	fs.StringVar(&c.InboundAddr, "inbound-addr", "0.0.0.0:15006", "inbound plaintext capture listener")
	fs.StringVar(&c.HBONEAddr, "hbone-addr", "0.0.0.0:15008", "inbound HBONE listener")
	fs.StringVar(&c.AdminAddr, "admin-addr", "127.0.0.1:15000", "admin endpoint (loopback only)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":15020", "Prometheus metrics endpoint")
	fs.StringVar(&c.ReadinessAddr, "readiness-addr", ":15021", "readiness endpoint (/healthz/ready)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, how long open connections may run before they are closed")
	fs.DurationVar(&c.HTTPReadTimeout, "http-read-timeout", defaultHTTPReadTimeout, "metrics and readiness servers: longest time to read a request, headers included")
	fs.DurationVar(&c.HTTPWriteTimeout, "http-write-timeout", defaultHTTPWriteTimeout, "metrics and readiness servers: longest time to serve a request")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", defaultHTTPIdleTimeout, "metrics and readiness servers: longest time a keep-alive connection waits for its next request")
	fs.IntVar(&c.HTTPMaxConns, "http-max-conns", defaultHTTPMaxConns, "metrics and readiness servers: most open connections each; at the cap the oldest connection not serving a request is closed")
}

// probeSource is ProbeSource parsed (validated), or the zero Addr.
func (c *Config) probeSource() netip.Addr {
	a, _ := netip.ParseAddr(c.ProbeSource)
	return a
}

// hbonePort is the port peers' HBONE listeners use, taken from HBONEAddr.
func (c *Config) hbonePort() uint16 {
	ap, err := netip.ParseAddrPort(c.HBONEAddr)
	if err != nil {
		return 15008
	}
	return ap.Port()
}

func (c *Config) validate() error {
	var errs []error
	if c.ClusterDomain == "" {
		c.ClusterDomain = "cluster.local" // the kubelet's default
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node (or $NODE_NAME) is required"))
	}
	if (c.Manifests == "") == !c.Kube {
		errs = append(errs, errors.New("exactly one of --manifests (local mode) and --kube is required"))
	}
	if c.XDSAddr != "" {
		if !c.Kube {
			errs = append(errs, errors.New("--xds-addr needs --kube (the node's own pods come from the API server)"))
		}
		if c.CARoot == "" {
			errs = append(errs, errors.New("--xds-addr needs --ca-root (the mesh's root certificate verifies istiod)"))
		}
	}
	switch {
	case c.CAAddr != "":
		if c.CARoot == "" {
			errs = append(errs, errors.New("--ca-addr needs --ca-root (the mesh's root certificate)"))
		}
		if c.CACert != "" || c.CAKey != "" {
			errs = append(errs, errors.New("--ca-addr and --ca-cert/--ca-key exclude each other"))
		}
	case c.CACert == "" || c.CAKey == "":
		errs = append(errs, errors.New("--ca-cert and --ca-key (a local CA: `ferry ca init --out DIR`) or --ca-addr and --ca-root are required"))
	}
	if c.Redirect != RedirectEBPF && c.Redirect != RedirectNone {
		errs = append(errs, fmt.Errorf("--redirect %q: want ebpf or none", c.Redirect))
	}
	if c.Capture == "" {
		c.Capture = CapturePod
	}
	if c.Capture != CaptureNode && c.Capture != CapturePod {
		errs = append(errs, fmt.Errorf("--capture %q: want node or pod", c.Capture))
	}
	if c.ProbeSource != "" {
		if a, err := netip.ParseAddr(c.ProbeSource); err != nil || !a.Is4() {
			errs = append(errs, fmt.Errorf("--probe-source %q: want an IPv4 address", c.ProbeSource))
		}
	}
	if c.ProbeSource != "" && c.ProbeCgroup == "" {
		errs = append(errs, errors.New("--probe-source needs --probe-cgroup (the kubelet's cgroup)"))
	}
	if c.Redirect == RedirectEBPF && c.Capture == CapturePod && (c.CNISocket == "" || c.StateDir == "") {
		errs = append(errs, errors.New("--capture pod needs --cni-socket and --state-dir"))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("--trust-domain must not be empty"))
	}
	if ap, err := netip.ParseAddrPort(c.AdminAddr); err != nil || !ap.Addr().IsLoopback() {
		errs = append(errs, fmt.Errorf("--admin-addr %q: must be a loopback address:port", c.AdminAddr))
	}
	for name, a := range map[string]string{"--outbound-addr": c.OutboundAddr, "--inbound-addr": c.InboundAddr, "--hbone-addr": c.HBONEAddr} {
		if _, err := netip.ParseAddrPort(a); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want ip:port", name, a))
		}
	}
	if c.HTTPReadTimeout < 0 || c.HTTPWriteTimeout < 0 || c.HTTPIdleTimeout < 0 || c.HTTPMaxConns < 0 {
		errs = append(errs, errors.New("--http-read-timeout, --http-write-timeout, --http-idle-timeout and --http-max-conns must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node: config: %w", err)
	}
	return nil
}
