package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/authz"
)

// DecodeAuthorizationPolicy reads a security.istio.io AuthorizationPolicy from
// its JSON form (the whole object). Field names are exact and case-sensitive;
// an unknown, duplicate or mistyped field is not an error here but a Problem
// on the returned object, which authz.Compile then reads fail-closed. The
// error is for an object that cannot be identified at all (not a JSON object,
// no metadata.name): the caller must skip it, loudly.
func DecodeAuthorizationPolicy(data []byte) (authz.AuthorizationPolicy, error) {
	var ap authz.AuthorizationPolicy
	d, spec, err := decodeObject(data, &ap.Metadata)
	if err != nil {
		return ap, err
	}
	if spec != nil {
		d.authorizationPolicySpec(spec, &ap.Spec)
	}
	ap.Problems = d.problems
	return ap, nil
}

// DecodePeerAuthentication is DecodeAuthorizationPolicy for a
// PeerAuthentication.
func DecodePeerAuthentication(data []byte) (authz.PeerAuthentication, error) {
	var pa authz.PeerAuthentication
	d, spec, err := decodeObject(data, &pa.Metadata)
	if err != nil {
		return pa, err
	}
	if spec != nil {
		d.peerAuthenticationSpec(spec, &pa.Spec)
	}
	pa.Problems = d.problems
	return pa, nil
}

// decodeObject parses data and reads the parts every policy object has:
// metadata (leniently: only name, namespace, creationTimestamp and
// annotations are read) and the top-level field names. It returns spec, nil
// when absent.
func decodeObject(data []byte, meta *authz.ObjectMeta) (*decoder, *jsonValue, error) {
	root, err := parseJSON(data)
	if err != nil {
		return nil, nil, fmt.Errorf("not a valid object: %w", err)
	}
	if root.kind != jsonObject {
		return nil, nil, fmt.Errorf("not an object but %s", root.describe())
	}
	d := &decoder{}
	var spec, metadata *jsonValue
	d.object(root, "", map[string]func(*jsonValue, string){
		"apiVersion": func(*jsonValue, string) {},
		"kind":       func(*jsonValue, string) {},
		"status":     func(*jsonValue, string) {},
		"metadata":   func(v *jsonValue, _ string) { metadata = v },
		"spec":       func(v *jsonValue, _ string) { spec = v },
	})
	if metadata == nil || metadata.kind != jsonObject {
		return nil, nil, errors.New("metadata is missing or not an object")
	}
	for _, f := range metadata.fields {
		v := f.val
		switch f.name {
		case "name", "namespace":
			if v.kind != jsonString {
				return nil, nil, fmt.Errorf("metadata.%s is %s, not a string", f.name, v.describe())
			}
			if f.name == "name" {
				meta.Name = v.s
			} else {
				meta.Namespace = v.s
			}
		case "creationTimestamp":
			if v.kind == jsonNull {
				continue
			}
			t, err := time.Parse(time.RFC3339, v.s)
			if v.kind != jsonString || err != nil {
				d.fail("metadata.creationTimestamp", "not an RFC 3339 time")
				continue
			}
			meta.CreationTimestamp = t
		case "annotations":
			if v.kind != jsonObject {
				continue
			}
			for _, a := range v.fields {
				if a.val.kind == jsonString {
					if meta.Annotations == nil {
						meta.Annotations = map[string]string{}
					}
					meta.Annotations[a.name] = a.val.s
				}
			}
		}
	}
	if meta.Name == "" {
		return nil, nil, errors.New("metadata.name is required")
	}
	if spec != nil && spec.kind == jsonNull {
		spec = nil
	}
	return d, spec, nil
}

// decoder reads a parsed object against Istio's schema, recording every
// problem with its path inside spec.
type decoder struct {
	problems []authz.FieldError
}

func (d *decoder) fail(path, format string, args ...any) {
	d.problems = append(d.problems, authz.FieldError{Field: path, Message: fmt.Sprintf(format, args...)})
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// object calls known[name] for each field of v, in document order. A
// duplicate or unknown field is a problem; a null field is absent, as in
// Kubernetes. It reports whether v is an object.
func (d *decoder) object(v *jsonValue, path string, known map[string]func(*jsonValue, string)) bool {
	if v.kind != jsonObject {
		d.fail(orSpec(path), "must be an object, not %s", v.describe())
		return false
	}
	seen := make(map[string]bool, len(v.fields))
	for _, f := range v.fields {
		p := join(path, f.name)
		if seen[f.name] {
			d.fail(p, "duplicate field %q: which one was meant is unknown", f.name)
			continue
		}
		seen[f.name] = true
		h, ok := known[f.name]
		if !ok {
			d.fail(p, "unknown field %q%s", f.name, suggest(f.name, known))
			continue
		}
		if f.val.kind != jsonNull {
			h(f.val, p)
		}
	}
	return true
}

// orSpec names the whole spec "spec" rather than "".
func orSpec(path string) string {
	if path == "" {
		return "spec"
	}
	return path
}

// suggest proposes the known field an unknown one was probably meant to be:
// one that differs only in case, or by at most two edits.
func suggest(name string, known map[string]func(*jsonValue, string)) string {
	names := make([]string, 0, len(known))
	for k := range known {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		if strings.EqualFold(k, name) {
			return fmt.Sprintf(" (field names are case-sensitive: did you mean %q?)", k)
		}
	}
	best, bestD := "", 3
	for _, k := range names {
		if dist := editDistance(name, k); dist < bestD {
			best, bestD = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known fields: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (d *decoder) str(v *jsonValue, path string, out *string) {
	if v.kind != jsonString {
		d.fail(path, "must be a string, not %s", v.describe())
		return
	}
	*out = v.s
}

// strs reads a list of strings. A number in it is a problem too (Istio's
// ports are strings: "80"), so the value is never guessed.
func (d *decoder) strs(v *jsonValue, path string, out *[]string) {
	if v.kind != jsonArray {
		d.fail(path, "must be a list of strings, not %s", v.describe())
		return
	}
	for i, item := range v.items {
		if item.kind != jsonString {
			hint := ""
			if item.kind == jsonNumber {
				hint = fmt.Sprintf(" (write \"%s\")", item.s)
			}
			d.fail(index(path, i), "must be a string, not %s%s", item.describe(), hint)
			continue
		}
		*out = append(*out, item.s)
	}
}

// strMap reads an object of string values.
func (d *decoder) strMap(v *jsonValue, path string, out *map[string]string) {
	if v.kind != jsonObject {
		d.fail(path, "must be a map of strings, not %s", v.describe())
		return
	}
	m := make(map[string]string, len(v.fields))
	for _, f := range v.fields {
		p := path + "[" + f.name + "]"
		if _, dup := m[f.name]; dup {
			d.fail(p, "duplicate key %q", f.name)
			continue
		}
		if f.val.kind != jsonString {
			d.fail(p, "must be a string, not %s", f.val.describe())
			continue
		}
		m[f.name] = f.val.s
	}
	*out = m
}

// list calls each for every item of an array.
func (d *decoder) list(v *jsonValue, path string, each func(*jsonValue, string)) {
	if v.kind != jsonArray {
		d.fail(path, "must be a list, not %s", v.describe())
		return
	}
	for i, item := range v.items {
		each(item, index(path, i))
	}
}

func (d *decoder) selector(v *jsonValue, path string) *authz.WorkloadSelector {
	sel := &authz.WorkloadSelector{}
	d.object(v, path, map[string]func(*jsonValue, string){
		"matchLabels": func(v *jsonValue, p string) { d.strMap(v, p, &sel.MatchLabels) },
	})
	return sel
}

func (d *decoder) targetRef(v *jsonValue, path string) authz.TargetRef {
	var t authz.TargetRef
	d.object(v, path, map[string]func(*jsonValue, string){
		"group":     func(v *jsonValue, p string) { d.str(v, p, &t.Group) },
		"kind":      func(v *jsonValue, p string) { d.str(v, p, &t.Kind) },
		"name":      func(v *jsonValue, p string) { d.str(v, p, &t.Name) },
		"namespace": func(v *jsonValue, p string) { d.str(v, p, &t.Namespace) },
	})
	return t
}

func (d *decoder) authorizationPolicySpec(v *jsonValue, s *authz.AuthorizationPolicySpec) {
	d.object(v, "", map[string]func(*jsonValue, string){
		"selector": func(v *jsonValue, p string) { s.Selector = d.selector(v, p) },
		"targetRef": func(v *jsonValue, p string) {
			t := d.targetRef(v, p)
			s.TargetRef = &t
		},
		"targetRefs": func(v *jsonValue, p string) {
			d.list(v, p, func(v *jsonValue, p string) { s.TargetRefs = append(s.TargetRefs, d.targetRef(v, p)) })
		},
		"action": func(v *jsonValue, p string) { d.str(v, p, &s.Action) },
		"provider": func(v *jsonValue, p string) {
			s.Provider = &authz.Provider{}
			d.object(v, p, map[string]func(*jsonValue, string){
				"name": func(v *jsonValue, p string) { d.str(v, p, &s.Provider.Name) },
			})
		},
		"rules": func(v *jsonValue, p string) {
			d.list(v, p, func(v *jsonValue, p string) {
				s.Rules = append(s.Rules, authz.Rule{})
				d.rule(v, p, &s.Rules[len(s.Rules)-1])
			})
		},
	})
}

func (d *decoder) rule(v *jsonValue, path string, r *authz.Rule) {
	d.object(v, path, map[string]func(*jsonValue, string){
		"from": func(v *jsonValue, p string) {
			d.list(v, p, func(v *jsonValue, p string) {
				r.From = append(r.From, authz.From{})
				f := &r.From[len(r.From)-1]
				d.object(v, p, map[string]func(*jsonValue, string){
					"source": func(v *jsonValue, p string) { d.source(v, p, &f.Source) },
				})
			})
		},
		"to": func(v *jsonValue, p string) {
			d.list(v, p, func(v *jsonValue, p string) {
				r.To = append(r.To, authz.To{})
				t := &r.To[len(r.To)-1]
				d.object(v, p, map[string]func(*jsonValue, string){
					"operation": func(v *jsonValue, p string) { d.operation(v, p, &t.Operation) },
				})
			})
		},
		"when": func(v *jsonValue, p string) {
			d.list(v, p, func(v *jsonValue, p string) {
				r.When = append(r.When, authz.Condition{})
				c := &r.When[len(r.When)-1]
				d.object(v, p, map[string]func(*jsonValue, string){
					"key":       func(v *jsonValue, p string) { d.str(v, p, &c.Key) },
					"values":    func(v *jsonValue, p string) { d.strs(v, p, &c.Values) },
					"notValues": func(v *jsonValue, p string) { d.strs(v, p, &c.NotValues) },
				})
			})
		},
	})
}

func (d *decoder) source(v *jsonValue, path string, s *authz.Source) {
	fields := map[string]*[]string{
		"principals": &s.Principals, "notPrincipals": &s.NotPrincipals,
		"requestPrincipals": &s.RequestPrincipals, "notRequestPrincipals": &s.NotRequestPrincipals,
		"namespaces": &s.Namespaces, "notNamespaces": &s.NotNamespaces,
		"serviceAccounts": &s.ServiceAccounts, "notServiceAccounts": &s.NotServiceAccounts,
		"ipBlocks": &s.IPBlocks, "notIpBlocks": &s.NotIPBlocks,
		"remoteIpBlocks": &s.RemoteIPBlocks, "notRemoteIpBlocks": &s.NotRemoteIPBlocks,
		"trustDomains": &s.TrustDomains, "notTrustDomains": &s.NotTrustDomains,
	}
	d.object(v, path, d.strLists(fields))
}

func (d *decoder) operation(v *jsonValue, path string, op *authz.Operation) {
	fields := map[string]*[]string{
		"hosts": &op.Hosts, "notHosts": &op.NotHosts, "ports": &op.Ports, "notPorts": &op.NotPorts,
		"methods": &op.Methods, "notMethods": &op.NotMethods, "paths": &op.Paths, "notPaths": &op.NotPaths,
	}
	d.object(v, path, d.strLists(fields))
}

func (d *decoder) strLists(fields map[string]*[]string) map[string]func(*jsonValue, string) {
	known := make(map[string]func(*jsonValue, string), len(fields))
	for name, out := range fields {
		known[name] = func(v *jsonValue, p string) { d.strs(v, p, out) }
	}
	return known
}

func (d *decoder) peerAuthenticationSpec(v *jsonValue, s *authz.PeerAuthenticationSpec) {
	mtls := func(v *jsonValue, p string) authz.MTLS {
		var m authz.MTLS
		d.object(v, p, map[string]func(*jsonValue, string){
			"mode": func(v *jsonValue, p string) { d.str(v, p, &m.Mode) },
		})
		return m
	}
	d.object(v, "", map[string]func(*jsonValue, string){
		"selector": func(v *jsonValue, p string) { s.Selector = d.selector(v, p) },
		"mtls": func(v *jsonValue, p string) {
			m := mtls(v, p)
			s.MTLS = &m
		},
		"portLevelMtls": func(v *jsonValue, p string) {
			if v.kind != jsonObject {
				d.fail(p, "must be a map from port to mtls, not %s", v.describe())
				return
			}
			s.PortLevelMTLS = map[string]authz.MTLS{}
			for _, f := range v.fields {
				fp := p + "[" + f.name + "]"
				if _, dup := s.PortLevelMTLS[f.name]; dup {
					d.fail(fp, "duplicate port %q", f.name)
					continue
				}
				s.PortLevelMTLS[f.name] = mtls(f.val, fp)
			}
		},
	})
}

// jsonValue is a parsed JSON value that keeps what encoding/json's maps
// lose: an object's duplicate keys, in document order.
type jsonValue struct {
	kind   jsonKind
	s      string // string value, or a number's text
	fields []jsonField
	items  []*jsonValue
}

type jsonField struct {
	name string
	val  *jsonValue
}

type jsonKind uint8

const (
	jsonNull jsonKind = iota
	jsonBool
	jsonNumber
	jsonString
	jsonArray
	jsonObject
)

func (v *jsonValue) describe() string {
	switch v.kind {
	case jsonBool:
		return "a boolean"
	case jsonNumber:
		return "a number"
	case jsonString:
		return fmt.Sprintf("a string (%q)", v.s)
	case jsonArray:
		return "a list"
	case jsonObject:
		return "an object"
	}
	return "null"
}

// parseJSON parses one JSON value (and nothing after it).
func parseJSON(data []byte) (*jsonValue, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the object")
	}
	return v, nil
}

// maxDepth bounds nesting: policies are a few levels deep.
const maxDepth = 64

func parseValue(dec *json.Decoder, depth int) (*jsonValue, error) {
	if depth > maxDepth {
		return nil, errors.New("nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			v := &jsonValue{kind: jsonObject}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				name, _ := k.(string)
				val, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				v.fields = append(v.fields, jsonField{name, val})
			}
			_, err := dec.Token() // '}'
			return v, err
		case '[':
			v := &jsonValue{kind: jsonArray}
			for dec.More() {
				item, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				v.items = append(v.items, item)
			}
			_, err := dec.Token() // ']'
			return v, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case string:
		return &jsonValue{kind: jsonString, s: t}, nil
	case json.Number:
		return &jsonValue{kind: jsonNumber, s: t.String()}, nil
	case bool:
		return &jsonValue{kind: jsonBool}, nil
	case nil:
		return &jsonValue{kind: jsonNull}, nil
	}
	return nil, fmt.Errorf("unexpected token %v", tok)
}
