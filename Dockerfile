# Ferry's image: one static binary (the agent, the CA and the CLI), on
# distroless. The BPF objects are embedded (bpf2go output is committed), so
# the build needs no clang. Not built by the tests; `make image` builds it.
#
#   docker build --build-arg VERSION=$(git describe --always) -t ghcr.io/ferrymesh/ferry:dev .
#
# Multi-arch: docker buildx build --platform linux/amd64,linux/arm64 ... (the
# Go cross-compiles; no emulation needed).

ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH=amd64 VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION}" -o /out/ferry ./cmd/ferry

# static-debian12 has CA certificates, /etc/passwd with nonroot (65532) and
# nothing else: no shell, no package manager. The agent runs as root with
# the capabilities deploy/base/agent.yaml grants; the CA as 65532.
FROM gcr.io/distroless/static-debian12:latest
COPY --from=build /out/ferry /usr/local/bin/ferry
ENTRYPOINT ["/usr/local/bin/ferry"]
