# meshlb — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin
export PATH := $(CURDIR)/bin:$(PATH)

.PHONY: all build test deps deps-consul deps-python deps-tools deps-h2spec deps-jaeger demo bench soak fmt vet fuzz clean generate

all: build

build: $(BIN)/agent $(BIN)/registrar

$(BIN)/agent: FORCE
	$(GO) build -o $@ ./cmd/agent
$(BIN)/registrar: FORCE
	$(GO) build -o $@ ./cmd/registrar
FORCE:

# deps installs what the tests and the demo need on a fresh machine: Consul
# (built from the MPL-2.0 v1.16.1 source, cached outside the clone), Tornado
# (Debian's python3-tornado, else pip), the tools the tests drive, and
# Jaeger all-in-one (built from the Go module proxy, cached like Consul) for
# the test of `make demo TRACE=1`.
deps: deps-consul deps-python deps-tools deps-h2spec deps-jaeger

deps-consul:
	@bash deploy/consul/install.sh >/dev/null

deps-python:
	@bash scripts/ensure-python.sh >/dev/null

deps-tools:
	@bash scripts/ensure-tools.sh

deps-h2spec:
	@bash scripts/ensure-h2spec.sh >/dev/null

deps-jaeger:
	@bash deploy/jaeger/install.sh >/dev/null

# test runs every test, with the race detector, against a real Consul and
# real Tornado processes, plus a short fuzz run.
test: deps build
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) --no-print-directory fuzz

FUZZTIME ?= 5s
fuzz:
	@set -e; for t in $$(grep -rhoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' . | sed 's/^func //' | sort -u); do \
	  pkg=$$(grep -rlE "^func $$t\(" --include='*_test.go' . | head -1 | xargs dirname); \
	  echo "fuzz $$t in $$pkg for $(FUZZTIME)"; \
	  $(GO) test -run='^$$' -fuzz="^$$t$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

# demo runs the classic example: Consul, five Tornado instances under
# registrars on 8071-8075, the agent on 8070. Ctrl-C stops everything.
# TRACE=1 adds Jaeger as the trace backend (registrars in mesh mode).
TRACE ?= 0
demo: deps-consul deps-python build
	@TRACE=$(TRACE) bash examples/demo.sh

bench: deps build
	@bash bench/run.sh

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)

# generate regenerates the checked-in gRPC/protobuf code of the admin API
# (internal/admin/adminpb) from its .proto. It installs what is missing:
# protoc from Debian's protobuf-compiler, protoc-gen-go at the
# google.golang.org/protobuf version in go.mod, protoc-gen-go-grpc into GOBIN.
# Tests never need protoc: the generated code is committed.
GOBIN_DIR := $(shell $(GO) env GOBIN)
ifeq ($(GOBIN_DIR),)
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
endif
PROTO_GEN_GO_GRPC_VERSION ?= v1.6.2

generate:
	@command -v protoc >/dev/null || { \
	  sudo_=""; [ "$$(id -u)" = 0 ] || sudo_=sudo; \
	  $$sudo_ apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo_ apt-get install -y -qq protobuf-compiler >/dev/null; }
	@[ -x "$(GOBIN_DIR)/protoc-gen-go" ] || \
	  $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$$($(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
	@[ -x "$(GOBIN_DIR)/protoc-gen-go-grpc" ] || \
	  $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTO_GEN_GO_GRPC_VERSION)
	PATH="$(GOBIN_DIR):$$PATH" protoc -I internal/admin/adminpb \
	  --go_out=internal/admin/adminpb --go_opt=paths=source_relative \
	  --go-grpc_out=internal/admin/adminpb --go-grpc_opt=paths=source_relative \
	  internal/admin/adminpb/admin.proto

# soak runs the agent for SOAK (10m) under GET and POST load with instance
# churn (drained replacements and SIGKILLs) and reports failed requests,
# memory growth and goroutines. Not part of `make test`.
SOAK ?= 10m
soak: deps build
	$(GO) run ./bench/soak -duration $(SOAK)
