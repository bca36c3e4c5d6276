# Ferry's developer entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := bin/ferry
PKGS := ./...
FUZZTIME ?= 30s
STATICCHECK := $(shell command -v staticcheck || echo $$($(GO) env GOPATH)/bin/staticcheck)
# `make image`: deploy/ runs $(IMAGE):$(TAG). Same tree, same Go: same bytes.
IMAGE ?= ghcr.io/ferrymesh/ferry
TAG ?= dev
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGE_TAR ?= bin/ferry-image.tar
IMAGE_OCI ?= bin/ferry-image.oci
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: image help deps build test unit test-system test-privileged e2e lint vet generate check-generate fuzz bench demo demo-kube cleanup

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

deps: ## install apt packages, Go modules and tools this repo needs (idempotent)
	scripts/install-deps

build: ## build bin/ferry
	$(GO) build -o $(BIN) ./cmd/ferry

test: ## the full suite: installs what it needs, then lint, unit, interop, bench smoke and (as root) privileged tests
	scripts/test

unit: ## the unit tier: in process, no root, no child process, race detector (< 2 minutes)
	$(GO) test -race -short -count=1 $(PKGS)

test-system: ## the system tier: tests that spawn processes or run long, then the tunnel with raw system calls off
	$(GO) test -count=1 $(PKGS)
	FERRY_SOCKIO=plain $(GO) test -count=1 ./tunnel/...

test-privileged: build ## root-only tests: BPF, netlink, netns testbed, end to end
	PRIVILEGED_TESTS=1 $(GO) test -count=1 -p 1 -timeout 30m -run 'Privileged' $(PKGS)

e2e: test-privileged ## alias: the end-to-end tests are the privileged ones

vet: ## go vet
	$(GO) vet $(PKGS)

lint: vet ## go vet and staticcheck
	$(STATICCHECK) $(PKGS)

generate: ## regenerate bpf2go output with Debian's clang
	$(GO) generate ./bpf/...

check-generate: generate ## fail if regenerating changes committed files
	git diff --exit-code -- bpf/

fuzz: ## run every fuzz target for FUZZTIME each
	scripts/fuzz $(FUZZTIME)

bench: build ## the benchmark suite; writes bench/results.json
	scripts/bench

demo: deps build ## the mTLS migration walkthrough on the netns testbed (root)
	FERRY_BIN=$(CURDIR)/$(BIN) scripts/demo

demo-kube: deps ## the same walkthrough on a real kubelet node, Ferry installed from deploy/ (root; CAPTURE=node: deploy/capture-node)
	scripts/demo-kube $(if $(CAPTURE),--capture $(CAPTURE))

image: ## build the container image without Docker: bin/ferry-image.tar (docker-archive) and bin/ferry-image.oci
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -buildvcs=false \
	  -ldflags "-s -w -X main.version=$(VERSION)" -o bin/linux_$(IMAGE_ARCH)/ferry ./cmd/ferry
	$(GO) run ./scripts/image -binary bin/linux_$(IMAGE_ARCH)/ferry -arch $(IMAGE_ARCH) -tag $(IMAGE):$(TAG) \
	  -version $(VERSION) -revision "$(REVISION)" -source-date-epoch $(SOURCE_DATE_EPOCH) \
	  -out $(IMAGE_TAR) -oci-layout $(IMAGE_OCI)

cleanup: build ## remove every kernel object Ferry owns in this network namespace
	$(BIN) cleanup
