package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	binary := fs.String("binary", "", "the static ferry binary (CGO_ENABLED=0) to put in the image")
	arch := fs.String("arch", runtime.GOARCH, "the architecture the binary is built for (amd64, arm64)")
	tag := fs.String("tag", "ghcr.io/ferrymesh/ferry:dev", "the image reference, as deploy/ names it")
	version := fs.String("version", "", "org.opencontainers.image.version label")
	revision := fs.String("revision", "", "org.opencontainers.image.revision label (the git commit)")
	epochDefault := int64(0)
	if v := os.Getenv("SOURCE_DATE_EPOCH"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return fmt.Errorf("image: SOURCE_DATE_EPOCH=%q: want seconds since 1970", v)
		}
		epochDefault = n
	}
	epoch := fs.Int64("source-date-epoch", epochDefault, "every timestamp in the image, in seconds since 1970 (default $SOURCE_DATE_EPOCH, else 0)")
	out := fs.String("out", "", "write a docker-archive tarball here (ctr images import, docker load)")
	ociDir := fs.String("oci-layout", "", "also write an OCI image layout to this directory (replaced)")
	rootfs := fs.String("rootfs", "", "also write the image's files to this new directory (the Dockerfile's build stage)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *binary == "" || fs.NArg() > 0 {
		return fmt.Errorf("image: usage: image -binary FILE [-out FILE] [-oci-layout DIR] [-rootfs DIR] (see -h)")
	}
	if *out == "" && *ociDir == "" && *rootfs == "" {
		return fmt.Errorf("image: nothing to write: give -out, -oci-layout or -rootfs")
	}
	ref, err := name.NewTag(*tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image: -tag %q: %w", *tag, err)
	}
	if err := checkBinary(*binary, *arch); err != nil {
		return err
	}
	bin, err := os.ReadFile(*binary)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	s := spec{Binary: bin, Arch: *arch, Version: *version, Revision: *revision, Epoch: time.Unix(*epoch, 0)}
	if *rootfs != "" {
		es, err := entries(s)
		if err != nil {
			return err
		}
		if err := writeRootfs(*rootfs, es, s.Epoch); err != nil {
			return err
		}
	}
	if *out == "" && *ociDir == "" {
		return nil
	}
	img, err := build(s)
	if err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if *out != "" {
		if err := writeArchive(*out, ref, img); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s@%s (linux/%s)\n", *out, ref, digest, *arch)
	}
	if *ociDir != "" {
		if err := writeLayout(*ociDir, ref, img); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s %s@%s (OCI layout)\n", *ociDir, ref, digest)
	}
	return nil
}
