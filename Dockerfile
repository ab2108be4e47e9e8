# payservice's container images, static binaries on a distroless base with
# no shell and no package manager:
#
#   docker build -t payservice:dev .                       the API server
#   docker build --target fakeprovider \
#       -t payservice-fakeprovider:dev .                   the fake provider
#
# (or: make image, which builds both). The server's image, the one that goes
# to production, holds /server alone: a fake that answers "charged" to
# anything has no business next to it.
#
# No `# syntax=` line on purpose: BuildKit's built-in frontend supports
# everything used here, and naming one makes every build pull it from a
# registry.

# The base images are build args, so a mirror or a locally built
# stand-in can replace them without editing this file.
# Matches the `go` line of go.mod; the major.minor tag picks up patch releases.
ARG GO_IMAGE=golang:1.26
# Static Go binaries need only CA certificates, tzdata and a nonroot user.
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${GO_IMAGE} AS build
# Pin the caches to the paths of the cache mounts below, whatever defaults
# the Go image has. GOTOOLCHAIN=local: fail rather than download another Go.
ENV GOMODCACHE=/go/pkg/mod GOCACHE=/root/.cache/go-build GOTOOLCHAIN=local
WORKDIR /src

# Modules first: this step re-runs only when go.mod or go.sum change, not on
# every edit of the source. The modules go to the cache mount (shared with the
# build below), not into a layer: they survive rebuilds and reach no image.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download

COPY api/ api/
COPY cmd/ cmd/
COPY internal/ internal/
# Declared just before its one use, so a new stamp leaves the steps above
# cached. `make image` passes `git describe`.
ARG VERSION=dev
# CGO_ENABLED=0: a static binary, which the static distroless base needs.
# -trimpath: no build machine paths in the binary (reproducible, no leaks).
# -s -w: no symbol table or DWARF (about 30% smaller; panics still print
#   stack traces).
# -o /: the binaries land at /server and /fakeprovider; each image below
#   copies its own.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
    -o / ./cmd/server ./cmd/fakeprovider

# For compose, the Kubernetes dev and e2e overlays, and game days against a
# deployment: never deploy it where real payments flow.
FROM ${RUNTIME_IMAGE} AS fakeprovider
COPY --from=build /fakeprovider /
USER 65532:65532
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/fakeprovider", "healthcheck"]
ENTRYPOINT ["/fakeprovider"]

# The server, last so that a plain `docker build .` builds it.
FROM ${RUNTIME_IMAGE} AS server
# Owned by root: the user below can run the binary but not replace it.
COPY --from=build /server /
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading
# /etc/passwd; 65532 is distroless' `nonroot`.
USER 65532:65532
# HTTP_ADDR (public API) and ADMIN_ADDR (metrics, pprof: never publish it
# beyond the host or cluster). Documentation only; compose and k8s publish.
EXPOSE 8080 9090
# Probes /health/ready through the binary itself (distroless has no curl).
# --interval=5s: whoever waits on it (compose, CI) sees a ready server
#   within seconds; a probe is one short-lived process.
# --timeout=5s: the subcommand gives up after 3s by itself; this only ends
#   a probe that hangs outright.
# --start-period=30s: first start migrates the database; failures meanwhile
#   do not count.
# --retries=3: ~15s of consecutive failures before `unhealthy`, so one slow
#   probe under load does not flip it.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/server", "healthcheck"]
# Exec form: /server is PID 1 and receives SIGTERM itself, which starts the
# graceful shutdown. Arguments pick a subcommand: `migrate`.
ENTRYPOINT ["/server"]
