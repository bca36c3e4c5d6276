package redirect

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/internal/testutil"
)

// TestPrivilegedApplyPodAcceptLocal checks ApplyPod turns accept_local on
// over netlink on the pod's interfaces (not lo), and CleanupPod off again.
func TestPrivilegedApplyPodAcceptLocal(t *testing.T) {
	testutil.Privileged(t)
	pod := testutil.NewNetNS(t)
	plan, err := NewPodPlan([]netip.Addr{netip.MustParseAddr("198.18.0.10")}, netip.Addr{}, Config{})
	if err != nil {
		t.Fatal(err)
	}
	read := func(dev string) (string, error) {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + dev + "/accept_local")
		return strings.TrimSpace(string(b)), err
	}
	err = pod.Do(func() error {
		for _, args := range [][]string{
			{"link", "add", "eth0", "type", "veth", "peer", "name", "eth1"},
			{"addr", "add", "198.18.0.10/24", "dev", "eth0"},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return errors.New(string(out))
			}
		}
		if err := ApplyPod(plan); err != nil {
			return err
		}
		for dev, want := range map[string]string{"eth0": "1", "eth1": "1", "lo": "0"} {
			if got, err := read(dev); err != nil || got != want {
				return errors.New(dev + ": accept_local " + got + ", want " + want)
			}
		}
		if err := CleanupPod(); err != nil {
			return err
		}
		if got, err := read("eth0"); err != nil || got != "0" {
			return errors.New("after CleanupPod: eth0 accept_local " + got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
