package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var testEpoch = time.Unix(1765000000, 0).UTC()

func testSpec() spec {
	return spec{
		Binary:   []byte("#!fake ferry binary\n"),
		Arch:     "amd64",
		Version:  "v1.2.3",
		Revision: "0123456789abcdef0123456789abcdef01234567",
		Epoch:    testEpoch,
	}
}

// buildArchive builds s and writes it as a docker-archive; it returns the
// archive's bytes and the image digest.
func buildArchive(t *testing.T, s spec, tag string) ([]byte, v1.Hash) {
	t.Helper()
	img, err := build(s)
	if err != nil {
		t.Fatal(err)
	}
	digest, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "ferry-image.tar")
	ref, err := name.NewTag(tag, name.StrictValidation)
	if err != nil {
		t.Fatal(err)
	}
	if err := writeArchive(file, ref, img); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b, digest
}

// TestArchiveIsReproducible builds the image twice from the same inputs: the
// archives are byte for byte the same (so is the image digest), and moving the
// epoch changes the digest, which proves the epoch is what the times are.
func TestArchiveIsReproducible(t *testing.T) {
	a, da := buildArchive(t, testSpec(), "ghcr.io/ferrymesh/ferry:dev")
	b, db := buildArchive(t, testSpec(), "ghcr.io/ferrymesh/ferry:dev")
	if da != db {
		t.Errorf("image digest differs between two builds: %s, %s", da, db)
	}
	if !bytes.Equal(a, b) {
		t.Errorf("archives differ between two builds: sha256 %x, %x", sha256.Sum256(a), sha256.Sum256(b))
	}
	t.Logf("digest %s, archive sha256 %x", da, sha256.Sum256(a))

	later := testSpec()
	later.Epoch = testEpoch.Add(time.Second)
	if _, dl := buildArchive(t, later, "ghcr.io/ferrymesh/ferry:dev"); dl == da {
		t.Errorf("digest %s did not change with the epoch", dl)
	}
}

// TestArchiveLayout reads a written archive back as docker load and ctr
// import would: manifest.json names the tag, one layer holds exactly the
// expected entries with fixed modes, owner 0:0 and the epoch as every time.
func TestArchiveLayout(t *testing.T) {
	const tag = "ghcr.io/ferrymesh/ferry:test"
	raw, digest := buildArchive(t, testSpec(), tag)

	manifest := readTarFile(t, raw, "manifest.json")
	var m []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(manifest, &m); err != nil {
		t.Fatalf("manifest.json: %v\n%s", err, manifest)
	}
	if len(m) != 1 || !slices.Equal(m[0].RepoTags, []string{tag}) || len(m[0].Layers) != 1 {
		t.Fatalf("manifest.json = %s, want one image tagged %s with one layer", manifest, tag)
	}

	file := filepath.Join(t.TempDir(), "a.tar")
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := img.Digest(); err != nil || d != digest {
		t.Errorf("digest read back = %v, %v; built %s", d, err, digest)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	type attrs struct {
		mode int64
		typ  byte
	}
	want := map[string]attrs{
		"etc/":                              {0o755, tar.TypeDir},
		"etc/group":                         {0o644, tar.TypeReg},
		"etc/passwd":                        {0o644, tar.TypeReg},
		"etc/ssl/":                          {0o755, tar.TypeDir},
		"etc/ssl/certs/":                    {0o755, tar.TypeDir},
		"etc/ssl/certs/ca-certificates.crt": {0o644, tar.TypeReg},
		"tmp/":                              {0o1777, tar.TypeDir},
		"usr/":                              {0o755, tar.TypeDir},
		"usr/local/":                        {0o755, tar.TypeDir},
		"usr/local/bin/":                    {0o755, tar.TypeDir},
		"usr/local/bin/ferry":               {0o755, tar.TypeReg},
	}
	var names []string
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected entry %s", h.Name)
			continue
		}
		if h.Mode != w.mode || h.Typeflag != w.typ {
			t.Errorf("%s: mode %o type %c, want %o %c", h.Name, h.Mode, h.Typeflag, w.mode, w.typ)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d (%q:%q), want 0:0 without names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		if !h.ModTime.Equal(testEpoch) || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || len(h.PAXRecords) > 0 {
			t.Errorf("%s: times %v/%v/%v, PAX %v; want only the epoch %v", h.Name, h.ModTime, h.AccessTime, h.ChangeTime, h.PAXRecords, testEpoch)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		contents[h.Name] = b
	}
	if !slices.IsSorted(names) || len(names) != len(want) {
		t.Errorf("entries %q: want the %d expected ones, sorted", names, len(want))
	}
	if got := contents["usr/local/bin/ferry"]; !bytes.Equal(got, testSpec().Binary) {
		t.Errorf("ferry = %q, want the given binary", got)
	}
	if got := string(contents["etc/passwd"]); !strings.Contains(got, "\nnonroot:x:65532:65532:") || !strings.HasPrefix(got, "root:x:0:0:") {
		t.Errorf("/etc/passwd = %q, want root and nonroot 65532:65532", got)
	}
	if got := string(contents["etc/group"]); got != "root:x:0:\nnonroot:x:65532:\n" {
		t.Errorf("/etc/group = %q", got)
	}
	checkBundle(t, contents["etc/ssl/certs/ca-certificates.crt"])

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Equal(testEpoch) {
		t.Errorf("config: %s/%s created %v", cf.OS, cf.Architecture, cf.Created)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/ferry"}) || cf.Config.User != "65532:65532" || len(cf.Config.Cmd) != 0 {
		t.Errorf("config: entrypoint %q cmd %q user %q", cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.User)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.source":   "https://github.com/ferrymesh/ferry",
		"org.opencontainers.image.version":  "v1.2.3",
		"org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
	}
	for k, v := range wantLabels {
		if cf.Config.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
		}
	}
	if len(cf.History) != 1 || !cf.History[0].Created.Equal(testEpoch) {
		t.Errorf("history %+v: want one entry at the epoch", cf.History)
	}
	diffID, _ := layers[0].DiffID()
	if len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0] != diffID {
		t.Errorf("rootfs diff_ids %v, want [%s]", cf.RootFS.DiffIDs, diffID)
	}
}

// checkBundle wants a PEM bundle of parseable CA certificates and nothing else.
func checkBundle(t *testing.T, b []byte) {
	t.Helper()
	n := 0
	for len(b) > 0 {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			t.Fatalf("CA bundle: trailing non-PEM data %q", b)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil || !c.IsCA {
			t.Fatalf("CA bundle: certificate %d: CA %v, %v", n, c != nil && c.IsCA, err)
		}
		n++
	}
	if n < 100 {
		t.Errorf("CA bundle has %d certificates, want the Mozilla store (over 100)", n)
	}
}

func readTarFile(t *testing.T, archive []byte, file string) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the archive: %v", file, err)
		}
		if h.Name == file {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// TestOCILayout writes the OCI layout and reads the same image back from it.
func TestOCILayout(t *testing.T) {
	img, err := build(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	dir := filepath.Join(t.TempDir(), "oci")
	ref := name.MustParseReference("ghcr.io/ferrymesh/ferry:dev").(name.Tag)
	for range 2 { // the second write replaces the first
		if err := writeLayout(dir, ref, img); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Digest != want || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref.String() {
		t.Errorf("index.json manifests = %+v, want one: %s named %s", im.Manifests, want, ref)
	}
}

// TestRootfs lays the files out as the Dockerfile's build stage does: same
// paths, modes, contents and times as the layer.
func TestRootfs(t *testing.T) {
	es, err := entries(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := writeRootfs(dir, es, testEpoch); err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		fi, err := os.Lstat(filepath.Join(dir, e.Path))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != e.Mode {
			t.Errorf("%s: mode %v, want %v", e.Path, fi.Mode(), e.Mode)
		}
		if !fi.ModTime().Equal(testEpoch) {
			t.Errorf("%s: mtime %v, want %v", e.Path, fi.ModTime(), testEpoch)
		}
		if !e.Mode.IsDir() {
			if b, _ := os.ReadFile(filepath.Join(dir, e.Path)); !bytes.Equal(b, e.Data) {
				t.Errorf("%s: contents differ", e.Path)
			}
		}
	}
}

// TestCheckBinary refuses what would not start in the image: not an ELF file,
// a dynamically linked one, the wrong architecture.
func TestCheckBinary(t *testing.T) {
	notELF := filepath.Join(t.TempDir(), "ferry")
	if err := os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := checkBinary(notELF, "amd64"); err == nil {
		t.Error("a shell script passed the check")
	}
	if err := checkBinary(notELF, "riscv64"); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("riscv64: err = %v, want not supported", err)
	}
	sh, err := exec.LookPath("sh") // dynamically linked on every distribution
	if err != nil {
		t.Skip("no sh")
	}
	if err := checkBinary(sh, runtime.GOARCH); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("%s: err = %v, want dynamically linked", sh, err)
	}
	if other := map[string]string{"amd64": "arm64", "arm64": "amd64"}[runtime.GOARCH]; other != "" {
		if err := checkBinary(sh, other); err == nil || !strings.Contains(err.Error(), "GOARCH="+other) {
			t.Errorf("%s as %s: err = %v, want wrong architecture", sh, other, err)
		}
	}
}
