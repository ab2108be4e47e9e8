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
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

# Unit and integration tests, with the race detector. Integration tests start
# Postgres and Redis with testcontainers-go: they need Docker, and fail (not
# skip) without it. -count=1: containers are state the test cache cannot see.
# TESTFLAGS=-v shows every test and container start (CI uses it as a record).
TESTFLAGS ?=
.PHONY: test
test: ## run every test (unit + integration) with -race
	$(GO) test -race -count=1 -timeout 15m $(TESTFLAGS) ./...

.PHONY: lint
lint: ## gofmt check, go vet, staticcheck
	@unformatted=$$(gofmt -l .); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
