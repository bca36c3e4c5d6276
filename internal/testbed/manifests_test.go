package testbed

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestManifestsAndEnv(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{
		Namespaces: []Namespace{{Name: "foo", Labels: []string{"istio.io/dataplane-mode=ambient"}}, {Name: "bar"}},
		Pods:       []PodSpec{{Namespace: "foo", Name: "web-1", Node: "node1", ServiceAccount: "web", Labels: []string{"app=web"}}},
	}
	tb := &Testbed{Prefix: "ftb00aa11", RunDir: dir, Layout: LayoutFabric, Manifests: dir, FabricNetns: "ftb00aa11-fabric", Podapp: "/bin/podapp",
		Nodes: []Node{{Name: "node1", Netns: "ftb00aa11-node1", IP: "198.18.0.1", PinDir: "/sys/fs/bpf/ftb00aa11-node1"}},
		Pods: []Pod{{Namespace: "foo", Name: "web-1", ServiceAccount: "web", Labels: []string{"app=web"}, Node: "node1",
			IP: "198.18.1.2", Netns: "ftb00aa11-pod-foo-web-1"}}}
	if err := tb.writeManifests(spec); err != nil {
		t.Fatal(err)
	}
	type object struct {
		Kind     string
		Metadata struct {
			Name, Namespace, UID string
			Labels               map[string]string
		}
		Spec struct {
			NodeName           string `yaml:"nodeName"`
			ServiceAccountName string `yaml:"serviceAccountName"`
		}
		Status struct {
			PodIP string `yaml:"podIP"`
		}
	}
	var objs []object
	for _, f := range []string{"00-namespaces.yaml", "10-pods.yaml"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		d := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var o object
			if d.Decode(&o) != nil {
				break
			}
			objs = append(objs, o)
		}
	}
	if len(objs) != 3 {
		t.Fatalf("got %d objects, want 2 namespaces and a pod: %+v", len(objs), objs)
	}
	if ns := objs[0]; ns.Kind != "Namespace" || ns.Metadata.Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace foo: %+v", ns)
	}
	pod := objs[2]
	if pod.Kind != "Pod" || pod.Metadata.UID != "ftb00aa11-foo-web-1" || pod.Metadata.Labels["app"] != "web" ||
		pod.Spec.NodeName != "node1" || pod.Spec.ServiceAccountName != "web" || pod.Status.PodIP != "198.18.1.2" {
		t.Errorf("pod: %+v", pod)
	}
	env := tb.env()
	for _, want := range []string{"TB_PREFIX=ftb00aa11\n", "TB_LAYOUT=fabric\n", "TB_FERRY=none\n", `TB_NODES="node1"`, "TB_NODE1_IP=198.18.0.1\n",
		"TB_POD_FOO_WEB_1_NETNS=ftb00aa11-pod-foo-web-1\n"} {
		if !strings.Contains(env, want) {
			t.Errorf("testbed.env lacks %q:\n%s", want, env)
		}
	}
}
