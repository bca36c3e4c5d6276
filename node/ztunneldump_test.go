package node

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unique"

	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/authz"
	"github.com/ferrymesh/ferry/certs"
	"github.com/ferrymesh/ferry/certs/certstest"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
	"github.com/ferrymesh/ferry/node/inventory"
	"github.com/ferrymesh/ferry/tunnel"
)

// istioctlFields are the fields istioctl decodes from ztunnel's
// /config_dump (istioctl/pkg/writer/ztunnel/configdump/api.go: ZtunnelDump
// and the types below it), by JSON name, with the JSON kind their Go type
// accepts: s string, n number, b bool, a array, o object. A field of
// another kind makes istioctl's json.Unmarshal fail.
var istioctlFields = map[string]map[string]string{
	"": {"workloads": "a", "services": "a", "policies": "a", "certificates": "a", "workloadState": "o"},
	"workloads[]": {"uid": "s", "workloadIps": "a", "waypoint": "o", "networkGateway": "o", "protocol": "s",
		"name": "s", "namespace": "s", "serviceAccount": "s", "workloadName": "s", "workloadType": "s",
		"canonicalName": "s", "canonicalRevision": "s", "clusterId": "s", "trustDomain": "s", "locality": "o",
		"node": "s", "network": "s", "status": "s", "hostname": "s", "capacity": "n", "applicationTunnel": "o",
		"authorizationPolicies": "a"},
	"workloads[].locality":      {"region": "s", "zone": "s", "subzone": "s"},
	"workloads[].waypoint":      {"destination": "s"},
	"workloads[].workloadIps[]": {"": "s"},
	"services[]": {"name": "s", "namespace": "s", "hostname": "s", "vips": "a", "cidrVips": "a", "ports": "o",
		"loadBalancer": "o", "waypoint": "o", "endpoints": "o", "subjectAltNames": "a", "ipFamilies": "s",
		"canonical": "b", "visibility": "s"},
	"services[].loadBalancer":     {"mode": "s", "routingPreferences": "a", "healthPolicy": "s"},
	"services[].waypoint":         {"destination": "s"},
	"services[].vips[]":           {"": "s"},
	"services[].ports":            {"*": "n"},
	"services[].endpoints":        {"*": "o"},
	"services[].endpoints.*":      {"workloadUid": "s", "service": "s", "address": "s", "port": "o"},
	"services[].endpoints.*.port": {"*": "n"},
	"policies[]":                  {"name": "s", "namespace": "s", "scope": "s", "action": "s", "rules": "a"},
	"policies[].rules[][][]": {"namespaces": "a", "notNamespaces": "a", "principals": "a", "notPrincipals": "a",
		"sourceIps": "a", "notSourceIps": "a", "destinationIps": "a", "notDestinationIps": "a",
		"destinationPorts": "a", "notDestinationPorts": "a", "serviceAccounts": "a", "notServiceAccounts": "a"},
	"policies[].rules[][][].namespaces[]":         stringMatch,
	"policies[].rules[][][].notNamespaces[]":      stringMatch,
	"policies[].rules[][][].principals[]":         stringMatch,
	"policies[].rules[][][].notPrincipals[]":      stringMatch,
	"policies[].rules[][][].serviceAccounts[]":    {"namespace": "s", "serviceAccount": "s"},
	"policies[].rules[][][].notServiceAccounts[]": {"namespace": "s", "serviceAccount": "s"},
	"certificates[]":                         {"identity": "s", "state": "s", "certChain": "a", "rootCerts": "a"},
	"certificates[].certChain[]":             {"pem": "s", "serialNumber": "s", "validFrom": "s", "expirationTime": "s"},
	"certificates[].rootCerts[]":             {"pem": "s", "serialNumber": "s", "validFrom": "s", "expirationTime": "s"},
	"workloadState":                          {"*": "o"},
	"workloadState.*":                        {"state": "s", "connections": "o", "info": "o"},
	"workloadState.*.connections":            {"inbound": "a", "outbound": "a"},
	"workloadState.*.connections.inbound[]":  {"src": "s", "originalDst": "s", "actualDst": "s", "protocol": "s"},
	"workloadState.*.connections.outbound[]": {"src": "s", "originalDst": "s", "actualDst": "s", "protocol": "s"},
	"workloadState.*.info":                   {"name": "s", "namespace": "s", "trustDomain": "s", "serviceAccount": "s"},
}

// stringMatch is istioctl's StringMatch: Presence is an any.
var stringMatch = map[string]string{"Exact": "s", "Suffix": "s", "Prefix": "s", "Presence": "any"}

// ztunnelOnlyFields are fields ztunnel serializes that istioctl does not
// read (src/state/workload.rs, service.rs, src/rbac.rs).
var ztunnelOnlyFields = map[string][]string{
	"workloads[]":            {"networkMode", "services"},
	"workloads[].waypoint":   {"hboneMtlsPort"},
	"services[].waypoint":    {"hboneMtlsPort"},
	"services[].endpoints.*": {"status"},
	"policies[]":             {"dryRun"},
}

// istioctlNeeds are the fields istioctl's tables print or join on.
var istioctlNeeds = map[string][]string{
	"workloads[]":                {"uid", "workloadIps", "protocol", "name", "namespace", "node", "status"},
	"services[]":                 {"name", "namespace", "hostname", "vips", "endpoints"},
	"services[].endpoints.*":     {"workloadUid"},
	"policies[]":                 {"name", "namespace", "scope", "action", "rules"},
	"certificates[]":             {"identity", "state", "certChain"},
	"certificates[].certChain[]": {"serialNumber", "validFrom", "expirationTime"},
}

// istioctlShape walks a decoded dump and returns every field istioctl would
// not decode, of the wrong kind, or missing where istioctl needs it.
func istioctlShape(v any, path string) []string {
	kind := func(v any) string {
		switch v.(type) {
		case string:
			return "s"
		case float64:
			return "n"
		case bool:
			return "b"
		case []any:
			return "a"
		case map[string]any:
			return "o"
		}
		return "null"
	}
	var errs []string
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			if want := istioctlFields[path+"[]"][""]; want != "" && kind(e) != want {
				errs = append(errs, fmt.Sprintf("%s[]: a %s, istioctl decodes a %s", path, kind(e), want))
			}
			errs = append(errs, istioctlShape(e, path+"[]")...)
		}
	case map[string]any:
		fs, known := istioctlFields[path]
		if !known {
			return nil
		}
		for _, need := range istioctlNeeds[path] {
			if _, ok := v[need]; !ok {
				errs = append(errs, fmt.Sprintf("%s: no %q, which istioctl prints", path, need))
			}
		}
		for k, e := range v {
			sub := strings.TrimPrefix(path+"."+k, ".")
			want, ok := fs[k]
			if !ok {
				want, ok = fs["*"]
				sub = path + ".*"
			}
			switch {
			case !ok && slices.Contains(ztunnelOnlyFields[path], k):
			case !ok:
				errs = append(errs, fmt.Sprintf("%s.%s: a field neither istioctl nor ztunnel has", path, k))
			case want != "any" && kind(e) != want:
				errs = append(errs, fmt.Sprintf("%s.%s: a %s, istioctl decodes a %s", path, k, kind(e), want))
			}
			errs = append(errs, istioctlShape(e, sub)...)
		}
	}
	return errs
}

func checkIstioctlShape(t *testing.T, doc any) {
	t.Helper()
	for _, e := range istioctlShape(doc, "") {
		t.Error(e)
	}
}

// TestIstioctlShapeCheck: the check catches what would break istioctl, for
// instance Ferry's own document, whose certChain is a PEM string.
func TestIstioctlShapeCheck(t *testing.T) {
	var doc any
	json.Unmarshal([]byte(`{"workloads": [{"uid": "u", "workloadIps": ["10.0.0.1"], "protocol": "HBONE", "name": "n",
		"namespace": "ns", "node": "a", "status": "Healthy", "capacity": "1", "colour": "red"}],
		"certificates": [{"identity": "spiffe://x", "state": "valid", "certChain": "-----BEGIN CERTIFICATE-----"}],
		"policies": [{"name": "p", "namespace": "ns", "scope": "Global", "action": "Deny", "rules": [[[{"principals": [{"Exact": 1}]}]]]}],
		"workloadState": {"u": {"state": "Up", "connections": {"inbound": [{"src": 1}]}}}}`), &doc)
	got := istioctlShape(doc, "")
	slices.Sort(got)
	want := []string{
		"certificates[].certChain: a s, istioctl decodes a a",
		"policies[].rules[][][].principals[].Exact: a n, istioctl decodes a s",
		"workloadState.*.connections.inbound[].src: a n, istioctl decodes a s",
		"workloads[].capacity: a s, istioctl decodes a n",
		"workloads[].colour: a field neither istioctl nor ztunnel has",
	}
	if !slices.Equal(got, want) {
		t.Errorf("problems =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// dumpState builds the agent state one snapshot compiles to, as apply does.
func dumpState(t *testing.T, snap *inventory.Snapshot) *state {
	t.Helper()
	v := newView(snap, "a", "cluster.local", "istio-system")
	e, diags := compilePolicies(authz.Config{RootNamespace: "istio-system", TrustDomain: "cluster.local"}, snap)
	for _, d := range diags {
		if d.Severity == authz.Error {
			t.Fatalf("policy error: %v", d)
		}
	}
	return &state{view: v, engine: e, diags: diags, at: time.Now()}
}

func crdSnapshot(t *testing.T) *inventory.Snapshot {
	t.Helper()
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	snap := &inventory.Snapshot{
		Namespaces: map[string]inventory.Namespace{"foo": {Name: "foo", Labels: ambient}, "bar": {Name: "bar"}},
		Pods: []*inventory.Pod{
			{Name: "server", Namespace: "foo", UID: "uid-server", ServiceAccount: "server", NodeName: "a",
				IP: netip.MustParseAddr("10.0.0.2"), IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")},
				Labels: map[string]string{"app": "server", "version": "v2"}},
			{Name: "client", Namespace: "foo", ServiceAccount: "client", NodeName: "a", IP: netip.MustParseAddr("10.0.0.3"),
				Labels: map[string]string{"app": "client"}},
			{Name: "legacy", Namespace: "bar", ServiceAccount: "default", NodeName: "b", IP: netip.MustParseAddr("10.0.1.2")},
		},
		Services: []inventory.Service{{
			Name: "server", Namespace: "foo", ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")},
			Ports:    []inventory.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 9090}, {Port: 8443, TargetPortName: "https"}},
			Selector: map[string]string{"app": "server"},
		}},
	}
	aps := `
metadata: {name: allow-client, namespace: foo}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/client]}}], to: [{operation: {ports: ["8080"]}}]}]
---
metadata: {name: l7, namespace: foo}
spec: {rules: [{to: [{operation: {methods: [GET]}}]}]}
---
metadata: {name: deny-evil, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
`
	for _, doc := range strings.Split(aps, "---") {
		var ap authz.AuthorizationPolicy
		if err := yaml.Unmarshal([]byte(doc), &ap); err != nil {
			t.Fatal(err)
		}
		snap.AuthorizationPolicies = append(snap.AuthorizationPolicies, ap)
	}
	for _, doc := range strings.Split(`
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
metadata: {name: server-ports, namespace: foo}
spec: {selector: {matchLabels: {app: server}}, portLevelMtls: {"9090": {mode: PERMISSIVE}}}
`, "---") {
		var pa authz.PeerAuthentication
		if err := yaml.Unmarshal([]byte(doc), &pa); err != nil {
			t.Fatal(err)
		}
		snap.PeerAuthentications = append(snap.PeerAuthentications, pa)
	}
	return snap
}

// certStatuses returns a valid certificate (leaf, intermediate, root), a
// pending and a failed identity.
func certStatuses(t *testing.T) ([]certs.CertStatus, *certstest.CA) {
	ca := certstest.NewCA(t, certstest.WithIntermediate())
	leaf := ca.Leaf(t, id("server"))
	var chain []byte
	for _, der := range leaf.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	chain = append(chain, certs.EncodeCertificatesPEM([]*x509.Certificate{ca.Root()})...)
	return []certs.CertStatus{
		{ID: id("client").String(), State: certs.CertPending},
		{ID: id("ghost").String(), State: certs.CertError, LastError: "CA unreachable"},
		{ID: id("server").String(), State: certs.CertValid, Serial: fmt.Sprintf("%x", leaf.Leaf.SerialNumber),
			NotBefore: leaf.Leaf.NotBefore, NotAfter: leaf.Leaf.NotAfter, ChainPEM: string(chain)},
	}, ca
}

func encodeDump(t *testing.T, d ztunnelDump) (string, any) {
	t.Helper()
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return string(b), doc
}

func TestZtunnelDumpCRD(t *testing.T) {
	cs, ca := certStatuses(t)
	in := ztunnelInput{
		cfg:   Config{ClusterID: "Kubernetes", ClusterDomain: "cluster.local", SystemNamespace: "istio-system", HBONEAddr: "0.0.0.0:15008"},
		state: dumpState(t, crdSnapshot(t)),
		certs: cs,
		conns: []tunnel.ConnInfo{
			{Direction: tunnel.DirInbound, Mode: "hbone", Src: netip.MustParseAddrPort("10.0.1.9:40000"), Dst: netip.MustParseAddrPort("10.0.0.2:8080")},
			{Direction: tunnel.DirOutbound, Mode: "hbone", Src: netip.MustParseAddrPort("10.0.0.2:41000"),
				Dst: netip.MustParseAddrPort("10.0.0.3:9000"), DialledDst: netip.MustParseAddrPort("10.96.0.20:90")},
		},
		captured: func(ip netip.Addr) bool { return ip != netip.MustParseAddr("10.0.0.3") },
	}
	js, doc := encodeDump(t, in.dump())
	checkIstioctlShape(t, doc)
	t.Log(js)

	var d ztunnelDump
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range d.Workloads {
		names = append(names, w.Namespace+"/"+w.Name+" "+w.Protocol+" "+w.UID)
	}
	if want := []string{"bar/legacy TCP Kubernetes//Pod/bar/legacy", "foo/client HBONE Kubernetes//Pod/foo/client",
		"foo/server HBONE Kubernetes//Pod/foo/server"}; !slices.Equal(names, want) {
		t.Errorf("workloads = %q, want %q", names, want)
	}
	server := d.Workloads[2]
	want := ztWorkload{
		UID: "Kubernetes//Pod/foo/server", WorkloadIPs: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")},
		Protocol: "HBONE", NetworkMode: "Standard", Name: "server", Namespace: "foo", TrustDomain: "cluster.local",
		ServiceAccount: "server", CanonicalName: "server", CanonicalRevision: "v2", Node: "a",
		AuthorizationPolicies: []string{"foo/allow-client", "foo/converted_peer_authentication_server-ports"},
		Status:                "Healthy", ClusterID: "Kubernetes", Services: []string{"foo/server.foo.svc.cluster.local"}, Capacity: 1,
	}
	if !reflect.DeepEqual(server, want) {
		t.Errorf("foo/server =\n%+v\nwant\n%+v", server, want)
	}
	for _, w := range d.Workloads[:2] {
		if !slices.Equal(w.AuthorizationPolicies, []string{"istio-system/istio_converted_static_strict"}) {
			t.Errorf("%s/%s: authorizationPolicies %q, want the static STRICT policy (mesh STRICT)", w.Namespace, w.Name, w.AuthorizationPolicies)
		}
	}

	if len(d.Services) != 1 {
		t.Fatalf("services = %+v", d.Services)
	}
	wantSvc := ztService{
		Name: "server", Namespace: "foo", Hostname: "server.foo.svc.cluster.local", VIPs: []string{"/10.96.0.10"},
		Ports: map[uint16]uint16{80: 8080, 9090: 9090, 8443: 0},
		Endpoints: map[string]ztEndpoint{"Kubernetes//Pod/foo/server": {WorkloadUID: "Kubernetes//Pod/foo/server",
			Port: map[uint16]uint16{80: 8080, 9090: 9090}, Status: "Healthy"}},
		SubjectAltNames: []string{},
	}
	if !reflect.DeepEqual(d.Services[0], wantSvc) {
		t.Errorf("service =\n%+v\nwant\n%+v", d.Services[0], wantSvc)
	}

	// Policies as enforced, in ztunnel's JSON.
	pj := map[string]string{}
	for _, p := range d.Policies {
		b, _ := json.Marshal(p)
		pj[p.Namespace+"/"+p.Name] = string(b)
	}
	wantPolicies := map[string]string{
		"foo/allow-client": `{"name":"allow-client","namespace":"foo","scope":"WorkloadSelector","action":"Allow","rules":[[[{"destinationPorts":[8080]}],[{"principals":[{"Exact":"cluster.local/ns/foo/sa/client"}]}]]],"dryRun":false}`,
		// The ALLOW rule with HTTP attributes is dropped: it allows nothing.
		"foo/l7": `{"name":"l7","namespace":"foo","scope":"Namespace","action":"Allow","rules":[],"dryRun":false}`,
		"foo/converted_peer_authentication_server-ports": `{"name":"converted_peer_authentication_server-ports","namespace":"foo","scope":"WorkloadSelector","action":"Deny","rules":[[[{"notDestinationPorts":[9090]}],[{"notPrincipals":[{"Presence":[]}]}]]],"dryRun":false}`,
		"istio-system/deny-evil":                         `{"name":"deny-evil","namespace":"istio-system","scope":"Global","action":"Deny","rules":[[[{"namespaces":[{"Exact":"evil"}]}]]],"dryRun":false}`,
		"istio-system/istio_converted_static_strict":     `{"name":"istio_converted_static_strict","namespace":"istio-system","scope":"WorkloadSelector","action":"Deny","rules":[[[{"notPrincipals":[{"Presence":[]}]}]]],"dryRun":false}`,
	}
	if !reflect.DeepEqual(pj, wantPolicies) {
		t.Errorf("policies =\n%s\nwant\n%s", strings.Join(slices.Sorted(maps.Values(pj)), "\n"), strings.Join(slices.Sorted(maps.Values(wantPolicies)), "\n"))
	}

	// Certificates: ztunnel's states, the chain without its root, serials
	// in decimal, PEM in base64.
	var states []string
	for _, c := range d.Certificates {
		states = append(states, c.Identity+" "+c.State)
	}
	if want := []string{
		"spiffe://cluster.local/ns/foo/sa/client Initializing",
		"spiffe://cluster.local/ns/foo/sa/ghost Unavailable: CA unreachable",
		"spiffe://cluster.local/ns/foo/sa/server Available",
	}; !slices.Equal(states, want) {
		t.Errorf("certificates = %q, want %q", states, want)
	}
	sc := d.Certificates[2]
	if len(sc.CertChain) != 2 || len(sc.RootCerts) != 1 {
		t.Fatalf("server chain: %d certificates and %d roots, want 2 (leaf, intermediate) and 1", len(sc.CertChain), len(sc.RootCerts))
	}
	leaf := parseChainPEM(cs[2].ChainPEM)[0]
	if sc.CertChain[0].SerialNumber != leaf.SerialNumber.String() ||
		sc.CertChain[0].ExpirationTime != leaf.NotAfter.UTC().Format(time.RFC3339) ||
		sc.CertChain[0].ValidFrom != leaf.NotBefore.UTC().Format(time.RFC3339) {
		t.Errorf("leaf = %+v, want serial %s", sc.CertChain[0], leaf.SerialNumber)
	}
	p, err := base64.StdEncoding.DecodeString(sc.RootCerts[0].PEM)
	if b, _ := pem.Decode(p); err != nil || b == nil || !bytes.Equal(b.Bytes, ca.Root().Raw) {
		t.Errorf("rootCerts[0].pem is not the root in base64 PEM: %q", sc.RootCerts[0].PEM)
	}

	// This node's enrolled pods and their connections.
	wantState := map[string]ztWorkloadState{
		"uid-server": {State: "Up", Info: ztWorkloadInfo{Name: "server", Namespace: "foo", TrustDomain: "cluster.local", ServiceAccount: "server"},
			Connections: ztConnections{
				Inbound:  []ztConnection{{Src: "10.0.1.9:40000", ActualDst: "10.0.0.2:8080", Protocol: "HBONE"}},
				Outbound: []ztConnection{{Src: "10.0.0.2:41000", OriginalDst: "10.96.0.20:90", ActualDst: "10.0.0.3:15008", Protocol: "HBONE"}},
			}},
		"Kubernetes//Pod/foo/client": {State: "Pending", Info: ztWorkloadInfo{Name: "client", Namespace: "foo", TrustDomain: "cluster.local", ServiceAccount: "client"},
			Connections: ztConnections{Inbound: []ztConnection{}, Outbound: []ztConnection{}}},
	}
	if !reflect.DeepEqual(d.WorkloadState, wantState) {
		t.Errorf("workloadState =\n%+v\nwant\n%+v", d.WorkloadState, wantState)
	}
}

// TestZtunnelDumpXDS: what istiod said wins: its UIDs, health, locality,
// Service membership, bindings and translated policies.
func TestZtunnelDumpXDS(t *testing.T) {
	snap := &inventory.Snapshot{
		Namespaces: map[string]inventory.Namespace{"foo": {Name: "foo", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}},
		Pods: []*inventory.Pod{{
			Name: "web-0", Namespace: "foo", ServiceAccount: "web", NodeName: "b", IP: netip.MustParseAddr("10.0.2.5"),
			Mesh: &inventory.MeshWorkload{UID: "Kubernetes//Pod/foo/web-0", HBONE: true, AuthorizationPolicies: inventory.MakeNames("foo/allow"),
				Services: inventory.MakeNames("foo/web.foo.svc.cluster.local"), Locality: unique.Make(inventory.Locality{Region: "r1", Zone: "z1"}), Capacity: 2,
				TargetPorts: map[string]map[uint16]uint16{"foo/web.foo.svc.cluster.local": {81: 9091}}},
		}},
		Services: []inventory.Service{{Name: "web", Namespace: "foo", Hostname: "web.foo.svc.cluster.local",
			ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.1")}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}, {Port: 81}},
			LoadBalancing: &inventory.LoadBalancing{RoutingPreference: []string{"ZONE", "NODE"}, Mode: "FAILOVER", AllowUnhealthy: true}}},
		TranslatedPolicies: []authz.TranslatedPolicy{
			{Name: "allow", Namespace: "foo", Scope: authz.TranslatedScopeWorkloadSelector, Action: "ALLOW", Groups: []authz.TranslatedGroup{{
				Rules: []authz.TranslatedRules{{Matches: []authz.TranslatedMatch{{
					SourceIPs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, NotPrincipals: []authz.StringMatch{{Kind: authz.StringMatchSuffix, Value: "/sa/bad"}},
				}}}},
			}}},
			{Name: "trial", Namespace: "foo", Scope: authz.TranslatedScopeNamespace, Action: "DENY", DryRun: true, Groups: []authz.TranslatedGroup{{}}},
		},
	}
	in := ztunnelInput{cfg: Config{ClusterID: "Kubernetes", SystemNamespace: "istio-system"}, state: dumpState(t, snap)}
	js, doc := encodeDump(t, in.dump())
	checkIstioctlShape(t, doc)
	var d ztunnelDump
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		t.Fatal(err)
	}
	if len(d.Workloads) != 1 {
		t.Fatalf("workloads = %+v", d.Workloads)
	}
	w := d.Workloads[0]
	if w.UID != "Kubernetes//Pod/foo/web-0" || w.Status != "Unhealthy" || w.Protocol != "HBONE" || w.Capacity != 2 ||
		!reflect.DeepEqual(w.Locality, &ztLocality{Region: "r1", Zone: "z1"}) ||
		!slices.Equal(w.AuthorizationPolicies, []string{"foo/allow"}) || !slices.Equal(w.Services, []string{"foo/web.foo.svc.cluster.local"}) {
		t.Errorf("workload = %+v", w)
	}
	// istiod's target ports as sent: 81 has none (0) but istiod resolved
	// it for the pod (a named port).
	wantSvc := ztService{
		Name: "web", Namespace: "foo", Hostname: "web.foo.svc.cluster.local", VIPs: []string{"/10.96.1.1"},
		Ports:           map[uint16]uint16{80: 8080, 81: 0},
		Endpoints:       map[string]ztEndpoint{w.UID: {WorkloadUID: w.UID, Port: map[uint16]uint16{80: 8080, 81: 9091}, Status: "Unhealthy"}},
		SubjectAltNames: []string{},
		LoadBalancer:    &ztLoadBalancer{RoutingPreferences: []string{"Zone", "Node"}, Mode: "Failover", HealthPolicy: "AllowAll"},
	}
	if len(d.Services) != 1 || !reflect.DeepEqual(d.Services[0], wantSvc) {
		t.Errorf("services = %+v, want %+v", d.Services, wantSvc)
	}
	var got []string
	for _, p := range d.Policies {
		b, _ := json.Marshal(p)
		got = append(got, string(b))
	}
	want := []string{
		`{"name":"allow","namespace":"foo","scope":"WorkloadSelector","action":"Allow","rules":[[[{"notPrincipals":[{"Suffix":"/sa/bad"}],"sourceIps":["10.0.0.0/16"]}]]],"dryRun":false}`,
		`{"name":"trial","namespace":"foo","scope":"Namespace","action":"Deny","rules":[[]],"dryRun":true}`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("policies =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(d.WorkloadState) != 0 {
		t.Errorf("workloadState = %+v, want none (no pod on this node)", d.WorkloadState)
	}
}

// waypointSnapshot is what istiod sends for a namespace with a waypoint:
// the waypoint's own pod and Service, a pod behind the waypoint by its
// Service's address, and a Service behind it by its hostname.
func waypointSnapshot() *inventory.Snapshot {
	ambient := map[string]string{"istio.io/dataplane-mode": "ambient"}
	byAddr := &inventory.Waypoint{Address: netip.MustParseAddr("10.96.1.9"), HBONEPort: 15008}
	byHost := &inventory.Waypoint{Namespace: "foo", Hostname: "waypoint.foo.svc.cluster.local", HBONEPort: 15008}
	mesh := func(name string, hbone bool, wp *inventory.Waypoint, svc string) *inventory.MeshWorkload {
		return &inventory.MeshWorkload{UID: "Kubernetes//Pod/foo/" + name, HBONE: hbone, Services: inventory.MakeNames(svc), Waypoint: wp, Healthy: true, Capacity: 1}
	}
	return &inventory.Snapshot{
		Namespaces: map[string]inventory.Namespace{"foo": {Name: "foo", Labels: ambient}},
		Pods: []*inventory.Pod{
			{Name: "waypoint-0", Namespace: "foo", ServiceAccount: "waypoint", NodeName: "b", IP: netip.MustParseAddr("10.0.2.9"),
				Labels: map[string]string{"istio.io/dataplane-mode": "none"}, Mesh: mesh("waypoint-0", false, nil, "foo/waypoint.foo.svc.cluster.local")},
			{Name: "web-0", Namespace: "foo", ServiceAccount: "web", NodeName: "b", IP: netip.MustParseAddr("10.0.2.5"),
				Mesh: mesh("web-0", true, byAddr, "foo/web.foo.svc.cluster.local")},
		},
		Services: []inventory.Service{
			{Name: "waypoint", Namespace: "foo", Hostname: "waypoint.foo.svc.cluster.local",
				ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.9")}, Ports: []inventory.ServicePort{{Port: 15008, TargetPort: 15008}}},
			{Name: "web", Namespace: "foo", Hostname: "web.foo.svc.cluster.local", Waypoint: byHost,
				ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.1.1")}, Ports: []inventory.ServicePort{{Port: 80, TargetPort: 8080}}},
		},
		TranslatedPolicies: []authz.TranslatedPolicy{},
	}
}

// TestZtunnelDumpWaypoints: istiod's waypoints are written as ztunnel
// serializes a GatewayAddress, a destination string istioctl joins with a
// Service's VIPs (by address) or its "namespace/hostname" (by hostname) to
// print the waypoint's name.
func TestZtunnelDumpWaypoints(t *testing.T) {
	in := ztunnelInput{cfg: Config{ClusterID: "Kubernetes", SystemNamespace: "istio-system"}, state: dumpState(t, waypointSnapshot())}
	js, doc := encodeDump(t, in.dump())
	checkIstioctlShape(t, doc)
	var d struct {
		Workloads []struct {
			Name     string          `json:"name"`
			Waypoint json.RawMessage `json:"waypoint"`
		} `json:"workloads"`
		Services []struct {
			Name      string          `json:"name"`
			Namespace string          `json:"namespace"`
			Hostname  string          `json:"hostname"`
			VIPs      []string        `json:"vips"`
			Waypoint  json.RawMessage `json:"waypoint"`
		} `json:"services"`
	}
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	compact := func(raw json.RawMessage) string {
		if raw == nil {
			return ""
		}
		return compactJSON(t, string(raw))
	}
	for _, w := range d.Workloads {
		got["workload "+w.Name] = compact(w.Waypoint)
	}
	for _, s := range d.Services {
		got["service "+s.Name] = compact(s.Waypoint)
	}
	want := map[string]string{
		"workload waypoint-0": "",
		"workload web-0":      `{"destination":"/10.96.1.9","hboneMtlsPort":15008}`,
		"service waypoint":    "",
		"service web":         `{"destination":"foo/waypoint.foo.svc.cluster.local","hboneMtlsPort":15008}`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("waypoints = %q, want %q", got, want)
	}
	// istioctl's join (configdump/workload.go waypointName): both name the
	// waypoint's Service.
	named := func(raw json.RawMessage) string {
		var g ztGatewayAddress
		json.Unmarshal(raw, &g)
		for _, s := range d.Services {
			if s.Namespace+"/"+s.Hostname == g.Destination || slices.Contains(s.VIPs, g.Destination) {
				return s.Name
			}
		}
		return "NA"
	}
	if n := named(d.Workloads[1].Waypoint); n != "waypoint" {
		t.Errorf("web-0's waypoint resolves to %q, want waypoint", n)
	}
	if n := named(d.Services[1].Waypoint); n != "waypoint" {
		t.Errorf("Service web's waypoint resolves to %q, want waypoint", n)
	}
}

// TestZtunnelDumpViewClauses: a clause holding a field-less match always
// holds (ztunnel's empty clause), and a clause without matches never does
// (one empty match, which ztunnel skips).
func TestZtunnelDumpViewClauses(t *testing.T) {
	got := viewPolicy(authz.PolicyView{Name: "p", Namespace: "foo", Scope: authz.TranslatedScopeNamespace, Action: "DENY",
		Rules: [][][]authz.TranslatedMatch{{{{DestinationPorts: []uint32{1}}, {}}, {}}}})
	b, _ := json.Marshal(got.Rules)
	if string(b) != `[[[],[{}]]]` {
		t.Errorf("rules = %s, want [[[],[{}]]]", b)
	}
}

func TestZtunnelDumpBeforeInventory(t *testing.T) {
	js, doc := encodeDump(t, (&ztunnelInput{}).dump())
	checkIstioctlShape(t, doc)
	if want := `{"workloads":[],"services":[],"policies":[],"certificates":[],"workloadState":{}}`; compactJSON(t, js) != want {
		t.Errorf("dump = %s, want %s", js, want)
	}
}

// TestAdminConfigDumpFormats: a plain /config_dump is ztunnel's document,
// ?format=ferry Ferry's own.
func TestAdminConfigDumpFormats(t *testing.T) {
	h := startAgent(t, baseManifests)
	base := "http://" + h.cfg.AdminAddr
	code, body := get(t, base+"/config_dump")
	if code != http.StatusOK {
		t.Fatalf("config_dump: %d %s", code, body)
	}
	var doc any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatal(err)
	}
	checkIstioctlShape(t, doc)
	var d ztunnelDump
	json.Unmarshal([]byte(body), &d)
	if len(d.Workloads) != 3 || len(d.Certificates) != 2 || d.Certificates[0].State != "Available" || len(d.WorkloadState) != 2 {
		t.Errorf("ztunnel dump: %d workloads, %d certificates (%+v), %d workload states", len(d.Workloads), len(d.Certificates), d.Certificates, len(d.WorkloadState))
	}
	if code, body := get(t, base+"/config_dump?format=ztunnel"); code != http.StatusOK || compactJSON(t, body) == "" {
		t.Errorf("format=ztunnel: %d", code)
	}
	var fd ConfigDump
	if code, body := get(t, base+FerryConfigDumpPath); code != http.StatusOK || json.Unmarshal([]byte(body), &fd) != nil || !fd.Ready || fd.Node != "a" {
		t.Errorf("%s: %d %.200s", FerryConfigDumpPath, code, body)
	}
	if code, _ := get(t, base+"/config_dump?format=envoy"); code != http.StatusBadRequest {
		t.Errorf("format=envoy: %d, want 400", code)
	}
}

// TestPrivilegedIstioctlReadsConfigDump runs istioctl, built from the
// istio.io/istio module pilot-discovery comes from, on a live agent's
// /config_dump and reads its tables.
func TestPrivilegedIstioctlReadsConfigDump(t *testing.T) {
	testutil.Privileged(t)
	bins := kubetest.BuildIstio(t)
	h := startAgent(t, baseManifests+`---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: foo}
spec:
  selector: {app: server}
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-remote, namespace: foo}
spec:
  selector: {matchLabels: {app: server}}
  rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/remote]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-evil, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: foo}
spec: {mtls: {mode: STRICT}}
`)
	// An open HBONE connection, for `ztunnel-config connections`.
	_, app := h.echoConn(t)

	code, body := get(t, "http://"+h.cfg.AdminAddr+"/config_dump")
	if code != http.StatusOK {
		t.Fatalf("config_dump: %d %s", code, body)
	}
	file := filepath.Join(t.TempDir(), "dump.json")
	if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	var d ztunnelDump
	json.Unmarshal([]byte(body), &d)
	if len(d.Certificates) != 2 || len(d.Certificates[0].CertChain) == 0 {
		t.Fatalf("certificates = %+v", d.Certificates)
	}
	istioctlOn := func(file string, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bins.Istioctl, append([]string{"ztunnel-config"}, append(args, "-f", file)...)...)
		// No cluster: -f needs none, and none may be reached.
		cmd.Env = append(os.Environ(), "KUBECONFIG="+filepath.Join(t.TempDir(), "none"), "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("istioctl ztunnel-config %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("$ istioctl ztunnel-config %s -f %s\n%s", strings.Join(args, " "), filepath.Base(file), out)
		return string(out)
	}
	istioctl := func(args ...string) string {
		t.Helper()
		return istioctlOn(file, args...)
	}
	// rows checks that out has a row matching each pattern (fields
	// separated by blanks).
	rows := func(cmd, out string, patterns ...string) {
		t.Helper()
		for _, p := range patterns {
			if !regexp.MustCompile(`(?m)^` + p + `\s*$`).MatchString(out) {
				t.Errorf("istioctl ztunnel-config %s: no row matching %q in\n%s", cmd, p, out)
			}
		}
	}
	rows("workloads", istioctl("workloads"),
		`NAMESPACE\s+POD NAME\s+ADDRESS\s+NODE\s+WAYPOINT\s+PROTOCOL`,
		`foo\s+client\s+127\.0\.10\.3\s+a\s+None\s+HBONE`,
		`foo\s+remote\s+127\.0\.20\.2\s+b\s+None\s+HBONE`,
		`foo\s+server\s+127\.0\.10\.2\s+a\s+None\s+HBONE`)
	rows("services", istioctl("services"),
		`NAMESPACE\s+SERVICE NAME\s+SERVICE VIP\s+WAYPOINT\s+ENDPOINTS`,
		`foo\s+server\s+10\.96\.0\.10\s+None\s+1/1`)
	rows("policies", istioctl("policies"),
		`NAMESPACE\s+POLICY NAME\s+ACTION\s+SCOPE`,
		`foo\s+allow-remote\s+Allow\s+WorkloadSelector`,
		`istio-system\s+deny-evil\s+Deny\s+Global`,
		`istio-system\s+istio_converted_static_strict\s+Deny\s+WorkloadSelector`)
	certsOut := istioctl("certificates")
	rows("certificates", certsOut,
		`CERTIFICATE NAME\s+TYPE\s+STATUS\s+VALID CERT\s+SERIAL NUMBER\s+NOT AFTER\s+NOT BEFORE`,
		`spiffe://cluster\.local/ns/foo/sa/client\s+Leaf\s+Available\s+true\s+[0-9a-f]+\s+\S+Z\s+\S+Z`,
		`spiffe://cluster\.local/ns/foo/sa/client\s+Root\s+Available\s+true\s+[0-9a-f]+\s+\S+Z\s+\S+Z`,
		`spiffe://cluster\.local/ns/foo/sa/server\s+Leaf\s+Available\s+true\s+[0-9a-f]+\s+\S+Z\s+\S+Z`)
	// The serial istioctl prints (hex) is the one Ferry's CLI prints.
	var fd ConfigDump
	_, fbody := get(t, "http://"+h.cfg.AdminAddr+FerryConfigDumpPath)
	json.Unmarshal([]byte(fbody), &fd)
	for _, c := range fd.Certificates {
		rows("certificates", certsOut, regexp.QuoteMeta(c.Identity)+`\s+Leaf\s+Available\s+true\s+`+c.Serial+`\s+\S+\s+\S+`)
	}
	rows("connections", istioctl("connections"),
		`WORKLOAD\s+DIRECTION\s+LOCAL\s+REMOTE\s+REMOTE TARGET\s+PROTOCOL`,
		// The peer's address is the HBONE connection's (loopback here).
		`server\.foo\s+Inbound\s+server\.foo:`+strconv.Itoa(int(app.Port()))+`\s+127\.0\.0\.1:\d+\s+HBONE`)

	// Waypoints come from istiod only (xDS mode): the dump of the state
	// TestZtunnelDumpWaypoints builds, a pod behind a waypoint by address
	// and a Service behind it by hostname, names the waypoint's Service.
	in := ztunnelInput{cfg: Config{ClusterID: "Kubernetes", SystemNamespace: "istio-system"}, state: dumpState(t, waypointSnapshot())}
	wb, err := json.Marshal(in.dump())
	if err != nil {
		t.Fatal(err)
	}
	wfile := filepath.Join(t.TempDir(), "waypoints.json")
	if err := os.WriteFile(wfile, wb, 0o644); err != nil {
		t.Fatal(err)
	}
	rows("workloads", istioctlOn(wfile, "workloads"),
		`foo\s+waypoint-0\s+10\.0\.2\.9\s+b\s+None\s+\S+`,
		`foo\s+web-0\s+10\.0\.2\.5\s+b\s+waypoint\s+HBONE`)
	rows("services", istioctlOn(wfile, "services"),
		`foo\s+waypoint\s+10\.96\.1\.9\s+None\s+1/1`,
		`foo\s+web\s+10\.96\.1\.1\s+waypoint\s+1/1`)
}

func compactJSON(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
