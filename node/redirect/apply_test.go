//go:build linux

package redirect

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// snapshot returns what `ip rule show` and `ip route show table all` print in
// ns: the operator's view of the namespace.
func snapshot(t *testing.T, ns *testutil.NetNS) string {
	t.Helper()
	var out strings.Builder
	err := ns.Do(func() error {
		for _, args := range [][]string{{"-4", "rule", "show"}, {"-4", "route", "show", "table", "all"}, {"-6", "rule", "show"}, {"-6", "route", "show", "table", "all"}} {
			b, err := exec.Command("ip", args...).CombinedOutput()
			if err != nil {
				return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, b)
			}
			out.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func ipIn(t *testing.T, ns *testutil.NetNS, args ...string) {
	t.Helper()
	err := ns.Do(func() error {
		if b, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func mustPlan(t *testing.T, pods []netip.Addr, cfg Config) Plan {
	t.Helper()
	p, err := NewPlan(pods, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ferryLines returns the lines of a snapshot that mention Ferry's protocol.
func ferryLines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, fmt.Sprintf("proto %d", Protocol)) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

func TestPrivilegedApplyTwiceIsIdempotent(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	p := mustPlan(t, addrs("198.18.1.2", "198.18.1.3"), Config{})
	if err := ns.Do(func() error { return Apply(p) }); err != nil {
		t.Fatal(err)
	}
	first := snapshot(t, ns)
	t.Logf("after Apply:\n%s", first)
	if got, want := len(ferryLines(first)), len(p.Rules)+len(p.Routes); got != want {
		t.Errorf("after Apply the namespace has %d Ferry objects, want %d:\n%s", got, want, first)
	}
	if err := ns.Do(func() error { return Apply(p) }); err != nil {
		t.Fatal(err)
	}
	if second := snapshot(t, ns); second != first {
		t.Errorf("second Apply changed the namespace:\n--- first\n%s--- second\n%s", first, second)
	}
}

func TestPrivilegedApplyConverges(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	apply := func(p Plan) {
		t.Helper()
		if err := ns.Do(func() error { return Apply(p) }); err != nil {
			t.Fatal(err)
		}
	}
	// Reference: each plan applied to an empty namespace.
	fresh := func(p Plan) string {
		t.Helper()
		ref := testutil.NewNetNS(t)
		if err := ref.Do(func() error { return Apply(p) }); err != nil {
			t.Fatal(err)
		}
		return snapshot(t, ref)
	}
	steps := []Plan{
		mustPlan(t, addrs("198.18.1.2"), Config{}),
		mustPlan(t, addrs("198.18.1.3", "198.18.1.4"), Config{}),
		// New table numbers and priorities: the old ones are garbage.
		mustPlan(t, addrs("198.18.1.4"), Config{CaptureTable: 400, InboundTable: 401, Priority: 2000}),
		mustPlan(t, nil, Config{}),
		mustPlan(t, addrs("198.18.1.5"), Config{}),
	}
	for i, p := range steps {
		apply(p)
		if got, want := snapshot(t, ns), fresh(p); got != want {
			t.Errorf("step %d: converged namespace differs from a fresh Apply:\n--- got\n%s--- want\n%s", i, got, want)
		}
	}
}

// TestPrivilegedCleanupRestores checks Cleanup removes exactly what Apply
// added, including Ferry-tagged leftovers of odd shapes, and leaves other
// owners' rules and routes (even in Ferry's tables) alone.
func TestPrivilegedCleanupRestores(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	ipIn(t, ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ipIn(t, ns, "link", "set", "v0", "up")
	ipIn(t, ns, "link", "set", "v1", "up")
	ipIn(t, ns, "addr", "add", "198.18.9.1/24", "dev", "v0")
	// Somebody else's objects, some next to ours.
	ipIn(t, ns, "rule", "add", "pref", "100", "from", "198.18.9.7", "lookup", "main")
	ipIn(t, ns, "rule", "add", "pref", "500", "fwmark", "0x10", "lookup", "77", "proto", "static")
	ipIn(t, ns, "route", "add", "local", "198.18.9.8/32", "dev", "lo", "table", "15006")
	ipIn(t, ns, "route", "add", "198.18.10.0/24", "via", "198.18.9.2", "table", "77")
	before := snapshot(t, ns)

	p := mustPlan(t, addrs("198.18.1.2", "198.18.1.3"), Config{})
	if err := ns.Do(func() error { return Apply(p) }); err != nil {
		t.Fatal(err)
	}
	// Ferry-tagged objects Apply would never make (an older version's, say).
	ipIn(t, ns, "rule", "add", "pref", "7000", "fwmark", "0x99", "lookup", "15001", "proto", "153")
	ipIn(t, ns, "route", "add", "198.18.11.0/24", "via", "198.18.9.2", "table", "15001", "proto", "153")

	// Apply garbage-collects them.
	if err := ns.Do(func() error { return Apply(p) }); err != nil {
		t.Fatal(err)
	}
	if got, want := len(ferryLines(snapshot(t, ns))), len(p.Rules)+len(p.Routes); got != want {
		t.Errorf("Apply left %d Ferry objects, want %d:\n%s", got, want, snapshot(t, ns))
	}

	if err := ns.Do(Cleanup); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("Cleanup did not restore the namespace:\n--- before\n%s--- after\n%s", before, after)
	}
	if err := ns.Do(Cleanup); err != nil {
		t.Errorf("second Cleanup: %v", err)
	}
}

func TestPrivilegedApplyRefusesForeignRoute(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	// Someone else's route exactly where Ferry wants one.
	ipIn(t, ns, "route", "add", "local", "198.18.1.2/32", "dev", "lo", "table", "15006")
	before := snapshot(t, ns)
	err := ns.Do(func() error { return Apply(mustPlan(t, addrs("198.18.1.2"), Config{})) })
	if err == nil {
		t.Fatal("Apply overwrote or ignored a route it does not own")
	}
	if !strings.HasPrefix(err.Error(), "redirect: apply:") {
		t.Errorf("error %q lacks the package prefix", err)
	}
	if err := ns.Do(Cleanup); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, ns); after != before {
		t.Errorf("the foreign route did not survive Cleanup:\n--- before\n%s--- after\n%s", before, after)
	}
}
