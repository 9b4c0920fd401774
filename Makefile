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

.PHONY: build test lint fuzz run scale clean bench

build: bin/runner bin/cowweb

bin/runner: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./runner

bin/cowweb: FORCE
	$(GO) build -ldflags "$(LDFLAGS)" -o $@ ./cowweb

FORCE:

# The whole suite, end-to-end tests included.
test:
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
run: bin/runner
	bin/runner validate plans/*.yaml
	bin/runner apply $(RUN_PLAN)

# The lab at scale: 100 replicas on 5 nodes rolled over under load (about 75 s; ~1.1 GiB for the Pods).
scale: build
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
bench: build $(VEGETA)
	$(GO) run -ldflags "$(K8S_LDFLAGS)" ./bench -runner bin/runner -cowweb bin/cowweb -vegeta $(VEGETA) -only $(BENCH_ONLY) -reports "$(BENCH_REPORTS)"
