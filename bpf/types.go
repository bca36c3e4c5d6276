package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// DefaultPinDir is where the agent pins its maps and its netns link unless
// told otherwise. Several agents on one machine (the netns testbed) use one
// directory each.
const DefaultPinDir = "/sys/fs/bpf/ferry"

// DefaultHBONEPort is the port that selects the HBONE listener for
// connections to an enrolled pod, as in Istio's ztunnel.
const DefaultHBONEPort = 15008

// ErrNotCgroup2 is PodCapture.AttachProbes' error for a path that is not a
// cgroup v2 directory (or does not exist).
var ErrNotCgroup2 = errors.New("not a cgroup v2 directory")

// ErrNotSupported is wrapped by errors caused by a kernel that lacks a
// feature the program needs (sk_lookup needs Linux 5.9). Match it with
// errors.Is.
var ErrNotSupported = ebpf.ErrNotSupported

// Config configures Load. The zero value is usable.
type Config struct {
	// PinDir is the directory on a BPF filesystem where maps and the link
	// are pinned. "" means DefaultPinDir. If nothing is mounted there,
	// Load mounts a bpffs on its parent directory.
	PinDir string
	// HBONEPort is the destination port that sends connections to an
	// enrolled pod to the HBONE listener rather than the inbound plaintext
	// one. 0 means DefaultHBONEPort.
	HBONEPort uint16
	// ProbeSource is the address the node sends the kubelet's health
	// probes from (--capture pod): connections from it to a pod are not
	// captured. The zero Addr exempts nothing.
	ProbeSource netip.Addr
}

// Listener names a slot of the listener SOCKMAP. Values equal the C enum
// ferry_listener.
type Listener uint32

// The agent's three capture listeners.
const (
	ListenerOutbound Listener = iota // connections from enrolled pods (15001)
	ListenerInbound                  // plaintext connections to enrolled pods (15006)
	ListenerHBONE                    // connections to an enrolled pod's HBONE port (15008)
)

func (l Listener) String() string {
	switch l {
	case ListenerOutbound:
		return "outbound"
	case ListenerInbound:
		return "inbound"
	case ListenerHBONE:
		return "hbone"
	}
	return fmt.Sprintf("Listener(%d)", uint32(l))
}

// Verdict names a counter kept by the program, per decision. Values equal the
// C enum ferry_verdict.
type Verdict uint32

// Verdicts counted by the program. Connections that are not Ferry's are not
// counted.
const (
	VerdictOutbound     Verdict = iota // assigned to the outbound listener
	VerdictInbound                     // assigned to the inbound listener
	VerdictHBONE                       // assigned to the HBONE listener
	VerdictNoListener                  // refused: no listener in the slot
	VerdictAssignFailed                // refused: the kernel rejected the socket
	numVerdicts
)

// Verdicts lists every Verdict, in order.
func Verdicts() []Verdict {
	return []Verdict{VerdictOutbound, VerdictInbound, VerdictHBONE, VerdictNoListener, VerdictAssignFailed}
}

func (v Verdict) String() string {
	switch v {
	case VerdictOutbound:
		return "outbound"
	case VerdictInbound:
		return "inbound"
	case VerdictHBONE:
		return "hbone"
	case VerdictNoListener:
		return "no_listener"
	case VerdictAssignFailed:
		return "assign_failed"
	}
	return fmt.Sprintf("Verdict(%d)", uint32(v))
}
