package testbed

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Where a testbed keeps its machine-wide records.
const (
	// Registry holds one file per running testbed, named after its prefix,
	// that holds its run directory.
	Registry = "/run/ferry-testbed"
	// BPFFS is where the agents' pin directories go.
	BPFFS = "/sys/fs/bpf"
	// RunRoot is where Up makes a run directory when none is given.
	RunRoot = "/tmp/ferry-testbed"
	// Bridge is the fabric's bridge, in the fabric namespace.
	Bridge = "br0"
)

// Testbed is one testbed run, as Up built it. It is what testbed.json holds;
// Load reads it back.
type Testbed struct {
	Prefix       string   `json:"prefix"`
	RunDir       string   `json:"run_dir"`
	Layout       Layout   `json:"layout"`
	Mesh         bool     `json:"mesh"` // whether Up started the agents
	Redirect     string   `json:"redirect"`
	Capture      string   `json:"capture"` // the agents' --capture: node or pod
	LogLevel     string   `json:"log_level"`
	AgentArgs    []string `json:"agent_args"`
	FabricNetns  string   `json:"fabric_netns"`  // "" in LayoutDirect
	FabricBridge string   `json:"fabric_bridge"` // "" in LayoutDirect
	Manifests    string   `json:"manifests"`
	CACert       string   `json:"ca_cert"`
	CAKey        string   `json:"ca_key"`
	Ferry        string   `json:"ferry"`  // "" when the testbed runs no agents
	Podapp       string   `json:"podapp"` // "" when the pods run no server
	Nodes        []Node   `json:"nodes"`
	Pods         []Pod    `json:"pods"`
}

// Node is one node of a testbed.
type Node struct {
	Name     string `json:"name"` // node<k>
	Netns    string `json:"netns"`
	IP       string `json:"ip"`
	PodCIDR  string `json:"pod_cidr"`
	PinDir   string `json:"pin_dir"`
	AgentLog string `json:"agent_log"`
}

// Pod is one pod of a testbed: an address and, unless the testbed has no
// podapp, a server on its port 8000. In LayoutFabric the pod is a namespace
// of its own; in LayoutDirect it shares its node's.
type Pod struct {
	Namespace      string   `json:"namespace"`
	Name           string   `json:"name"`
	ServiceAccount string   `json:"service_account"`
	Labels         []string `json:"labels"`
	Node           string   `json:"node"`
	IP             string   `json:"ip"`
	Netns          string   `json:"netns"` // the node's in LayoutDirect
	Enrolled       bool     `json:"enrolled"`
	NodeIface      string   `json:"node_iface"` // its veth on the node; lo in LayoutDirect
	Log            string   `json:"log"`
}

// String returns "namespace/name".
func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Principal returns the pod's SPIFFE identity in the default trust domain.
func (p Pod) Principal() string {
	return "spiffe://cluster.local/ns/" + p.Namespace + "/sa/" + p.ServiceAccount
}

// Load reads the testbed.json of the run directory dir.
func Load(dir string) (*Testbed, error) {
	b, err := os.ReadFile(filepath.Join(dir, "testbed.json"))
	if err != nil {
		return nil, fmt.Errorf("testbed: %w", err)
	}
	tb := new(Testbed)
	if err := json.Unmarshal(b, tb); err != nil {
		return nil, fmt.Errorf("testbed: %s: %w", dir, err)
	}
	return tb, nil
}

// Node returns the node named name.
func (tb *Testbed) Node(name string) (Node, bool) {
	for _, n := range tb.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

// Pod returns the pod named "namespace/name".
func (tb *Testbed) Pod(name string) (Pod, bool) {
	for _, p := range tb.Pods {
		if p.String() == name {
			return p, true
		}
	}
	return Pod{}, false
}

// NetnsOf resolves a pod ("namespace/name"), a node name or "fabric" to the
// name of its network namespace.
func (tb *Testbed) NetnsOf(target string) (string, error) {
	switch {
	case target == "fabric":
		if tb.FabricNetns == "" {
			return "", fmt.Errorf("testbed: no fabric in layout %s", tb.Layout)
		}
		return tb.FabricNetns, nil
	case strings.Contains(target, "/"):
		if p, ok := tb.Pod(target); ok {
			return p.Netns, nil
		}
		return "", fmt.Errorf("testbed: no pod %s", target)
	}
	if n, ok := tb.Node(target); ok {
		return n.Netns, nil
	}
	return "", fmt.Errorf("testbed: no node %s", target)
}

func (tb *Testbed) path(elem ...string) string {
	return filepath.Join(append([]string{tb.RunDir}, elem...)...)
}

// save writes testbed.json and testbed.env, each atomically.
func (tb *Testbed) save() error {
	b, err := json.MarshalIndent(tb, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(tb.path("testbed.json"), append(b, '\n')); err != nil {
		return err
	}
	return writeAtomic(tb.path("testbed.env"), []byte(tb.env()))
}

// env is testbed.env: shell variables for scripts that source it.
func (tb *Testbed) env() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# testbed %s: source this file\n", tb.Prefix)
	fmt.Fprintf(&b, "TB_PREFIX=%s\nTB_RUN_DIR=%s\nTB_LAYOUT=%s\nTB_FABRIC_NETNS=%s\nTB_MANIFESTS=%s\nTB_FERRY=%s\nTB_PODAPP=%s\n",
		tb.Prefix, tb.RunDir, tb.Layout, tb.FabricNetns, tb.Manifests, cmp.Or(tb.Ferry, "none"), cmp.Or(tb.Podapp, "none"))
	var nodes, pods []string
	for _, n := range tb.Nodes {
		nodes = append(nodes, n.Name)
	}
	for _, p := range tb.Pods {
		pods = append(pods, p.String())
	}
	fmt.Fprintf(&b, "TB_NODES=%q\nTB_PODS=%q\n", strings.Join(nodes, " "), strings.Join(pods, " "))
	for _, n := range tb.Nodes {
		v := strings.ToUpper(n.Name)
		fmt.Fprintf(&b, "TB_%s_NETNS=%s\nTB_%s_IP=%s\nTB_%s_PIN_DIR=%s\n", v, n.Netns, v, n.IP, v, n.PinDir)
	}
	for _, p := range tb.Pods {
		v := strings.ReplaceAll(strings.ToUpper(p.Namespace+"_"+p.Name), "-", "_")
		fmt.Fprintf(&b, "TB_POD_%s_IP=%s\nTB_POD_%s_NETNS=%s\nTB_POD_%s_NODE=%s\n", v, p.IP, v, p.Netns, v, p.Node)
	}
	return b.String()
}

// writeManifests writes the agents' inventory: 00-namespaces.yaml and
// 10-pods.yaml.
func (tb *Testbed) writeManifests(spec Spec) error {
	var ns strings.Builder
	for _, n := range spec.Namespaces {
		fmt.Fprintf(&ns, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n%s", n.Name, yamlLabels(n.Labels))
	}
	var pods strings.Builder
	for _, p := range tb.Pods {
		fmt.Fprintf(&pods, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  uid: %s\n%s"+
			"spec:\n  nodeName: %s\n  serviceAccountName: %s\n  containers:\n  - name: app\n    image: podapp\n"+
			"status:\n  phase: Running\n  podIP: %s\n  podIPs:\n  - ip: %s\n",
			p.Name, p.Namespace, tb.Prefix+"-"+p.Namespace+"-"+p.Name, yamlLabels(p.Labels), p.Node, p.ServiceAccount, p.IP, p.IP)
	}
	if err := writeAtomic(filepath.Join(tb.Manifests, "00-namespaces.yaml"), []byte(ns.String())); err != nil {
		return err
	}
	return writeAtomic(filepath.Join(tb.Manifests, "10-pods.yaml"), []byte(pods.String()))
}

// yamlLabels is a metadata.labels block for "key=value" labels.
func yamlLabels(labels []string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("  labels:\n")
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		fmt.Fprintf(&b, "    %s: %q\n", k, v)
	}
	return b.String()
}

// writeAtomic writes b to a temporary file beside path and renames it.
func writeAtomic(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	return nil
}
