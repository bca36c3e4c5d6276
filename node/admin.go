package node

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"
)

// FerryConfigDumpPath is where the admin endpoint serves ConfigDump; a
// plain /config_dump serves ztunnel's document, for istioctl (ztunneldump.go).
const FerryConfigDumpPath = "/config_dump?format=ferry"

// ConfigDump is the JSON document served on the admin endpoint's
// FerryConfigDumpPath. Its shape is kept stable for `ferry
// status|workloads|policies|certs`.
type ConfigDump struct {
	Version      string         `json:"version"`
	Node         string         `json:"node"`
	Ready        bool           `json:"ready"`
	Pending      []string       `json:"pending,omitempty"`
	Config       Config         `json:"config"`
	Workloads    []WorkloadDump `json:"workloads"`
	Services     []ServiceDump  `json:"services"`
	Policies     []PolicyDump   `json:"policies"`
	Certificates []CertDump     `json:"certificates"`
	// BPFPods are the addresses in the kernel's enrolled-pods map (eBPF mode).
	BPFPods []string `json:"bpfPods,omitempty"`
	// Errors lists rejected inventory objects and other problems an operator must fix.
	Errors []string `json:"errors,omitempty"`
}

// ServiceDump is one known Service.
type ServiceDump struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Addresses []string `json:"addresses,omitempty"`
	// Ports are "port→targetPort", or "port" when the pods' port is the
	// same.
	Ports     []string `json:"ports,omitempty"`
	Endpoints int      `json:"endpoints"`
	// Waypoint names the Service's waypoint, if istiod gave one.
	Waypoint string `json:"waypoint,omitempty"`
	// PickedByFerry and PickedByKubeProxy count this node's outbound
	// connections to the Service's address whose endpoint Ferry picked (it
	// saw the address) or kube-proxy had picked (its DNAT came first).
	PickedByFerry     uint64 `json:"pickedByFerry"`
	PickedByKubeProxy uint64 `json:"pickedByKubeProxy"`
}

// WorkloadDump is one known pod.
type WorkloadDump struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	Address        string `json:"address"`
	Node           string `json:"node"`
	ServiceAccount string `json:"serviceAccount"`
	Identity       string `json:"identity"`
	Protocol       string `json:"protocol"` // HBONE for enrolled pods, TCP otherwise
	Local          bool   `json:"local"`
	Captured       bool   `json:"captured"` // local, enrolled and redirection applied
	// Refused are the pod's addresses whose TCP the node refuses instead
	// of capturing: a local enrolled pod's IPv6 addresses (status.podIPs),
	// which Ferry cannot carry yet.
	Refused []string          `json:"refused,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// PolicyDump is one policy object as the agent compiled it.
type PolicyDump struct {
	Kind      string   `json:"kind"` // AuthorizationPolicy or PeerAuthentication
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Action    string   `json:"action,omitempty"` // ALLOW/DENY, or the mTLS mode
	Scope     string   `json:"scope"`            // Global, Namespace or WorkloadSelector
	Warnings  []string `json:"warnings,omitempty"`
	// Errors are what is wrong with the object as written; Enforced says
	// how it is enforced until it is fixed (fail-closed, or its last good
	// version).
	Errors   []string `json:"errors,omitempty"`
	Enforced string   `json:"enforced,omitempty"`
}

// CertDump is the certificate held for one identity.
type CertDump struct {
	Identity  string    `json:"identity"`
	State     string    `json:"state"`
	Serial    string    `json:"serialNumber,omitempty"`
	NotBefore time.Time `json:"validFrom,omitzero"`
	NotAfter  time.Time `json:"expirationTime,omitzero"`
	Error     string    `json:"error,omitempty"`
	ChainPEM  string    `json:"certChain,omitempty"`
}

// ConnectionDump is one open proxied connection.
type ConnectionDump struct {
	Direction   string    `json:"direction"` // outbound, inbound (HBONE) or inbound-plaintext
	Source      string    `json:"src"`
	Destination string    `json:"dst"`
	SourceNS    string    `json:"srcNamespace,omitempty"` // the source pod's namespace, if known
	DestNS      string    `json:"dstNamespace,omitempty"`
	SourceID    string    `json:"srcIdentity,omitempty"`
	DestID      string    `json:"dstIdentity,omitempty"`
	Protocol    string    `json:"protocol"` // HBONE or TCP
	BytesSent   int64     `json:"bytesSent"`
	BytesRecv   int64     `json:"bytesReceived"`
	Started     time.Time `json:"started"`
}

// adminSource is what the admin endpoint reports on.
type adminSource interface {
	configDump() ConfigDump
	ztunnelConfigDump() ztunnelDump
	connections() []ConnectionDump
}

// newAdminHandler returns the admin endpoint's handler: /config_dump
// (ztunnel's document, or Ferry's with ?format=ferry), /connections,
// /logging and /debug/pprof/. Every request must come from a loopback
// address, even if the listener is misconfigured.
func newAdminHandler(src adminSource, level *slog.LevelVar, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		switch f := r.URL.Query().Get("format"); f {
		case "", "ztunnel":
			writeJSON(w, src.ztunnelConfigDump())
		case "ferry":
			writeJSON(w, src.configDump())
		default:
			http.Error(w, fmt.Sprintf("unknown format %q: want ztunnel (the default) or ferry", f), http.StatusBadRequest)
		}
	})
	mux.HandleFunc("GET /connections", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, src.connections())
	})
	mux.HandleFunc("/logging", func(w http.ResponseWriter, r *http.Request) {
		if lv := r.URL.Query().Get("level"); lv != "" {
			if r.Method != http.MethodPost && r.Method != http.MethodPut {
				http.Error(w, "set the level with POST /logging?level=debug|info|warn|error", http.StatusMethodNotAllowed)
				return
			}
			var l slog.Level
			if err := l.UnmarshalText([]byte(normalizeLevel(lv))); err != nil {
				http.Error(w, fmt.Sprintf("unknown level %q: want debug, info, warn or error", lv), http.StatusBadRequest)
				return
			}
			if level != nil {
				old := level.Level()
				level.Set(l)
				log.Info("log level changed", "from", old.String(), "to", l.String())
			}
		}
		cur := "info"
		if level != nil {
			cur = strings.ToLower(level.Level().String())
		}
		fmt.Fprintf(w, "current log level is %s\n", cur)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ferry admin: /config_dump (ztunnel's, for istioctl) /config_dump?format=ferry /connections /logging /debug/pprof/")
	})
	return loopbackOnly(mux)
}

// normalizeLevel accepts istioctl's spellings (warning, critical, trace, off).
func normalizeLevel(s string) string {
	switch s = strings.ToLower(s); s {
	case "warning":
		return "warn"
	case "critical", "off":
		return "error"
	case "trace":
		return "debug"
	}
	return s
}

// loopbackOnly refuses requests whose peer is not a loopback address.
func loopbackOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		ip, perr := netip.ParseAddr(host)
		if err != nil || perr != nil || !ip.Unmap().IsLoopback() {
			http.Error(w, "admin endpoint is loopback only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
