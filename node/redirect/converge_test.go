//go:build linux

package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// fakeMap records every state the map goes through, with the number of
// Ferry routing objects in the namespace at that moment.
type fakeMap struct {
	ns      *testutil.NetNS
	t       *testing.T
	pods    []netip.Addr
	history []string
}

func (f *fakeMap) Pods() ([]netip.Addr, error) { return slices.Clone(f.pods), nil }

func (f *fakeMap) SetPods(p []netip.Addr) error {
	f.pods = slices.Clone(p)
	routes := 0
	for _, l := range ferryLines(snapshot(f.t, f.ns)) {
		if strings.HasPrefix(l, "local ") && !strings.HasPrefix(l, "local default") {
			routes++
		}
	}
	f.history = append(f.history, fmt.Sprintf("map %v with %d pod routes", p, routes))
	return nil
}

func TestPrivilegedConvergeOrder(t *testing.T) {
	testutil.Privileged(t)
	ns := testutil.NewNetNS(t)
	m := &fakeMap{ns: ns, t: t}
	a, b := netip.MustParseAddr("198.18.1.2"), netip.MustParseAddr("198.18.1.3")
	step := func(pods ...netip.Addr) {
		t.Helper()
		p := mustPlan(t, pods, Config{})
		if err := ns.Do(func() error { return Converge(p, m) }); err != nil {
			t.Fatal(err)
		}
	}
	step(a) // enrol a
	step(b) // a out, b in
	step()  // b out
	want := []string{
		"map [198.18.1.2] with 0 pod routes", // the map first
		"map [198.18.1.2] with 1 pod routes", // no-op after Apply
		"map [198.18.1.2 198.18.1.3] with 1 pod routes",
		"map [198.18.1.3] with 1 pod routes", // a's route already gone
		"map [] with 0 pod routes",
	}
	if !slices.Equal(m.history, want) {
		t.Errorf("map history:\n%s\nwant:\n%s", strings.Join(m.history, "\n"), strings.Join(want, "\n"))
	}
}
