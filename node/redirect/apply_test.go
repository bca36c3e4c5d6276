//go:build linux

package redirect

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
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
	p := mustPlan(t, addrs("198.18.1.2", "198.18.1.3", "2001:2:0:1::2"), Config{})
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
		mustPlan(t, addrs("198.18.1.3", "198.18.1.4", "2001:2:0:1::3"), Config{}),
		// A pod leaves: its IPv6 refusal goes with it.
		mustPlan(t, addrs("198.18.1.3", "2001:2:0:1::4"), Config{}),
		// New table numbers and priorities: the old ones are garbage.
		mustPlan(t, addrs("198.18.1.4", "2001:2:0:1::4"), Config{CaptureTable: 400, InboundTable: 401, Priority: 2000}),
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

	p := mustPlan(t, addrs("198.18.1.2", "198.18.1.3", "2001:2:0:1::2"), Config{})
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

// TestPrivilegedApplyRefusesIPv6 asks the kernel's FIB how it routes an
// enrolled dual-stack pod's TCP: IPv6 from the pod and to the pod (forwarded
// and sent by the node) is prohibited, other IPv6 TCP and the pod's IPv6 UDP
// are not, and the refusal goes when the pod does.
func TestPrivilegedApplyRefusesIPv6(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	ipIn(t, ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
	ipIn(t, ns, "link", "set", "v0", "up")
	ipIn(t, ns, "link", "set", "v1", "up")
	ipIn(t, ns, "-6", "addr", "add", "2001:2:0:9::1/64", "dev", "v0", "nodad")
	ipIn(t, ns, "-6", "route", "add", "2001:2:0:1::2/128", "dev", "v1")
	ipIn(t, ns, "-6", "route", "add", "2001:2:0:1::3/128", "dev", "v1")
	must := func(p Plan) {
		t.Helper()
		if err := ns.Do(func() error { return Apply(p) }); err != nil {
			t.Fatal(err)
		}
	}
	// routeType is the first word of `ip -6 route get`: the route's type,
	// or its destination for a unicast route.
	routeType := func(args ...string) string {
		t.Helper()
		var out []byte
		err := ns.Do(func() error {
			var err error
			out, err = exec.Command("ip", append([]string{"-6", "route", "get"}, args...)...).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "Permission denied") {
				return fmt.Errorf("ip route get %s: %v: %s", strings.Join(args, " "), err, out)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "Permission denied") {
			return "prohibit" // the kernel refuses the lookup itself for a locally sent packet
		}
		return strings.Fields(string(out))[0]
	}
	pod, other := "2001:2:0:1::2", "2001:2:0:1::3"
	must(mustPlan(t, addrs("198.18.1.2", pod), Config{}))
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"from the pod (forwarded)", []string{"to", other, "from", pod, "iif", "v1", "ipproto", "tcp"}, "prohibit"},
		{"to the pod (forwarded)", []string{"to", pod, "from", other, "iif", "v1", "ipproto", "tcp"}, "prohibit"},
		{"to the pod (sent by the node)", []string{"to", pod, "ipproto", "tcp"}, "prohibit"},
		{"between other pods", []string{"to", other, "from", "2001:2:0:1::4", "iif", "v1", "ipproto", "tcp"}, other},
		{"the pod's UDP", []string{"to", other, "from", pod, "iif", "v1", "ipproto", "udp"}, other},
	} {
		if got := routeType(tc.args...); got != tc.want {
			t.Errorf("%s: ip -6 route get %s: %s, want %s", tc.name, strings.Join(tc.args, " "), got, tc.want)
		}
	}
	// The pod is unenrolled (only its IPv4 address stays, say, another pod's).
	must(mustPlan(t, addrs("198.18.1.2"), Config{}))
	if got := routeType("to", pod, "from", other, "iif", "v1", "ipproto", "tcp"); got != pod {
		t.Errorf("after the pod left, TCP to it routes as %s, want the unicast route", got)
	}
	if lines := ferryLines(snapshot(t, ns)); slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "prohibit") || strings.Contains(l, "2001:") }) {
		t.Errorf("IPv6 refusal left behind: %q", lines)
	}
}
