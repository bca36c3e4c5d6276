package inventory

import "testing"

// FuzzParse feeds arbitrary bytes to the manifest parser: it must never panic,
// every object it returns is identified, and every policy error it finds is
// among the file's errors.
func FuzzParse(f *testing.F) {
	f.Add([]byte(manifests))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nstatus: {podIP: 1.2.3.4}\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/8\"]}}]}]}\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {rules: [{from: [{source: {ipBlocks: [a], ipblocks: [b], ipBlocks: [c]}}]}]}\n"))
	f.Add([]byte("---\n---\nkind: [\n"))
	f.Add([]byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: &a x, labels: *a}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := parse("fuzz.yaml", b)
		for _, ap := range r.objects.aps {
			if ap.Metadata.Name == "" || ap.Metadata.Namespace == "" {
				t.Fatalf("unidentified AuthorizationPolicy %+v", ap)
			}
		}
		for _, pa := range r.objects.pas {
			if pa.Metadata.Name == "" || pa.Metadata.Namespace == "" {
				t.Fatalf("unidentified PeerAuthentication %+v", pa)
			}
		}
		if len(r.policyErrs) > 0 && len(r.errs) == 0 {
			t.Fatalf("policy errors %v not reported", r.policyErrs)
		}
	})
}
