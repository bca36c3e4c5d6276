package inventory

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/authz"
)

func TestDecodeAuthorizationPolicyProblems(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string // "field: message" of each problem, in order
	}{
		{"clean", `{"metadata":{"name":"p","namespace":"foo"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["198.18.0.0/15"]}}]}]}}`, nil},
		{"null spec fields are absent", `{"metadata":{"name":"p"},"spec":{"selector":null,"rules":[{"from":null,"to":[{"operation":{"ports":null}}]}]}}`, nil},
		{"case-folded twin", `{"metadata":{"name":"p"},"spec":{"rules":[{"from":[{"source":{"ipBlocks":["198.19.3.0/24"],"ipblocks":["0.0.0.0/0"]}}]}]}}`,
			[]string{`rules[0].from[0].source.ipblocks: unknown field "ipblocks" (field names are case-sensitive: did you mean "ipBlocks"?)`}},
		{"duplicate key", `{"metadata":{"name":"p"},"spec":{"action":"DENY","action":"ALLOW"}}`,
			[]string{`action: duplicate field "action": which one was meant is unknown`}},
		{"misspelt", `{"metadata":{"name":"p"},"spec":{"rules":[{"from":[{"source":{"principal":["a"]}}]}]}}`,
			[]string{`rules[0].from[0].source.principal: unknown field "principal" (did you mean "principals"?)`}},
		{"number for a string", `{"metadata":{"name":"p"},"spec":{"rules":[{"to":[{"operation":{"ports":[8080]}}]}]}}`,
			[]string{`rules[0].to[0].operation.ports[0]: must be a string, not a number (write "8080")`}},
		{"object for a list", `{"metadata":{"name":"p"},"spec":{"rules":{"from":[]}}}`, []string{`rules: must be a list, not an object`}},
		{"spec not an object", `{"metadata":{"name":"p"},"spec":"allow all"}`, []string{`spec: must be an object, not a string ("allow all")`}},
		{"unknown top-level field", `{"metadata":{"name":"p"},"sepc":{}}`, []string{`sepc: unknown field "sepc" (did you mean "spec"?)`}},
		{"bad creation time", `{"metadata":{"name":"p","creationTimestamp":"yesterday"}}`, []string{`metadata.creationTimestamp: not an RFC 3339 time`}},
		{"label not a string", `{"metadata":{"name":"p"},"spec":{"selector":{"matchLabels":{"version":1}}}}`,
			[]string{`selector.matchLabels[version]: must be a string, not a number`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ap, err := DecodeAuthorizationPolicy([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range ap.Problems {
				got = append(got, p.Field+": "+p.Message)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("problems:\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestDecodeUnidentifiable(t *testing.T) {
	for doc, want := range map[string]string{
		`[]`:                                 "not an object",
		`{"spec":{}}`:                        "metadata is missing",
		`{"metadata":{"namespace":"foo"}}`:   "metadata.name is required",
		`{"metadata":{"name":7}}`:            "metadata.name is a number",
		`{"metadata":{"name":"p"}} trailing`: "trailing data",
		`{"metadata":`:                       "not a valid object",
	} {
		if _, err := DecodePeerAuthentication([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want %q", doc, err, want)
		}
	}
}

func TestYAMLKeepsDuplicateKeys(t *testing.T) {
	js, err := yamlToJSON([]byte("metadata: {name: p}\nspec:\n  mtls: {mode: STRICT}\n  mtls: {mode: DISABLE}\n"))
	if err != nil {
		t.Fatal(err)
	}
	pa, err := DecodePeerAuthentication(js)
	if err != nil {
		t.Fatal(err)
	}
	if len(pa.Problems) != 1 || pa.Problems[0].Field != "mtls" || pa.Spec.MTLS.Mode != "STRICT" {
		t.Errorf("%s: %+v", js, pa)
	}
}

func TestYAMLAliasBomb(t *testing.T) {
	doc := "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
	prev := "a"
	for _, name := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		doc += name + ": &" + name + " [" + strings.Repeat("*"+prev+", ", 9) + "*" + prev + "]\n"
		prev = name
	}
	if _, err := yamlToJSON([]byte(doc)); err == nil || !strings.Contains(err.Error(), "aliases are expanded") {
		t.Fatalf("err = %v, want the expansion bound", err)
	}
	// Thirty levels expand to 10^30 nodes, past what an int counts.
	for _, name := range []string{"j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z",
		"aa", "ab", "ac", "ad", "ae", "af", "ag", "ah", "ai"} {
		doc += name + ": &" + name + " [" + strings.Repeat("*"+prev+", ", 9) + "*" + prev + "]\n"
		prev = name
	}
	if _, err := yamlToJSON([]byte(doc)); err == nil || !strings.Contains(err.Error(), "aliases are expanded") {
		t.Fatalf("thirty levels: err = %v, want the expansion bound", err)
	}
	// Few nodes, large values: the bound on written bytes catches it.
	doc = "a: &a " + strings.Repeat("x", 100<<10) + "\nb: [" + strings.Repeat("*a, ", 199) + "*a]\n"
	if _, err := yamlToJSON([]byte(doc)); err == nil || !strings.Contains(err.Error(), "aliases are expanded") {
		t.Fatalf("a large value repeated: err = %v, want the expansion bound", err)
	}
}

// FuzzDecodePolicy checks the strict decoder against encoding/json: it never
// panics, and an object it decodes without a problem decodes the same way
// through encoding/json.
func FuzzDecodePolicy(f *testing.F) {
	f.Add(`{"metadata":{"name":"p","namespace":"foo"},"spec":{"action":"DENY","rules":[{"from":[{"source":{"ipBlocks":["198.18.0.0/15"]}}],"to":[{"operation":{"ports":["80"]}}],"when":[{"key":"source.ip","values":["1.2.3.4"]}]}]}}`)
	f.Add(`{"metadata":{"name":"p"},"spec":{"selector":{"matchLabels":{"app":"x"}},"mtls":{"mode":"STRICT"},"portLevelMtls":{"80":{"mode":"DISABLE"}}}}`)
	f.Add(`{"metadata":{"name":"p"},"spec":{"rules":[{"from":[{"source":{"Principals":["a"],"principals":["b"]}}]}]}}`)
	f.Fuzz(func(t *testing.T, doc string) {
		ap, err := DecodeAuthorizationPolicy([]byte(doc))
		if err == nil && len(ap.Problems) == 0 {
			var want struct {
				Metadata authz.ObjectMeta              `json:"metadata"`
				Spec     authz.AuthorizationPolicySpec `json:"spec"`
			}
			if json.Unmarshal([]byte(doc), &want) == nil && !reflect.DeepEqual(normalize(want.Spec), normalize(ap.Spec)) {
				t.Fatalf("%s\nstrict %+v\nencoding/json %+v", doc, ap.Spec, want.Spec)
			}
		}
		pa, err := DecodePeerAuthentication([]byte(doc))
		if err == nil && len(pa.Problems) == 0 {
			var want struct {
				Spec authz.PeerAuthenticationSpec `json:"spec"`
			}
			if json.Unmarshal([]byte(doc), &want) == nil && !reflect.DeepEqual(want.Spec, pa.Spec) {
				t.Fatalf("%s\nstrict %+v\nencoding/json %+v", doc, pa.Spec, want.Spec)
			}
		}
	})
}

// normalize makes empty and nil slices and maps compare equal.
func normalize(s authz.AuthorizationPolicySpec) string {
	b, _ := json.Marshal(s)
	return string(b)
}
