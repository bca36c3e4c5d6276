package kubenode

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"slices"
	"strings"
)

// Image describes a one-layer container image for WriteImage: a few files
// (typically one static binary) and how to run it.
type Image struct {
	// Ref is the image reference the archive tags, e.g. "ferry.test/pause:1".
	Ref string
	// Files maps absolute paths inside the image to their contents; each
	// is written with mode 0755 (binaries) or, when Modes names it, that mode.
	Files map[string][]byte
	Modes map[string]os.FileMode
	// Entrypoint is the command the container runs.
	Entrypoint []string
	// User is the user the container runs as ("" = root, or e.g. "65532:65532").
	User string
}

// WriteImage writes img to w as a docker-archive (what `docker save`
// writes and `ctr images import` loads): manifest.json, the image config and
// one uncompressed layer tar. The output is a function of img only (fixed
// timestamps, sorted entries), so the same input gives the same image ID.
func WriteImage(w io.Writer, img Image) error {
	if img.Ref == "" || len(img.Entrypoint) == 0 || len(img.Files) == 0 {
		return errors.New("kubenode: image needs a Ref, an Entrypoint and at least one file")
	}
	var layer bytes.Buffer
	lt := tar.NewWriter(&layer)
	names := make([]string, 0, len(img.Files))
	for name := range img.Files {
		if !path.IsAbs(name) {
			return fmt.Errorf("kubenode: image %s: file %q: want an absolute path", img.Ref, name)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	dirs := map[string]bool{}
	for _, name := range names {
		// Parent directories first, each once.
		var parents []string
		for d := path.Dir(name); d != "/"; d = path.Dir(d) {
			parents = append(parents, d)
		}
		slices.Reverse(parents)
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := lt.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
		mode := os.FileMode(0o755)
		if m, ok := img.Modes[name]; ok {
			mode = m
		}
		b := img.Files[name]
		if err := lt.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(name, "/"), Mode: int64(mode.Perm()), Size: int64(len(b)), Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := lt.Write(b); err != nil {
			return err
		}
	}
	if err := lt.Close(); err != nil {
		return err
	}
	diffID := sha256.Sum256(layer.Bytes())
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": img.Entrypoint, "User": img.User},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	if err != nil {
		return err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config": configName, "RepoTags": []string{img.Ref}, "Layers": []string{"layer/layer.tar"},
	}})
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	for _, f := range []struct {
		name string
		b    []byte
	}{{configName, config}, {"layer/layer.tar", layer.Bytes()}, {"manifest.json", manifest}} {
		if strings.HasPrefix(f.name, "layer/") {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "layer/", Mode: 0o755, Format: tar.FormatPAX}); err != nil {
				return err
			}
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.b)), Format: tar.FormatPAX}); err != nil {
			return err
		}
		if _, err := tw.Write(f.b); err != nil {
			return err
		}
	}
	return tw.Close()
}

// WriteImageFile writes img as a docker-archive to the file at dst.
func WriteImageFile(dst string, img Image) error {
	f, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("kubenode: %w", err)
	}
	if err := WriteImage(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// BuildStatic builds the Go package pkg (e.g. "./scripts/podapp") of the
// module in moduleDir as a static linux binary (CGO_ENABLED=0, -trimpath)
// at out, for use in an image.
func BuildStatic(ctx context.Context, moduleDir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kubenode: go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
