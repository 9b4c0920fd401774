# rollout-lab — see README.md. Every target works on a fresh machine with Go 1.26.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
MODULE   := github.com/rollout-lab/rollout-lab
# The lab's apiserver reports the Kubernetes version it is built from only when stamped.
K8S_LDFLAGS := -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 \
	-X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean
LDFLAGS  := -X $(MODULE)/runner/cli.Version=$(VERSION) -X $(MODULE)/cowweb/app.Version=$(VERSION) $(K8S_LDFLAGS)
FUZZTIME ?= 60s
PLAN     ?= plans/l640-rep8-rps200.yaml

.PHONY: build test lint fuzz run scale clean bench lab-deps

build: bin/runner bin/cowweb

bin/runner: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./runner

bin/cowweb: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cowweb

FORCE:

# The Debian packages the lab's kube-proxy execs: nft (nftables mode, and the lab reads every node's rules with it)
# and iptables (iptables mode); installed when missing, as root on Debian.
lab-deps:
	@missing=""; command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v iptables >/dev/null || missing="$$missing iptables"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (Debian packages the lab's kube-proxy execs)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The whole suite, end-to-end tests included.
test: lab-deps
	$(GO) test -count=1 -timeout 30m -ldflags "$(K8S_LDFLAGS)" ./...

lint:
	$(GO) vet ./...
	@unformatted="$$(gofmt -l $$(git ls-files '*.go'))"; \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi

# Fuzz the plan loader for a bounded time (FUZZTIME).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./plan

# The main job on the embedded lab (root: the lab gives each Pod a network namespace).
RUN_PLAN ?= plans/quick.yaml
run: bin/runner lab-deps
	bin/runner validate plans/*.yaml
	bin/runner apply $(RUN_PLAN)

# The lab at scale: 100 replicas on 5 nodes rolled over under load (about 75 s; ~1.1 GiB for the Pods).
scale: build lab-deps
	bin/runner apply plans/scale-rep100.yaml

clean:
	rm -rf bin

VEGETA := $(shell $(GO) env GOPATH)/bin/vegeta

$(VEGETA):
	$(GO) install github.com/tsenart/vegeta/v12@v12.13.0

# Performance figures (printed, not asserted): planned vs sent, runner vs vegeta max rate, Prometheus overhead, the
# lab's cost curve (8/50/100 replicas), the apply overhead, and (BENCH_REPORTS=dir,dir) `runner report` times.
BENCH_ONLY ?= 0
BENCH_REPORTS ?=
BENCH_MODES ?= nftables,iptables
bench: build lab-deps $(VEGETA)
	$(GO) run -ldflags "$(K8S_LDFLAGS)" ./bench -runner bin/runner -cowweb bin/cowweb -vegeta $(VEGETA) -only $(BENCH_ONLY) -reports "$(BENCH_REPORTS)" -modes $(BENCH_MODES)
