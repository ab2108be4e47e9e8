#!/usr/bin/env bash
# Build the docker compose and buildx CLI plugins from their Go modules.
# Debian packages neither, and no registry/release download is reachable here,
# but the Go module proxy is. Each build takes minutes on 2 cores, so the
# binaries are cached under $CI_CACHE/plugins and only copied on later runs.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
COMPOSE_VERSION=v2.40.3
BUILDX_VERSION=v0.29.1

# build_plugin NAME MODULE VERSION PKG LDFLAG_VAR CHECK_CMD...
build_plugin() {
	local name=$1 mod=$2 ver=$3 pkg=$4 var=$5
	shift 5
	local cached="$CI_CACHE/plugins/docker-$name-$ver"
	local target="$PLUGIN_DIR/docker-$name"

	# Already installed at the right version: nothing to do.
	if "$@" 2>/dev/null | grep -qF "$ver"; then
		log "docker $name $ver already installed"
		return 0
	fi

	if [ ! -x "$cached" ]; then
		log "building docker $name $ver from $mod (takes minutes)"
		local dir src
		# `go install mod@ver` refuses modules whose go.mod has exclude
		# directives, so build inside a writable copy of the module instead.
		dir=$(retry 3 go mod download -json "$mod@$ver" |
			sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
		[ -n "$dir" ] || die "go mod download $mod@$ver gave no Dir"
		src=$(mktemp -d)
		cp -r "$dir/." "$src" && chmod -R u+w "$src" # module cache is read-only
		mkdir -p "$CI_CACHE/plugins"
		# CGO_ENABLED=0: a static binary, like upstream's release builds.
		# -X ...Version: an unstamped buildx reports v0.0.0 and compose then
		# refuses to build ("compose build requires buildx 0.17 or later").
		(cd "$src" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
			retry 3 go build -trimpath -ldflags "-s -w -X $var=$ver" \
			-o "$cached.tmp" "$pkg")
		mv "$cached.tmp" "$cached" # atomic: a killed build leaves no half binary
		rm -rf "$src"
	fi
	mkdir -p "$PLUGIN_DIR"
	install -m 0755 "$cached" "$target"
	log "installed $target: $("$@" 2>&1 | head -1)"
}

build_plugin compose github.com/docker/compose/v2 "$COMPOSE_VERSION" ./cmd \
	github.com/docker/compose/v2/internal.Version docker compose version
build_plugin buildx github.com/docker/buildx "$BUILDX_VERSION" ./cmd/buildx \
	github.com/docker/buildx/version.Version docker buildx version
