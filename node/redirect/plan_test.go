package redirect

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestPlanGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		pods []netip.Addr
		cfg  Config
	}{
		{"no-pods", nil, Config{}},
		{"one-pod", addrs("198.18.1.2"), Config{}},
		// Unsorted input with duplicates, an IPv4-mapped IPv6 address and
		// an IPv6 address that cannot be captured.
		{"several-pods", addrs("198.18.3.2", "198.18.1.2", "::ffff:198.18.2.2", "198.18.1.2", "2001:db8::5"), Config{}},
		{"custom-config", addrs("198.18.1.2", "198.18.1.3"), Config{CaptureTable: 300, InboundTable: 301, Priority: 1000}},
		{"ipv6-only", addrs("2001:db8::5"), Config{}},
		// Two dual-stack pods: IPv4 captured, IPv6 refused both ways.
		{"dual-stack", addrs("198.18.1.2", "2001:2:0:1::2", "198.18.1.3", "2001:2:0:1::3"), Config{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(tc.pods, tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, p.String())
		})
	}
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("plan differs from %s (go test -update rewrites it)\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestPlanIsPure(t *testing.T) {
	in := addrs("198.18.3.2", "198.18.1.2")
	p1, _ := NewPlan(in, Config{})
	p2, _ := NewPlan(in, Config{})
	if p1.String() != p2.String() {
		t.Error("same input, different plans")
	}
	if in[0] != netip.MustParseAddr("198.18.3.2") {
		t.Error("NewPlan reordered its input")
	}
}

func TestPlanRulesStayInReservedRange(t *testing.T) {
	for _, cfg := range []Config{{}, {Priority: 5000}, {Priority: 32766 - NumPriorities}} {
		p, err := NewPlan(addrs("198.18.1.2", "198.18.1.3"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		base := cfg.withDefaults().Priority
		for _, r := range p.Rules {
			if r.Priority < base || r.Priority >= base+NumPriorities {
				t.Errorf("config %+v: rule %v outside [%d, %d)", cfg, r, base, base+NumPriorities)
			}
		}
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{CaptureTable: 254}, "capture table 254"},
		{Config{InboundTable: 255}, "inbound table 255"},
		{Config{InboundTable: -1}, "inbound table -1"},
		{Config{CaptureTable: 7, InboundTable: 7}, "both 7"},
		{Config{Priority: 32765}, "rule priority 32765"},
		{Config{Priority: -3}, "rule priority -3"},
	} {
		_, err := NewPlan(addrs("198.18.1.2"), tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "redirect: ") {
			t.Errorf("NewPlan(%+v) error %v, want one mentioning %q", tc.cfg, err, tc.want)
		}
	}
}

func TestRegisterFlagsDefaults(t *testing.T) {
	var c Config
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.RegisterFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if c != (Config{}).withDefaults() {
		t.Errorf("flag defaults %+v differ from the zero Config's %+v", c, Config{}.withDefaults())
	}
}
