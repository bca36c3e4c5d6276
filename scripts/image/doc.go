// Command image builds Ferry's container image without Docker, reproducibly:
// `make image` runs it. The image is one layer holding the static ferry
// binary, a CA bundle, /etc/passwd and /etc/group with the CA's non-root user,
// and an empty /tmp — the same image the Dockerfile builds for users with
// Docker (the Dockerfile runs this command with -rootfs to lay out the files).
//
// Usage:
//
//	image -binary bin/linux_amd64/ferry [-arch amd64] [-tag ghcr.io/ferrymesh/ferry:dev]
//	      [-version V] [-revision R] [-source-date-epoch S]
//	      [-out bin/ferry-image.tar] [-oci-layout DIR] [-rootfs DIR]
//
// -out writes a docker-archive tarball (`ctr images import`, `docker load`);
// -oci-layout an OCI image layout directory; -rootfs the image's files as a
// plain directory tree.
//
// Reproducible: every timestamp is -source-date-epoch (default
// $SOURCE_DATE_EPOCH, else 0: the Makefile passes the last commit's time),
// entries are sorted, modes fixed and owned by 0:0, and the CA bundle is the
// Mozilla (NSS) root store pinned by go.sum through
// golang.org/x/crypto/x509roots/fallback rather than whatever the build host
// has in /etc/ssl; so two builds of one tree with one Go toolchain give the
// same bytes and the same image digest.
//
// This command is the only place the module uses go-containerregistry; the
// ferry binary never links it (cmd/ferry's deps test).
package main
