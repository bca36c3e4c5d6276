# Ferry's image for users with Docker. `make image` builds the same image
# without Docker (scripts/image: bin/ferry-image.tar, reproducible); this file
# describes it: one static binary (the agent, the CA and the CLI), the Mozilla
# CA bundle pinned by go.sum, /etc/passwd and /etc/group with the CA's
# non-root user 65532, an empty /tmp, nothing else (no shell, no libc). The
# BPF objects are embedded (bpf2go output is committed), so no clang.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) \
#     --build-arg REVISION=$(git rev-parse HEAD) -t ghcr.io/ferrymesh/ferry:dev .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the
# Go cross-compiles; no emulation needed). Docker stamps its own times, so
# only `make image` gives the same digest twice.

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH=amd64 VERSION=dev
# The Makefile's `image` flags; scripts/image lays out the same files as the
# layer of bin/ferry-image.tar (modes, contents), owned by root here.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/ferry ./cmd/ferry && \
    go run ./scripts/image -binary /out/ferry -arch $TARGETARCH -rootfs /out/rootfs

FROM scratch
COPY --from=build /out/rootfs/ /
ARG VERSION=dev REVISION=
LABEL org.opencontainers.image.source="https://github.com/ferrymesh/ferry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV PATH=/usr/local/bin
# The CA runs as this user (deploy/base/ca.yaml); the agent sets runAsUser: 0
# for the capabilities deploy/base/agent.yaml grants.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/ferry"]
