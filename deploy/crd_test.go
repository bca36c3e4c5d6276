package deploy_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/ferrymesh/ferry/deploy"
	"github.com/ferrymesh/ferry/internal/kubetest"
	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestCRDVersionsAgree checks that every served version of each CRD has the
// same schema (v1beta1 is written out twice, not generated) and that nothing
// under spec is kept without being declared.
func TestCRDVersionsAgree(t *testing.T) {
	for _, f := range deploy.CRDFiles() {
		b, err := fs.ReadFile(deploy.FS(), f)
		if err != nil {
			t.Fatal(err)
		}
		var crd struct {
			Spec struct {
				Versions []struct {
					Name    string         `json:"name"`
					Served  bool           `json:"served"`
					Storage bool           `json:"storage"`
					Schema  map[string]any `json:"schema"`
				} `json:"versions"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal(b, &crd); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var names []string
		for _, v := range crd.Spec.Versions {
			names = append(names, v.Name)
			if !v.Served {
				t.Errorf("%s: version %s is not served", f, v.Name)
			}
			if v.Storage != (v.Name == "v1") {
				t.Errorf("%s: version %s: storage = %v, want only v1 stored", f, v.Name, v.Storage)
			}
			if !reflect.DeepEqual(v.Schema, crd.Spec.Versions[0].Schema) {
				t.Errorf("%s: the schema of %s differs from %s's", f, v.Name, crd.Spec.Versions[0].Name)
			}
			spec, _, _ := unstructured.NestedMap(v.Schema, "openAPIV3Schema", "properties", "spec")
			if spec == nil {
				t.Errorf("%s: %s has no spec schema", f, v.Name)
			}
			if p := findKey(spec, "x-kubernetes-preserve-unknown-fields", "spec"); p != "" {
				t.Errorf("%s: %s: %s keeps unknown fields", f, v.Name, p)
			}
		}
		if !slices.Equal(names, []string{"v1", "v1beta1"}) {
			t.Errorf("%s: versions %q, want v1 and v1beta1", f, names)
		}
	}
}

// findKey returns the path of the first map under v (at path) holding key.
func findKey(v any, key, path string) string {
	switch v := v.(type) {
	case map[string]any:
		if _, ok := v[key]; ok {
			return path
		}
		for k, c := range v {
			if p := findKey(c, key, path+"."+k); p != "" {
				return p
			}
		}
	case []any:
		for i, c := range v {
			if p := findKey(c, key, fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
	}
	return ""
}

// What the API server does with a mistaken AuthorizationPolicy or
// PeerAuthentication, given deploy/crds (kube-apiserver 1.37.1, as
// TestPrivilegedCRDValidation shows it):
//
//   - Rejected however it is written: values the schema constrains (action
//     ALOW, mode STRCT, spiffe:// principals, CIDR 198.18.0.0/33, ports
//     0/70000/http, port keys outside 1-65535, unknown when keys), empty
//     entries (source {}, from [{}], principals []), and the combinations
//     Istio's webhook refuses (selector beside targetRefs, provider without
//     CUSTOM, DENY without rules, serviceAccounts beside principals).
//   - An unknown or wrongly cased field (principal:, ipblocks:, rule:,
//     portLevelMTLS:) is rejected by server-side apply whatever the
//     fieldValidation, and by create or update with Strict (kubectl's
//     default). With Warn (the server's default, so any client that sends
//     nothing) it is dropped with a warning; with Ignore (kubectl
//     --validate=false) dropped silently.
//   - A dropped field reaches the agent as if never written. Where that
//     leaves an entry empty (principal: alone in a source, mdoe: in mtls, a
//     DENY policy's rule:), the object is rejected after all. Where valid
//     fields remain it is stored without the field, and the agent cannot
//     tell: principal: beside namespaces: allows the whole namespace,
//     portLevelMTLS: leaves the port at the workload's mode, actoin: DENY
//     makes an ALLOW policy, and a rule whose only field is misspelt (form:)
//     becomes {}, which matches every request.
//   - Not checked, so the agent must refuse them: condition values against
//     their key (source.ip 198.18.0.0/33, destination.port http), and IPv4
//     addresses with leading zeros (198.018.0.1), which the API server's
//     ipv4 and cidr formats accept.

// writeMode is one way a client can write an object: create (POST, as
// kubectl create and client-side kubectl apply do) or server-side apply, with
// a fieldValidation directive telling the API server what to do with unknown
// fields.
type writeMode struct {
	name      string
	apply     bool   // server-side apply instead of create
	directive string // the fieldValidation query parameter
	warns     bool   // whether the server warns about each dropped field
}

var writeModes = []writeMode{
	{"strict", false, metav1.FieldValidationStrict, false},    // kubectl create/apply (--validate=true, the default)
	{"warn", false, metav1.FieldValidationWarn, true},         // kubectl --validate=warn
	{"unset", false, "", true},                                // client-go and anything else that sends nothing
	{"ignore", false, metav1.FieldValidationIgnore, false},    // kubectl --validate=false
	{"ssa-strict", true, metav1.FieldValidationStrict, false}, // kubectl apply --server-side
	{"ssa-unset", true, "", false},                            // client-go Apply, controllers, GitOps tools
	{"ssa-ignore", true, metav1.FieldValidationIgnore, false}, // kubectl apply --server-side --validate=false
}

// crdOutcome is what the API server does with one object.
type crdOutcome struct {
	// errs, when set, means the object is rejected with an error holding
	// each of these (the field it names and why).
	errs []string
	// pruned lists the fields dropped from an accepted object, as the
	// warnings name them.
	pruned []string
	// spec is an accepted object's spec as stored, which is what the agent's
	// informer receives; empty means as sent.
	spec string
}

func rejected(errs ...string) crdOutcome { return crdOutcome{errs: errs} }

// ssaOutcome is the outcome of a server-side apply, given that of a strict
// create: server-side apply refuses unknown fields itself, with another
// message.
func ssaOutcome(strict crdOutcome) crdOutcome {
	var errs []string
	for _, e := range strict.errs {
		if f, ok := strings.CutPrefix(e, unknownField); ok {
			e = "." + strings.TrimSuffix(f, `"`) + ": field not declared in schema"
		}
		errs = append(errs, e)
	}
	return crdOutcome{errs: errs, pruned: strict.pruned, spec: strict.spec}
}

// storedWithout is an object accepted with fields dropped: spec is what is
// left.
func storedWithout(spec string, pruned ...string) crdOutcome {
	return crdOutcome{pruned: pruned, spec: spec}
}

var storedAsSent = crdOutcome{}

const unknownField = `unknown field "`

var badPorts = []string{
	`spec.rules[0].to[0].operation.ports[0]: Invalid value: "0"`,
	`spec.rules[0].to[0].operation.ports[1]: Invalid value: "70000"`,
	`spec.rules[0].to[0].operation.ports[2]: Invalid value: "http"`,
	`should match`,
}

// crdCases are the mistakes the schema is written against, each written
// in every writeMode: strict is the outcome of a create with Strict, lenient
// with Warn, unset and Ignore. Server-side apply has strict's outcome,
// whatever the directive, except that an unknown field is reported as "field
// not declared in schema" (ssaOutcome).
var crdCases = []struct {
	name, kind, spec string
	strict, lenient  crdOutcome
}{
	{
		name: "valid-allow", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
action: ALLOW
rules:
- from:
  - source:
      principals: [cluster.local/ns/app/sa/client, "*/sa/admin", "*"]
      notNamespaces: [kube-system]
      ipBlocks: [198.18.0.1, 198.18.0.0/15, "2001:2::/48"]
      notIpBlocks: [198.18.0.7]
      requestPrincipals: [example.com/sub]
  - source:
      serviceAccounts: [app/client, client2]
      remoteIpBlocks: [198.19.0.0/16]
      trustDomains: [cluster.local]
  to:
  - operation:
      ports: ["8080", "65535", "1"]
      notPorts: ["9090"]
      hosts: [web.example.com]
      methods: [GET]
      paths: [/api/*]
  when:
  - key: source.ip
    values: [198.18.0.1]
  - key: request.headers[x-tenant]
    notValues: [other]
- {}
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		name: "valid-custom", kind: "AuthorizationPolicy",
		spec: `
targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]
action: CUSTOM
provider: {name: ext-authz}
rules: [{to: [{operation: {paths: [/admin/*]}}]}]
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		// Istio's allow-nothing idiom.
		name: "valid-allow-nothing", kind: "AuthorizationPolicy",
		spec:   `{}`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		name: "valid-deny", kind: "AuthorizationPolicy",
		spec: `
action: DENY
rules:
- from: [{source: {notNamespaces: [app], notPrincipals: ["*/sa/admin"]}}]
  to: [{operation: {notPorts: ["15021"], notHosts: [internal], notMethods: [DELETE], notPaths: [/healthz]}}]
  when:
  - {key: "request.auth.claims[iss]", values: ["https://accounts.example.com"]}
  - {key: destination.port, notValues: ["8080"]}
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		name: "principal-alone", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
rules: [{from: [{source: {principal: [cluster.local/ns/app/sa/client]}}]}]
`,
		strict:  rejected(unknownField + `spec.rules[0].from[0].source.principal"`),
		lenient: rejected(`spec.rules[0].from[0].source: Invalid value`, `at least 1 properties`),
	},
	{
		name: "principal-beside-namespaces", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
rules: [{from: [{source: {principal: [cluster.local/ns/app/sa/client], namespaces: [app]}}]}]
`,
		strict: rejected(unknownField + `spec.rules[0].from[0].source.principal"`),
		lenient: storedWithout(`
selector: {matchLabels: {app: web}}
rules: [{from: [{source: {namespaces: [app]}}]}]
`, "spec.rules[0].from[0].source.principal"),
	},
	{
		name: "spiffe-principal", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
rules: [{from: [{source: {principals: ["spiffe://cluster.local/ns/app/sa/client"]}}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source.principals[0]`, `without spiffe://`),
		lenient: rejected(`spec.rules[0].from[0].source.principals[0]`, `without spiffe://`),
	},
	{
		name: "cidr-33", kind: "AuthorizationPolicy",
		spec: `
action: DENY
rules: [{from: [{source: {notIpBlocks: [198.18.0.0/33]}}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source.notIpBlocks[0]: Invalid value: "198.18.0.0/33"`, `must be of type cidr`),
		lenient: rejected(`spec.rules[0].from[0].source.notIpBlocks[0]: Invalid value: "198.18.0.0/33"`, `must be of type cidr`),
	},
	{
		name: "unknown-when-key", kind: "AuthorizationPolicy",
		spec: `
rules: [{when: [{key: source.ipp, values: [198.18.0.1]}]}]
`,
		strict:  rejected(`spec.rules[0].when[0].key: Invalid value: "source.ipp"`, `should match`),
		lenient: rejected(`spec.rules[0].when[0].key: Invalid value: "source.ipp"`, `should match`),
	},
	{
		name: "ipblocks-case", kind: "AuthorizationPolicy",
		spec: `
rules: [{from: [{source: {ipBlocks: [198.19.3.0/24], ipblocks: [0.0.0.0/0]}}]}]
`,
		strict: rejected(unknownField + `spec.rules[0].from[0].source.ipblocks"`),
		lenient: storedWithout(`
rules: [{from: [{source: {ipBlocks: [198.19.3.0/24]}}]}]
`, "spec.rules[0].from[0].source.ipblocks"),
	},
	{
		name: "rule-at-spec", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
action: ALLOW
rule: [{from: [{source: {namespaces: [app]}}]}]
`,
		strict: rejected(unknownField + `spec.rule"`),
		// An ALLOW policy without rules: every request to app=web is denied.
		lenient: storedWithout(`
selector: {matchLabels: {app: web}}
action: ALLOW
`, "spec.rule"),
	},
	{
		name: "rule-at-spec-deny", kind: "AuthorizationPolicy",
		spec: `
action: DENY
rule: [{from: [{source: {namespaces: [attacker]}}]}]
`,
		strict:  rejected(unknownField + `spec.rule"`),
		lenient: rejected(`a DENY policy needs rules`),
	},
	{
		name: "action-alow", kind: "AuthorizationPolicy",
		spec: `
action: ALOW
rules: [{}]
`,
		strict:  rejected(`spec.action: Unsupported value: "ALOW"`),
		lenient: rejected(`spec.action: Unsupported value: "ALOW"`),
	},
	{
		name: "action-misspelt", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
actoin: DENY
rules: [{from: [{source: {namespaces: [attacker]}}]}]
`,
		strict: rejected(unknownField + `spec.actoin"`),
		// Without action, an ALLOW policy: only the attacker's namespace
		// reaches app=web.
		lenient: storedWithout(`
selector: {matchLabels: {app: web}}
rules: [{from: [{source: {namespaces: [attacker]}}]}]
`, "spec.actoin"),
	},
	{
		name: "rule-all-misspelt", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
rules: [{form: [{source: {namespaces: [app]}}]}]
`,
		strict: rejected(unknownField + `spec.rules[0].form"`),
		// An empty rule matches every request: Istio's allow-all idiom.
		lenient: storedWithout(`
selector: {matchLabels: {app: web}}
rules: [{}]
`, "spec.rules[0].form"),
	},
	{
		name: "ports", kind: "AuthorizationPolicy",
		spec: `
rules: [{to: [{operation: {ports: ["0", "70000", "http"]}}]}]
`,
		strict:  rejected(badPorts...),
		lenient: rejected(badPorts...),
	},
	{
		name: "empty-source", kind: "AuthorizationPolicy",
		spec: `
rules: [{from: [{source: {}}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source: Invalid value`, `at least 1 properties`),
		lenient: rejected(`spec.rules[0].from[0].source: Invalid value`, `at least 1 properties`),
	},
	{
		name: "from-without-source", kind: "AuthorizationPolicy",
		spec: `
rules: [{from: [{}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source: Required value`),
		lenient: rejected(`spec.rules[0].from[0].source: Required value`),
	},
	{
		name: "empty-list", kind: "AuthorizationPolicy",
		spec: `
rules: [{from: [{source: {principals: []}}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source.principals: Invalid value`, `at least 1 items`),
		lenient: rejected(`spec.rules[0].from[0].source.principals: Invalid value`, `at least 1 items`),
	},
	{
		name: "when-without-values", kind: "AuthorizationPolicy",
		spec: `
rules: [{when: [{key: source.ip}]}]
`,
		strict:  rejected(`spec.rules[0].when[0]`, `set values or notValues`),
		lenient: rejected(`spec.rules[0].when[0]`, `set values or notValues`),
	},
	{
		name: "serviceaccounts-with-principals", kind: "AuthorizationPolicy",
		spec: `
rules: [{from: [{source: {serviceAccounts: [client], principals: [cluster.local/ns/app/sa/client]}}]}]
`,
		strict:  rejected(`spec.rules[0].from[0].source`, `cannot be combined with principals or namespaces`),
		lenient: rejected(`spec.rules[0].from[0].source`, `cannot be combined with principals or namespaces`),
	},
	{
		name: "selector-and-targetrefs", kind: "AuthorizationPolicy",
		spec: `
selector: {matchLabels: {app: web}}
targetRefs: [{kind: Service, group: "", name: web}]
rules: [{}]
`,
		strict:  rejected(`only one of selector, targetRef or targetRefs`),
		lenient: rejected(`only one of selector, targetRef or targetRefs`),
	},
	{
		name: "provider-without-custom", kind: "AuthorizationPolicy",
		spec: `
provider: {name: ext-authz}
rules: [{}]
`,
		strict:  rejected(`provider is required with action CUSTOM and allowed only with it`),
		lenient: rejected(`provider is required with action CUSTOM and allowed only with it`),
	},
	{
		name: "deny-without-rules", kind: "AuthorizationPolicy",
		spec: `
action: DENY
`,
		strict:  rejected(`a DENY policy needs rules`),
		lenient: rejected(`a DENY policy needs rules`),
	},
	{
		// The schema does not check condition values against their key
		// (CEL over every value of every condition exceeds the API server's
		// cost budget): the agent sees them and must refuse them.
		name: "when-values-unchecked", kind: "AuthorizationPolicy",
		spec: `
action: DENY
rules: [{when: [{key: source.ip, values: [198.18.0.0/33]}, {key: destination.port, values: [http]}]}]
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		// The ipv4 and cidr formats tolerate leading zeros (Go before 1.17
		// did); net/netip, and so the agent, refuses them.
		name: "ip-leading-zeros", kind: "AuthorizationPolicy",
		spec: `
action: DENY
rules: [{from: [{source: {ipBlocks: [198.018.0.1, 198.018.0.0/16]}}]}]
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		name: "valid-pa", kind: "PeerAuthentication",
		spec: `
selector: {matchLabels: {app: web}}
mtls: {mode: STRICT}
portLevelMtls:
  "8080": {mode: PERMISSIVE}
  "65535": {mode: DISABLE}
`,
		strict: storedAsSent, lenient: storedAsSent,
	},
	{
		name: "mode-strct", kind: "PeerAuthentication",
		spec: `
mtls: {mode: STRCT}
`,
		strict:  rejected(`spec.mtls.mode: Unsupported value: "STRCT"`),
		lenient: rejected(`spec.mtls.mode: Unsupported value: "STRCT"`),
	},
	{
		name: "portlevelmtls-case", kind: "PeerAuthentication",
		spec: `
selector: {matchLabels: {app: web}}
mtls: {mode: PERMISSIVE}
portLevelMTLS:
  "8080": {mode: STRICT}
`,
		strict: rejected(unknownField + `spec.portLevelMTLS"`),
		// Port 8080 is left PERMISSIVE, like the rest of the workload.
		lenient: storedWithout(`
selector: {matchLabels: {app: web}}
mtls: {mode: PERMISSIVE}
`, "spec.portLevelMTLS"),
	},
	{
		name: "portlevelmtls-case-alone", kind: "PeerAuthentication",
		spec: `
selector: {matchLabels: {app: web}}
portLevelMTLS:
  "8080": {mode: STRICT}
`,
		strict:  rejected(unknownField + `spec.portLevelMTLS"`),
		lenient: rejected(`set mtls or portLevelMtls`),
	},
	{
		name: "mode-key-misspelt", kind: "PeerAuthentication",
		spec: `
mtls: {mdoe: STRICT}
`,
		strict:  rejected(unknownField + `spec.mtls.mdoe"`),
		lenient: rejected(`spec.mtls.mode: Required value`),
	},
	{
		name: "port-keys", kind: "PeerAuthentication",
		spec: `
selector: {matchLabels: {app: web}}
portLevelMtls:
  "0": {mode: STRICT}
  "70000": {mode: STRICT}
  "http": {mode: STRICT}
`,
		strict:  rejected(`spec.portLevelMtls`, `keys are port numbers from 1 to 65535`),
		lenient: rejected(`spec.portLevelMtls`, `keys are port numbers from 1 to 65535`),
	},
	{
		name: "portlevelmtls-without-selector", kind: "PeerAuthentication",
		spec: `
mtls: {mode: STRICT}
portLevelMtls:
  "8080": {mode: PERMISSIVE}
`,
		strict:  rejected(`portLevelMtls requires a selector`),
		lenient: rejected(`portLevelMtls requires a selector`),
	},
}

// warnings collects the warnings the API server sends.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(code int, agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// TestPrivilegedCRDValidation creates each of crdCases against a real
// kube-apiserver serving deploy/crds, once per fieldValidation, and checks
// whether it is rejected (and the error names the field) or stored, and
// then exactly which spec the API server returns: what Ferry's informer
// would receive.
func TestPrivilegedCRDValidation(t *testing.T) {
	testutil.Privileged(t)
	c := kubetest.Start(t)
	ctx := t.Context()
	w := &warnings{}
	cfg := rest.CopyConfig(c.Config)
	cfg.WarningHandler = w
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	gvr := map[string]schema.GroupVersionResource{
		"AuthorizationPolicy": {Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"},
		"PeerAuthentication":  {Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"},
	}
	for _, tc := range crdCases {
		var sent map[string]any
		if err := yaml.Unmarshal([]byte(tc.spec), &sent); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, fv := range writeModes {
			t.Run(tc.name+"/"+fv.name, func(t *testing.T) {
				want := tc.lenient
				switch {
				case fv.apply:
					want = ssaOutcome(tc.strict)
				case fv.directive == metav1.FieldValidationStrict:
					want = tc.strict
				}
				ri := dyn.Resource(gvr[tc.kind]).Namespace("default")
				name := tc.name + "-" + fv.name
				obj := &unstructured.Unstructured{Object: map[string]any{
					"apiVersion": "security.istio.io/v1",
					"kind":       tc.kind,
					"metadata":   map[string]any{"name": name, "namespace": "default"},
					"spec":       sent,
				}}
				w.take()
				var err error
				if fv.apply {
					var body []byte
					if body, err = json.Marshal(obj.Object); err != nil {
						t.Fatal(err)
					}
					_, err = ri.Patch(ctx, name, types.ApplyPatchType, body, metav1.PatchOptions{
						FieldManager: "crd-test", FieldValidation: fv.directive,
					})
				} else {
					_, err = ri.Create(ctx, obj, metav1.CreateOptions{FieldValidation: fv.directive})
				}
				warns := w.take()
				if len(want.errs) > 0 {
					if err == nil {
						t.Fatalf("accepted, want rejected with %q", want.errs)
					}
					for _, e := range want.errs {
						if !strings.Contains(err.Error(), e) {
							t.Errorf("error %q does not hold %q", err, e)
						}
					}
					t.Logf("rejected: %v", err)
					if _, err := ri.Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
						t.Errorf("after the rejection, get = %v, want not found", err)
					}
					return
				}
				if err != nil {
					t.Fatalf("rejected (%v), want stored", err)
				}
				for _, p := range want.pruned {
					msg := unknownField + p + `"`
					if got := slices.ContainsFunc(warns, func(s string) bool { return strings.Contains(s, msg) }); got != fv.warns {
						t.Errorf("warnings %q: holding %s = %v, want %v", warns, msg, got, fv.warns)
					}
				}
				if len(want.pruned) == 0 && len(warns) > 0 {
					t.Errorf("warnings %q for an object stored as sent", warns)
				}
				wantSpec := sent
				if want.spec != "" {
					wantSpec = nil
					if err := yaml.Unmarshal([]byte(want.spec), &wantSpec); err != nil {
						t.Fatal(err)
					}
				}
				got, err := ri.Get(ctx, name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				gotJSON, _ := json.Marshal(got.Object["spec"])
				wantJSON, _ := json.Marshal(wantSpec)
				if string(gotJSON) != string(wantJSON) {
					t.Errorf("stored spec\n%s\nwant\n%s", gotJSON, wantJSON)
				}
				t.Logf("stored: %s (warnings %q)", gotJSON, warns)
			})
		}
	}
}
