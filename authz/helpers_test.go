package authz

import (
	"net/netip"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// load parses a multi-document manifest of AuthorizationPolicy and
// PeerAuthentication objects, as a user would write them.
func load(t testing.TB, manifest string) ([]AuthorizationPolicy, []PeerAuthentication) {
	t.Helper()
	var aps []AuthorizationPolicy
	var pas []PeerAuthentication
	var docs []string
	var cur []string
	for line := range strings.SplitSeq(manifest, "\n") {
		if strings.TrimSpace(line) == "---" {
			docs = append(docs, strings.Join(cur, "\n"))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	docs = append(docs, strings.Join(cur, "\n"))
	for _, doc := range docs {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("manifest: %v\n%s", err, doc)
		}
		switch head.Kind {
		case "AuthorizationPolicy":
			var ap struct {
				typeMeta
				AuthorizationPolicy
			}
			if err := yaml.UnmarshalStrict([]byte(doc), &ap); err != nil {
				t.Fatalf("AuthorizationPolicy: %v\n%s", err, doc)
			}
			aps = append(aps, ap.AuthorizationPolicy)
		case "PeerAuthentication":
			var pa struct {
				typeMeta
				PeerAuthentication
			}
			if err := yaml.UnmarshalStrict([]byte(doc), &pa); err != nil {
				t.Fatalf("PeerAuthentication: %v\n%s", err, doc)
			}
			pas = append(pas, pa.PeerAuthentication)
		default:
			t.Fatalf("manifest: unknown kind %q\n%s", head.Kind, doc)
		}
	}
	return aps, pas
}

// typeMeta lets UnmarshalStrict accept apiVersion and kind, which the authz
// types do not carry, while it still catches misspelt fields.
type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// Fixture addresses: clients in 10.1.0.0/16, workloads in 10.2.0.0/16.
const (
	clientIP   = "10.1.0.5"
	workloadIP = "10.2.0.7"
)

// rq builds a request from principal ("" = plaintext) to a workload in ns
// labelled app=app, on port.
func rq(principal, ns, app string, port uint16) Request {
	r := Request{
		SourcePrincipal: principal,
		SourceIP:        ip(clientIP),
		Namespace:       ns,
		DestinationIP:   ip(workloadIP),
		DestinationPort: port,
	}
	if app != "" {
		r.Labels = map[string]string{"app": app}
	}
	return r
}

func (r Request) from(s string) Request { r.SourceIP = ip(s); return r }
func (r Request) to(s string) Request   { r.DestinationIP = ip(s); return r }
func (r Request) label(k, v string) Request {
	l := map[string]string{k: v}
	for k2, v2 := range r.Labels {
		l[k2] = v2
	}
	r.Labels = l
	return r
}

func allowBy(p string) Decision {
	return Decision{Allow: true, Policy: p, Kind: KindAuthorizationPolicy}
}
func denyBy(p string) Decision { return Decision{Policy: p, Kind: KindAuthorizationPolicy} }
func strictBy(p string) Decision {
	return Decision{Policy: p, Kind: KindPeerAuthentication}
}

var (
	allowDefault = Decision{Allow: true, Reason: ReasonNoAllowPolicy}
	denyNoMatch  = Decision{Reason: ReasonNoAllowMatched}
)
