#!/usr/bin/env bash
# Make a machine without a container registry able to run the same make
# targets as a machine with one (GitHub Actions runs none of this).
#
# Each step provides only what is missing, and most find it already there
# on a registry machine: a Docker engine that answers is kept (else
# Debian's docker.io is installed and started); the compose and buildx
# plugins are built from their Go modules only when absent; an official
# image is used whenever it is present or can be pulled, and a Debian-built
# stand-in is made only when the pull fails (images/*.sh). Where egress
# goes through a TLS-inspecting proxy, the Go build image gets this
# machine's CA bundle.
#
# stdout: NAME=value lines for .ci/run to export; logs go to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.." # the repository root
# shellcheck source=SCRIPTDIR/../lib.sh
. .ci/lib.sh

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# with_host_cas IMAGE: print IMAGE, or, when its CA bundle is not this
# machine's, the name of IMAGE plus this machine's bundle. Behind a
# TLS-inspecting proxy whose CA only the host trusts, `go mod download` in
# the build otherwise fails with "x509: certificate signed by unknown
# authority".
with_host_cas() {
	local image=$1 host=/etc/ssl/certs/ca-certificates.crt
	if docker run --rm --network none --entrypoint cat "$image" "$host" 2>/dev/null |
		cmp -s - "$host"; then
		printf '%s\n' "$image"
		return 0
	fi
	local derived=payservice-ci/go-builder:host-cas
	log "$image does not trust this machine's CAs: building $derived with them"
	mkdir -p "$work/cas"
	cp "$host" "$work/cas/"
	printf 'FROM %s\nCOPY ca-certificates.crt %s\n' "$image" "$host" >"$work/cas/Dockerfile"
	quiet_build -t "$derived" "$work/cas"
	printf '%s\n' "$derived"
}

log "Docker engine"
.ci/offline/docker-engine.sh >&2

log "docker compose and buildx plugins"
.ci/offline/plugins.sh >&2

log "Postgres, Redis and Prometheus images (official, else Debian-built stand-ins)"
.ci/offline/images/standins.sh >"$work/standins.env"

log "base images of the Dockerfile (official, else stand-ins)"
.ci/offline/images/build-bases.sh >"$work/bases.env"
# shellcheck source=/dev/null
. "$work/bases.env"

cat "$work/standins.env"
printf '%s\n' "GO_IMAGE=$(with_host_cas "$GO_IMAGE")" "RUNTIME_IMAGE=$RUNTIME_IMAGE"
# Builds in this engine have no outbound network but the host's, and `go
# mod download` needs the module proxy (docker-engine.sh runs dockerd
# without iptables).
echo BUILD_NETWORK=host
# The Ryuk reaper image cannot be pulled here: tests terminate their own
# containers instead. And this machine has /.dockerenv, so testcontainers
# would think it runs inside a container and dial the bridge gateway (which
# times out): ports are published on 127.0.0.1.
echo TESTCONTAINERS_RYUK_DISABLED=true
echo TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
