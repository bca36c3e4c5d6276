package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/x509"
	"debug/elf"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// The image's layout. deploy/base/ca.yaml runs the CA as nonUser:nonGroup
// (runAsUser/runAsGroup/fsGroup 65532, distroless's "nonroot"); the agent
// overrides the default user with runAsUser: 0 for its capabilities.
const (
	binaryPath = "usr/local/bin/ferry"
	certsPath  = "etc/ssl/certs/ca-certificates.crt"
	nonUser    = 65532
	nonGroup   = 65532
	sourceURL  = "https://github.com/ferrymesh/ferry"
)

// spec is what goes into the image. The zero Epoch is the Unix epoch.
type spec struct {
	Binary   []byte // the static ferry binary
	Arch     string // GOARCH: amd64, arm64
	Version  string // org.opencontainers.image.version; "" leaves the label out
	Revision string // org.opencontainers.image.revision (the git commit); "" leaves it out
	Epoch    time.Time
}

// entry is one file or directory of the layer.
type entry struct {
	Path string      // relative, slash-separated, no trailing slash
	Mode fs.FileMode // permission bits plus fs.ModeDir or fs.ModeSticky
	Data []byte      // nil for directories
}

// entries returns the image's files and directories, parents before
// children, sorted by path. Everything is owned by 0:0: the non-root user
// needs to own nothing (the CA reads its key from a Secret volume).
func entries(s spec) ([]entry, error) {
	certs, err := caBundle()
	if err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/nonexistent:/sbin/nologin\n", nonUser, nonGroup)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonGroup)
	es := []entry{
		{Path: "etc", Mode: fs.ModeDir | 0o755},
		{Path: "etc/group", Mode: 0o644, Data: []byte(group)},
		{Path: "etc/passwd", Mode: 0o644, Data: []byte(passwd)},
		{Path: "etc/ssl", Mode: fs.ModeDir | 0o755},
		{Path: "etc/ssl/certs", Mode: fs.ModeDir | 0o755},
		{Path: certsPath, Mode: 0o644, Data: certs},
		// Go's os.TempDir; the DaemonSet mounts an emptyDir over it, but
		// `docker run` and the CA (read-only root, no /tmp mount) get this one.
		{Path: "tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "usr", Mode: fs.ModeDir | 0o755},
		{Path: "usr/local", Mode: fs.ModeDir | 0o755},
		{Path: "usr/local/bin", Mode: fs.ModeDir | 0o755},
		{Path: binaryPath, Mode: 0o755, Data: s.Binary},
	}
	slices.SortFunc(es, func(a, b entry) int { return cmpPath(a.Path, b.Path) })
	return es, nil
}

// cmpPath orders paths component by component, so a directory comes right
// before its children ("etc/ssl" < "etc/ssl/certs" < "etc/ssl-x").
func cmpPath(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// caBundle is the Mozilla root store as PEM, pinned by go.sum (the
// x509roots/fallback module) instead of the build host's
// /etc/ssl/certs/ca-certificates.crt, which differs between machines and days.
// Roots NSS trusts only with extra constraints (certificates issued before a
// distrust date) are left out: a PEM bundle cannot carry the constraint, and
// trusting them fully would be wider than NSS does. Ferry itself needs no
// public root (it trusts the mesh root and the cluster's CA); the bundle is
// for what users run against public endpoints.
func caBundle() ([]byte, error) {
	var b bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		if _, err := x509.ParseCertificate(r.Certificate); err != nil {
			return nil, fmt.Errorf("image: CA bundle: %w", err)
		}
		if err := pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate}); err != nil {
			return nil, err
		}
	}
	if b.Len() == 0 {
		return nil, errors.New("image: CA bundle is empty")
	}
	return b.Bytes(), nil
}

// layerTar is the layer as an uncompressed tar: USTAR headers (no PAX
// records, so no access or change times), every time set to epoch, owner 0:0
// with no user or group names.
func layerTar(es []entry, epoch time.Time) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{
			Name:    e.Path,
			Mode:    int64(e.Mode.Perm()),
			ModTime: epoch,
			Format:  tar.FormatUSTAR,
		}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if e.Mode.IsDir() {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("image: tar %s: %w", e.Path, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			return nil, fmt.Errorf("image: tar %s: %w", e.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// build assembles the image: one layer, Docker schema 2 media types (what a
// docker-archive carries), linux/s.Arch, entrypoint the ferry binary, default
// user the CA's non-root one.
func build(s spec) (v1.Image, error) {
	if s.Arch == "" {
		return nil, errors.New("image: no architecture")
	}
	epoch := s.Epoch.UTC()
	es, err := entries(s)
	if err != nil {
		return nil, err
	}
	raw, err := layerTar(es, epoch)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithCompressionLevel(gzip.BestCompression))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	labels := map[string]string{"org.opencontainers.image.source": sourceURL}
	if s.Version != "" {
		labels["org.opencontainers.image.version"] = s.Version
	}
	if s.Revision != "" {
		labels["org.opencontainers.image.revision"] = s.Revision
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: s.Arch,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config: v1.Config{
			Entrypoint: []string{"/" + binaryPath},
			User:       fmt.Sprintf("%d:%d", nonUser, nonGroup),
			Env:        []string{"PATH=/usr/local/bin"},
			Labels:     labels,
		},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "scripts/image",
			Comment:   "ferry, CA certificates, /etc/passwd and /etc/group",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image: append layer: %w", err)
	}
	return img, nil
}

// writeArchive writes img as a docker-archive tarball tagged ref, through a
// temporary file renamed into place so a failed build leaves no half archive.
func writeArchive(file string, ref name.Tag, img v1.Image) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(file), ".ferry-image-*")
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tarball.Write(ref, img, tmp); err != nil {
		return fmt.Errorf("image: write %s: %w", file, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("image: write %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	return nil
}

// writeLayout replaces dir with an OCI image layout holding img, annotated
// with ref as its name (containerd's convention: the full reference).
func writeLayout(dir string, ref name.Tag, img v1.Image) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("image: OCI layout %s: %w", dir, err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref.String(),
	})); err != nil {
		return fmt.Errorf("image: OCI layout %s: %w", dir, err)
	}
	return nil
}

// writeRootfs lays the image's files out under dir (which must not exist),
// for the Dockerfile to COPY into a scratch image. Ownership is the caller's
// (root in a Docker build stage).
func writeRootfs(dir string, es []entry, epoch time.Time) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("image: rootfs: %w", err)
	}
	for _, e := range es {
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		if e.Mode.IsDir() {
			if err := os.Mkdir(p, 0o700); err != nil {
				return fmt.Errorf("image: rootfs: %w", err)
			}
		} else if err := os.WriteFile(p, e.Data, 0o600); err != nil {
			return fmt.Errorf("image: rootfs: %w", err)
		}
		// Chmod after creation: the umask does not apply, and the sticky bit
		// is kept.
		if err := os.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSticky)); err != nil {
			return fmt.Errorf("image: rootfs: %w", err)
		}
	}
	// Times last: creating children changes a directory's mtime.
	for _, e := range slices.Backward(es) {
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		if err := os.Chtimes(p, epoch, epoch); err != nil {
			return fmt.Errorf("image: rootfs: %w", err)
		}
	}
	if err := os.Chtimes(dir, epoch, epoch); err != nil {
		return fmt.Errorf("image: rootfs: %w", err)
	}
	return nil
}

// checkBinary fails unless file is a statically linked ELF executable for
// arch: a dynamically linked one (cgo) would not start in an image without a
// libc.
func checkBinary(file, arch string) error {
	want := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch]
	if want == elf.EM_NONE {
		return fmt.Errorf("image: architecture %q not supported (amd64, arm64)", arch)
	}
	f, err := elf.Open(file)
	if err != nil {
		return fmt.Errorf("image: %s is not an ELF executable: %w", file, err)
	}
	defer f.Close()
	if f.Machine != want {
		return fmt.Errorf("image: %s is built for %v, not %s: build with GOARCH=%s", file, f.Machine, arch, arch)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("image: %s is dynamically linked: build it with CGO_ENABLED=0", file)
		}
	}
	return nil
}
