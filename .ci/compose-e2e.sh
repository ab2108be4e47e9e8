#!/usr/bin/env bash
# The container delivery, end to end, after `make test` and `make lint`:
# build the image on its own (and hold it to its size budget), bring the
# whole stack up with the README's command, run `make smoke` against it, and
# tear it down again, also when something fails.
#
# Expects a running Docker engine (.ci/docker-engine.sh) and, as .ci/run
# exports them, POSTGRES_IMAGE and REDIS_IMAGE; picks them itself if unset.
# A second run on the same machine reuses plugins, images and build caches.
set -euo pipefail
cd "$(dirname "$0")/.." # the repository root
# shellcheck source=SCRIPTDIR/lib.sh
. .ci/lib.sh

start=$SECONDS
step() { printf '\n==> %s  [+%ss]\n' "$*" "$((SECONDS - start))"; }

IMAGE=payservice:dev     # the image: name in docker-compose.yml
MAX_IMAGE_BYTES=25000000 # 25 MB, in the decimal units `docker images` shows
BUILD_LABEL=payservice-ci.build=standalone # marks this script's own docker build
# A project name of its own: CI's containers, network and volume never
# touch (or take down) a developer's `docker compose up` stack.
export COMPOSE_PROJECT_NAME=payservice-ci
# Builds in this engine have no outbound network otherwise, and `go mod
# download` needs the module proxy (see .ci/docker-engine.sh).
export BUILD_NETWORK=host

work=$(mktemp -d)
stack_up=
# finish: on any exit, show what went wrong and take the stack down, so a
# failed run leaves no containers or volumes behind for the next one.
finish() {
	local rc=$?
	if [ -n "$stack_up" ]; then
		if [ "$rc" -ne 0 ]; then
			step "docker compose logs (the run failed)"
			docker compose ps --all || true
			docker compose logs --no-color --tail 100 || true
		fi
		step "docker compose down"
		docker compose down --volumes --remove-orphans || true
	fi
	# Every build re-tags $IMAGE and leaves the image it replaced dangling
	# (compose even builds one per service). Prune only this script's:
	# dangling, and labelled by its standalone build or its compose project.
	docker image prune --force --filter "label=$BUILD_LABEL" >/dev/null || true
	docker image prune --force --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" >/dev/null || true
	rm -rf "$work"
	if [ "$rc" -eq 0 ]; then step "done"; else log "compose-e2e FAILED (exit $rc)"; fi
}
trap finish EXIT

# export_images SCRIPT: run an image-picking script (.ci/images/*.sh) and
# export the NAME=image lines it prints.
export_images() {
	"$1" >"$work/images.env"
	cat "$work/images.env"
	set -a
	# shellcheck source=/dev/null
	. "$work/images.env"
	set +a
}

# with_host_cas IMAGE: print IMAGE, or, when its CA bundle is not this
# machine's, the name of IMAGE plus this machine's bundle. Where egress goes
# through a TLS-inspecting proxy whose CA only the host trusts, `go mod
# download` in the build otherwise fails with "x509: certificate signed by
# unknown authority".
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

step "Go toolchain"
export PATH="/usr/local/go/bin:$PATH"
command -v go >/dev/null || die "Go not found in /usr/local/go/bin or PATH"
go version

step "docker compose and buildx plugins"
.ci/plugins.sh
docker compose version
docker buildx version

step "base images of the Dockerfile (official, else stand-ins)"
export_images .ci/images/build-bases.sh
GO_IMAGE=$(with_host_cas "$GO_IMAGE")
echo "GO_IMAGE=$GO_IMAGE (for this build)"

step "Postgres and Redis images"
if [ -z "${POSTGRES_IMAGE:-}" ] || [ -z "${REDIS_IMAGE:-}" ]; then
	export_images .ci/images/standins.sh
else
	echo "POSTGRES_IMAGE=$POSTGRES_IMAGE"
	echo "REDIS_IMAGE=$REDIS_IMAGE"
fi

step "docker build $IMAGE (standalone)"
# --network host: for `go mod download` (see BUILD_NETWORK). A bare
# --build-arg NAME takes the value exported above. No VERSION: the same build
# as compose's, so `up --build` below finds every step cached.
docker build --network host --build-arg GO_IMAGE --build-arg RUNTIME_IMAGE \
	--label "$BUILD_LABEL" -t "$IMAGE" .
docker images "$IMAGE" --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}'
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
[ "$size" -le "$MAX_IMAGE_BYTES" ] ||
	die "$IMAGE is $size bytes, over the budget of $MAX_IMAGE_BYTES: what got into it?"
echo "size $size bytes, within the budget of $MAX_IMAGE_BYTES"

step "docker compose up --build (the README's command, detached, waiting for health)"
# Leftovers of a run killed before its trap ran would clash with this one.
docker compose down --volumes --remove-orphans
stack_up=1
# --detach --wait: CI must go on once every service passes its healthcheck.
docker compose up --build --detach --wait --wait-timeout 180
docker compose ps

step "make smoke"
make smoke
