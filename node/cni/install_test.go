package cni

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/install/*.golden")

// fakeBinary stands in for the ferry binary that Install copies.
const fakeBinary = "#!/bin/false\nthe ferry binary\n"

// installDirs copies testdata/install/name (if any) into a fresh CNI
// configuration directory with files of mode perm, and returns it with an
// empty binary directory and the path of a fake ferry binary.
func installDirs(t *testing.T, name string, perm fs.FileMode) (confDir, binDir, self string) {
	t.Helper()
	root := t.TempDir()
	confDir, binDir = filepath.Join(root, "net.d"), filepath.Join(root, "bin")
	self = filepath.Join(root, "ferry")
	for _, d := range []string{confDir, binDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(self, []byte(fakeBinary), 0o755); err != nil {
		t.Fatal(err)
	}
	if name == "" {
		return confDir, binDir, self
	}
	ents, err := os.ReadDir(filepath.Join("testdata", "install", name))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("testdata", "install", name, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(confDir, e.Name()), b, perm); err != nil {
			t.Fatal(err)
		}
	}
	return confDir, binDir, self
}

// dumpDirs describes every file in dirs, with its mode and content.
func dumpDirs(t *testing.T, dirs ...string) string {
	t.Helper()
	var b strings.Builder
	for _, dir := range dirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			content, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "== %s/%s %v\n%s", filepath.Base(dir), e.Name(), fi.Mode(), content)
		}
	}
	return b.String()
}

func readFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	return files
}

// TestInstall installs into each testdata/install directory and compares the
// result, then the result of Uninstall, with testdata/install/NAME.golden.
// Install twice must change nothing the second time, and Uninstall must leave
// every file it has no entry in byte for byte.
func TestInstall(t *testing.T) {
	conf := Conf{Timeout: 20 * time.Second}
	for _, tc := range []struct {
		name    string
		primary string // the list that holds our entry after Install
		perm    fs.FileMode
	}{
		{"bridge", "10-bridge.conflist", 0o644},
		{"ptp", "10-ptp.conflist", 0o600},          // a second list and a README stay untouched; mode kept
		{"macvlan", "10-macvlan.conflist", 0o644},  // a single .conf becomes a list
		{"installed", "10-bridge.conflist", 0o644}, // an old entry is updated in place, a duplicate dropped
	} {
		t.Run(tc.name, func(t *testing.T) {
			confDir, binDir, self := installDirs(t, tc.name, tc.perm)
			before := readFiles(t, confDir)
			if err := Install(confDir, binDir, self, conf); err != nil {
				t.Fatalf("Install: %v", err)
			}
			installed := dumpDirs(t, confDir, binDir)

			// Idempotent: the second time rewrites nothing.
			fi1, err := os.Stat(filepath.Join(confDir, tc.primary))
			if err != nil {
				t.Fatal(err)
			}
			if err := Install(confDir, binDir, self, conf); err != nil {
				t.Fatalf("Install again: %v", err)
			}
			if again := dumpDirs(t, confDir, binDir); again != installed {
				t.Errorf("second Install changed the directories:\n%s\nwant\n%s", again, installed)
			}
			if fi2, err := os.Stat(filepath.Join(confDir, tc.primary)); err != nil || !os.SameFile(fi1, fi2) {
				t.Errorf("second Install rewrote %s", tc.primary)
			}

			if err := Uninstall(confDir, binDir); err != nil {
				t.Fatalf("Uninstall: %v", err)
			}
			uninstalled := dumpDirs(t, confDir, binDir)
			if strings.Contains(uninstalled, PluginType) {
				t.Errorf("Uninstall left ferry-cni behind:\n%s", uninstalled)
			}
			after := readFiles(t, confDir)
			for name, b := range before {
				if name != tc.primary && !strings.HasPrefix(tc.primary, strings.TrimSuffix(name, filepath.Ext(name))+".") && !bytes.Equal(after[name], b) {
					t.Errorf("Install and Uninstall changed %s, which is not ours", name)
				}
			}
			if err := Uninstall(confDir, binDir); err != nil {
				t.Errorf("Uninstall again: %v", err)
			}
			if again := dumpDirs(t, confDir, binDir); again != uninstalled {
				t.Errorf("second Uninstall changed the directories:\n%s\nwant\n%s", again, uninstalled)
			}

			got := "# after Install\n" + installed + "# after Uninstall\n" + uninstalled
			golden := filepath.Join("testdata", "install", tc.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (go test -run TestInstall -update writes it)", err)
			}
			if got != string(want) {
				t.Errorf("got\n%s\nwant (%s)\n%s", got, golden, want)
			}
		})
	}
}

func TestInstallErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, confDir, binDir, self string) (string, string, string)
		noConf  bool // want ErrNoConfig
		wantErr string
	}{
		{"missing configuration directory", func(t *testing.T, c, b, s string) (string, string, string) {
			return filepath.Join(c, "missing"), b, s
		}, true, ""},
		{"empty configuration directory", nil, true, ""},
		{"no configuration among other files", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "README.md"), "{}")
			write(t, filepath.Join(c, ".ferry-cni-123.tmp"), "{}")
			if err := os.Mkdir(filepath.Join(c, "dir.conf"), 0o755); err != nil {
				t.Fatal(err)
			}
			return c, b, s
		}, true, ""},
		{"not JSON", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "10-bad.conflist"), `{"plugins": [`)
			return c, b, s
		}, false, "parse"},
		{"plugins not a list", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "10-bad.conflist"), `{"plugins": {}}`)
			return c, b, s
		}, false, "not a list"},
		{"conversion target exists", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "10-x.conf"), `{"name":"x","type":"bridge"}`)
			write(t, filepath.Join(c, "10-x.conflist"), `{"name":"y","plugins":[]}`)
			return c, b, s
		}, false, "exists"},
		{"missing binary directory", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "10-x.conflist"), `{"name":"y","plugins":[]}`)
			return c, filepath.Join(b, "missing"), s
		}, false, "missing"},
		{"missing binary", func(t *testing.T, c, b, s string) (string, string, string) {
			write(t, filepath.Join(c, "10-x.conflist"), `{"name":"y","plugins":[]}`)
			return c, b, s + ".missing"
		}, false, "ferry.missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			confDir, binDir, self := installDirs(t, "", 0)
			if tc.setup != nil {
				confDir, binDir, self = tc.setup(t, confDir, binDir, self)
			}
			before := readFiles(t, confDir)
			err := Install(confDir, binDir, self, Conf{})
			if err == nil || errors.Is(err, ErrNoConfig) != tc.noConf || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Install = %v, want an error (ErrNoConfig: %v) containing %q", err, tc.noConf, tc.wantErr)
			}
			if after := readFiles(t, confDir); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("a failed Install changed the configuration directory")
			}
			if _, err := os.Stat(filepath.Join(binDir, PluginType)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a failed Install left its binary: %v", err)
			}
		})
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestUninstallLeavesOthers(t *testing.T) {
	confDir, binDir, _ := installDirs(t, "", 0)
	missing := filepath.Join(confDir, "missing")
	if err := Uninstall(missing, missing); err != nil {
		t.Errorf("Uninstall of missing directories: %v", err)
	}
	files := map[string]string{
		"10-x.conflist": `{"name":"x","plugins":[{"type":"bridge"}]}`,
		"20-y.conf":     `{"name":"y","type":"ferry-cni"}`, // a single plugin: not an entry Install makes
		"30-bad.json":   `{"plugins":[{"type":"ferry-cni"}`,
		"notes.txt":     `{"plugins":[{"type":"ferry-cni"}]}`,
	}
	for name, s := range files {
		write(t, filepath.Join(confDir, name), s)
	}
	write(t, filepath.Join(binDir, "bridge"), "bridge")
	if err := Uninstall(confDir, binDir); err != nil {
		t.Fatal(err)
	}
	for name, s := range files {
		if b, err := os.ReadFile(filepath.Join(confDir, name)); err != nil || string(b) != s {
			t.Errorf("%s changed: %q %v", name, b, err)
		}
	}
	if _, err := os.Stat(filepath.Join(binDir, "bridge")); err != nil {
		t.Errorf("another plugin's binary: %v", err)
	}
}
