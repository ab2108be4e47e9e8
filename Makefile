# payservice — everyday commands. `make help` lists them.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# `make run` and `make migrate` talk to a local stack: `docker compose up -d
# postgres redis fakeprovider` provides one on these addresses. Override any
# of them on the command line or in the environment.
DATABASE_URL ?= postgres://payservice:payservice@localhost:5432/payservice?sslmode=disable
REDIS_URL    ?= redis://localhost:6379/0
PROVIDER_URL ?= http://localhost:8081
API_KEYS     ?= dev_client:dev_key_do_not_use_in_production

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## build bin/server and bin/fakeprovider
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/ ./cmd/...

.PHONY: run
run: build ## run the server against the local stack
	DATABASE_URL='$(DATABASE_URL)' REDIS_URL='$(REDIS_URL)' PROVIDER_URL='$(PROVIDER_URL)' \
	API_KEYS='$(API_KEYS)' LOG_FORMAT=text ./bin/server

.PHONY: migrate
migrate: ## apply database migrations to DATABASE_URL
	DATABASE_URL='$(DATABASE_URL)' LOG_FORMAT=text $(GO) run ./cmd/server migrate

# Turn a copy of the template into a service of its own: NAME replaces the
# template's name wherever gonew leaves it (images, metrics, Kubernetes,
# compose, docs, scripts' run bits), MODULE its module path; see
# internal/tools/rename. NAME only from the command line: some systems
# (WSL) export a NAME of their own.
.PHONY: rename
rename: ## rename the copy: NAME=ledger [MODULE=example.com/acme/ledger]
	@$(if $(filter command line,$(origin NAME)),,echo "make rename: NAME is required: make rename NAME=ledger [MODULE=example.com/acme/ledger]" >&2; exit 2)
	$(GO) run ./internal/tools/rename -name '$(NAME)' $(if $(MODULE),-module '$(MODULE)')

# A copy made with gonew has no deploy_test/ or bench/: a module zip leaves
# out every directory with a go.mod of its own. The targets that need one
# stop first and say so, rather than half-run and fail on a missing directory.
need-modules = @missing=; for m in $(1); do [ -f "$$m/go.mod" ] || missing="$$missing $$m/"; done; \
	[ -z "$$missing" ] || { echo "make $@:$$missing missing. A copy made with gonew lacks the nested modules (a module zip leaves out every directory with a go.mod of its own): copy them from a clone of the template, or take them out of this target." >&2; exit 1; }

# Unit and integration tests, with the race detector. Integration tests start
# Postgres and Redis with testcontainers-go: they need Docker, and fail (not
# skip) without it. -count=1: containers are state the test cache cannot see.
# TESTFLAGS=-v shows every test and container start (CI uses it as a record).
TESTFLAGS ?=
.PHONY: test
test: ## run every test (unit + integration, manifests and compose) with -race
	$(call need-modules,deploy_test)
	$(GO) test -race -count=1 -timeout 15m $(TESTFLAGS) ./...
	$(GO) -C deploy_test test -count=1 $(TESTFLAGS) ./...

# The service and the two side modules (deploy_test, bench), each vetted
# and checked by golangci-lint with .golangci.yml (staticcheck and a few
# bug-class linters; see there). The tags k8se2e and prometheus take the
# Kubernetes suite and the live observability test in too. actionlint
# checks the GitHub workflow as GitHub reads it; rules-test (promtool)
# the Prometheus rules.
# golangci-lint and actionlint run at the versions pinned here, built by
# `go run` outside every module: as `tool`s of go.mod their modules would
# join the service's module graph, raise the versions the service builds
# with, and clash (actionlint needs a yaml/v4 release candidate whose API
# the v4.0.0 that kin-openapi requires changed).
MODULES := . deploy_test bench
GOLANGCI_LINT := github.com/golangci/golangci-lint/v2/cmd/golangci-lint@v2.15.0
ACTIONLINT    := github.com/rhysd/actionlint/cmd/actionlint@v1.7.12
.PHONY: lint
lint: rules-test ## gofmt check, go vet, golangci-lint in every module, actionlint, promtool
	$(call need-modules,$(MODULES))
	$(GO) run $(ACTIONLINT) .github/workflows/ci.yml
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	@for m in $(MODULES); do \
		echo "vet + golangci-lint: $$m"; \
		(cd $$m && GOFLAGS=-tags=k8se2e,prometheus $(GO) vet ./... && \
			$(GO) run $(GOLANGCI_LINT) run --config '$(CURDIR)/.golangci.yml' ./...) || exit 1; \
	done

# The observability files (Prometheus rules, their SLO unit tests, the
# Grafana dashboard) are generated from observability/: slos.yaml,
# alerts.go, dashboard.go. A test in `make test` fails while one is stale.
.PHONY: generate
generate: ## regenerate observability/'s rules, rule tests and dashboard
	$(GO) run ./internal/tools/obsgen

# promtool (Prometheus's own checker; Debian and Ubuntu ship it in the
# prometheus package): the rules must load, and their unit tests
# (observability/prometheus/tests) pass: every alert fires on the traffic
# it is for and stays quiet on the rest, the low-traffic guard included.
PROMTOOL ?= promtool
.PHONY: rules-test
rules-test: ## check the Prometheus rules and run their unit tests (promtool)
	@command -v $(PROMTOOL) >/dev/null || { echo "make $@: $(PROMTOOL) not found: install Prometheus's tools (apt-get install prometheus) or set PROMTOOL" >&2; exit 1; }
	$(PROMTOOL) check rules observability/prometheus/rules.yml
	cd observability/prometheus && $(PROMTOOL) test rules tests/*_test.yml

# Known vulnerabilities the service's code reaches (govulncheck), from the
# Go vulnerability database GOVULNDB (vuln.go.dev, or a copy of it as
# .ci/offline/vulndb.sh makes where that cannot be reached). Fails on any;
# VULN_STDLIB=warn only reports those of the standard library, which the
# toolchain fixes, not go.mod: for a machine whose Go cannot move.
GOVULNCHECK := golang.org/x/vuln/cmd/govulncheck@v1.9.0
GOVULNDB    ?= https://vuln.go.dev
VULN_STDLIB ?= fail
.PHONY: vuln
vuln: ## govulncheck the service against GOVULNDB
	@findings=$$(mktemp) && trap 'rm -f "$$findings"' EXIT && \
	$(GO) run $(GOVULNCHECK) -db '$(GOVULNDB)' -format json ./... >"$$findings" && \
	$(GO) run ./internal/tools/vulnreport -stdlib $(VULN_STDLIB) <"$$findings"

# Performance evidence: the resilience layer's overhead against failsafe-go
# (same run, side by side). The overload table: see bench/cmd/overload.
.PHONY: bench
bench: ## benchmark the protections against failsafe-go
	$(call need-modules,bench)
	$(GO) -C bench test -run '^$$' -bench . -benchmem -count 1

# Native Go fuzzing: each target, as package:target, for FUZZTIME, one after
# another; the first failure stops the run and leaves its input in the
# package's testdata/fuzz, where `make test` replays it with the checked-in
# corpus.
FUZZTIME ?= 30s
FUZZ_TARGETS := \
	./internal/platform/web:FuzzDecodeStrict_CanonicalFormIsTheOneFingerprintsWereMadeOf \
	./internal/platform/idempotency:FuzzFingerprint_IsSharedOnlyByBodiesThatMeanTheSameRequest \
	./internal/platform/idempotency:FuzzValidKey_AcceptsExactly1To255PrintableASCIIWithoutSpaces \
	./internal/payments/paymentsapi:FuzzCreatePayment_AcceptsOnlyRequestsWithinTheRulesAndRefusesTheRestAs4xx \
	./internal/payments/paymentsapi:FuzzRefund_AcceptsOnlyRequestsWithinTheRulesAndRefusesTheRestAs4xx \
	./internal/payments/paymentsapi:FuzzListPayments_TheCursorReachesTheStoreAsSent \
	./internal/payments/provider:FuzzParseRetryAfter_IsNeverNegativeAndSaturatesAtTheLongestWait \
	./internal/platform/config:FuzzLoad_TakesValuesWithinTheirBoundsOrNamesTheVariable
.PHONY: fuzz
fuzz: ## fuzz every target for FUZZTIME each (default 30s)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t#*:} ($${t%%:*}) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}\$$" -fuzztime $(FUZZTIME) $${t%%:*} || exit 1; \
	done

# The game day: Postgres (primary + synchronous standby) and Redis in
# containers (TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE, Docker needed), the
# fake provider, toxiproxy in front of each, two server processes, load,
# faults; report.md, a plot per run and verdict.json in GAMEDAY_OUT. Exits
# non-zero when a hypothesis or an invariant fails. DURATION is each run's
# length; SHORT=1 runs every scenario in about 5 minutes, as CI does.
DURATION    ?= 40s
GAMEDAY_OUT ?= gameday-report
.PHONY: gameday
gameday: ## inject faults under load; report in GAMEDAY_OUT (DURATION=…, SHORT=1)
	$(GO) run ./cmd/gameday $(if $(SHORT),-short,-duration $(DURATION)) -out '$(GAMEDAY_OUT)'

# The Kubernetes end-to-end suite (deploy_test/k8se2e): deploys
# k8s/overlays/e2e into the cluster KUBECONFIG names, with Postgres, Redis
# and the fake provider inside it, and proves probes, the readiness gate, a
# rolling update, pod deletions and a drain under load. It needs Docker and
# K8S_E2E_IMAGE and K8S_E2E_FAKEPROVIDER_IMAGE built (`make image`);
# K8S_E2E_LOAD copies images into the nodes (CI: .ci/offline/k8s/cluster.sh
# load).
# K8S_E2E_POSTGRES_IMAGE and K8S_E2E_REDIS_IMAGE replace the dependencies'
# images.
K8S_E2E_LOAD               ?= kind load docker-image
K8S_E2E_IMAGE              ?= payservice:dev
K8S_E2E_FAKEPROVIDER_IMAGE ?= payservice-fakeprovider:dev
.PHONY: k8s-e2e
k8s-e2e: ## deploy into KUBECONFIG's cluster; prove rollouts, drains, probes, gates
	$(call need-modules,deploy_test)
	K8S_E2E_LOAD='$(K8S_E2E_LOAD)' K8S_E2E_IMAGE='$(K8S_E2E_IMAGE)' \
	K8S_E2E_FAKEPROVIDER_IMAGE='$(K8S_E2E_FAKEPROVIDER_IMAGE)' \
	$(GO) -C deploy_test test -tags k8se2e -count=1 -timeout 30m -v -run '^TestKubernetes$$' ./k8se2e

# SMOKE_URL and SMOKE_API_KEY (environment or `make smoke SMOKE_URL=…`)
# point it at another deployment; the defaults are docker-compose.yml's.
.PHONY: smoke
smoke: ## check a running stack (docker compose up) end to end
	$(GO) run ./cmd/smoke

# The container delivery end to end (.ci/compose-e2e.sh): the server's
# image within its size budget and without the fake provider, `docker
# compose up --build`, make smoke, the read replica; torn down after.
# GO_IMAGE, RUNTIME_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE and BUILD_NETWORK
# replace compose's defaults.
.PHONY: compose-e2e
compose-e2e: ## build, docker compose up, make smoke, tear down
	.ci/compose-e2e.sh

# The dashboard's and the rules' queries against the running service
# (cmd/server/observability_test.go): the server under a load that takes
# each protection through its states, scraped by a real Prometheus, and
# every query of every panel and rule must return data. It needs Docker, as
# make test does, and prometheus on PATH (apt-get install prometheus): the
# build tag prometheus keeps it out of make test, which then needs no
# Prometheus.
.PHONY: observability-e2e
observability-e2e: ## every dashboard and rule query returns data from the live service
	$(GO) test -race -count=1 -tags prometheus -run 'TestObservability' $(TESTFLAGS) ./cmd/server/

# GO_IMAGE and RUNTIME_IMAGE (environment or `make image GO_IMAGE=…`) replace
# the base images, e.g. with a mirror's; unset, the Dockerfile's defaults
# apply (docker takes a bare --build-arg NAME from the environment, if set).
# The second build reuses the first's build stage.
.PHONY: image
image: ## build the images payservice:dev and payservice-fakeprovider:dev
	docker build --build-arg GO_IMAGE --build-arg RUNTIME_IMAGE \
		--build-arg VERSION='$(VERSION)' -t payservice:dev .
	docker build --build-arg GO_IMAGE --build-arg RUNTIME_IMAGE \
		--build-arg VERSION='$(VERSION)' --target fakeprovider -t payservice-fakeprovider:dev .
