package testbed

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	spec := func(text string) Spec {
		s, err := ParseSpec(strings.NewReader(text))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	two := spec("pod a/one node1\npod a/two node2\n")
	for _, tc := range []struct {
		name       string
		cfg        Config
		wantErr    string // "" for none
		wantLayout Layout
		wantNodes  int
	}{
		{name: "default layout", cfg: Config{Spec: two, NoMesh: true}, wantLayout: LayoutFabric, wantNodes: 2},
		{name: "no podapp: pods without servers", cfg: Config{Spec: two, NoMesh: true, Nodes: 3}, wantLayout: LayoutFabric, wantNodes: 3},
		{name: "direct", cfg: Config{Spec: two, NoMesh: true, Layout: LayoutDirect}, wantLayout: LayoutDirect, wantNodes: 2},
		{name: "direct, one node used", cfg: Config{Spec: spec("pod a/one node1\n"), NoMesh: true, Layout: LayoutDirect},
			wantLayout: LayoutDirect, wantNodes: 2},
		{name: "direct, three nodes", cfg: Config{Spec: spec("pod a/one node3\n"), NoMesh: true, Layout: LayoutDirect},
			wantErr: "layout direct has two"},
		{name: "direct with agents", cfg: Config{Spec: two, Ferry: "/bin/ferry", Layout: LayoutDirect}, wantErr: "set NoMesh"},
		{name: "unknown layout", cfg: Config{Spec: two, NoMesh: true, Layout: "ring"}, wantErr: "unknown layout"},
		{name: "agents without ferry", cfg: Config{Spec: two}, wantErr: "no ferry binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.validate()
			switch {
			case tc.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("validate() = %v, want an error with %q", err, tc.wantErr)
				}
			case err != nil:
				t.Fatalf("validate() = %v", err)
			case cfg.Layout != tc.wantLayout || cfg.Nodes != tc.wantNodes:
				t.Errorf("layout %s with %d nodes, want %s with %d", cfg.Layout, cfg.Nodes, tc.wantLayout, tc.wantNodes)
			}
		})
	}
}
