#!/usr/bin/env bash
# Pick the base images of the service's Dockerfile (build args GO_IMAGE and
# RUNTIME_IMAGE). The official images when present or pullable;
# otherwise (no registry, as on our CI) stand-ins:
#   - a Go builder: Debian minbase + ca-certificates, git, and this
#     machine's /usr/local/go (the toolchain CI already uses);
#   - a distroless/static:nonroot look-alike: passwd/group with nonroot
#     (65532), CA certificates, tzdata, /tmp, and nothing else.
# stdout: NAME=image lines; logs go to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../../lib.sh
. "$here/../../lib.sh"

# The same defaults as the Dockerfile's ARGs (and docker-compose.yml's).
GO_OFFICIAL=${GO_IMAGE:-golang:1.26}
RUNTIME_OFFICIAL=${RUNTIME_IMAGE:-gcr.io/distroless/static-debian12:nonroot}
GO_STANDIN=payservice-standin/golang:1.26
RUNTIME_STANDIN=payservice-standin/distroless-static:nonroot
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

goroot=$(go env GOROOT)
goversion=$(go env GOVERSION)
case $goversion in
go1.26 | go1.26.*) ;;
*) die "the golang:1.26 stand-in needs Go 1.26 on this machine, found $goversion" ;;
esac
# Rebuild when this script or the Go toolchain changes.
REV=$(REV_EXTRA=$goversion rev "$0")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

build_go() {
	local rootfs=payservice-standin/gobuilder-rootfs:bookworm
	rootfs_tarball gobuilder ca-certificates,git >"$work/tarball"
	docker import "$(cat "$work/tarball")" "$rootfs" >/dev/null
	# A Dockerfile only to COPY the toolchain in (context = GOROOT). The
	# legacy builder (DOCKER_BUILDKIT=0) needs no buildx plugin.
	# GOTOOLCHAIN=local: never try to download another toolchain.
	# No gcc in the image: Go then defaults to CGO_ENABLED=0.
	cat >"$work/Dockerfile" <<-EOF
		FROM $rootfs
		COPY . /usr/local/go
		ENV GOLANG_VERSION=${goversion#go} GOTOOLCHAIN=local GOPATH=/go \\
		    PATH=/go/bin:/usr/local/go/bin:$BASE_PATH LANG=C.UTF-8
		WORKDIR /go
		LABEL $REV_LABEL=$REV
	EOF
	quiet_build -f "$work/Dockerfile" -t "$GO_STANDIN" "$goroot"
	log "built $GO_STANDIN ($goversion)"
}

build_runtime() {
	local t=$work/static
	mkdir -p "$t/etc/ssl/certs" "$t/home/nonroot" "$t/usr/share"
	mkdir -m 1777 "$t/tmp" # world-writable + sticky, like any /tmp
	# The same users and groups as distroless (uid/gid 65532 = nonroot).
	cat >"$t/etc/passwd" <<-'EOF'
		root:x:0:0:root:/root:/sbin/nologin
		nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
		nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
	EOF
	cat >"$t/etc/group" <<-'EOF'
		root:x:0:
		nobody:x:65534:
		tty:x:5:
		staff:x:50:
		nonroot:x:65532:
	EOF
	echo 'hosts: files dns' >"$t/etc/nsswitch.conf" # hosts file before DNS
	[ -s /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates
	cp /etc/ssl/certs/ca-certificates.crt "$t/etc/ssl/certs/"
	[ -d /usr/share/zoneinfo ] || apt_install tzdata # time.LoadLocation
	cp -a /usr/share/zoneinfo "$t/usr/share/"
	chown 65532:65532 "$t/home/nonroot"
	chmod 700 "$t/home/nonroot"
	# USER: run as nonroot, like the :nonroot tag. SSL_CERT_FILE: as distroless.
	tar -C "$t" --numeric-owner -cf - . | docker import \
		-c 'USER 65532:65532' \
		-c 'WORKDIR /home/nonroot' \
		-c "ENV PATH=$BASE_PATH SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
		-c "LABEL $REV_LABEL=$REV" \
		- "$RUNTIME_STANDIN" >/dev/null
	log "built $RUNTIME_STANDIN"
}

go_image=$(choose_image "$GO_OFFICIAL" "$GO_STANDIN" "$REV" build_go)
runtime_image=$(choose_image "$RUNTIME_OFFICIAL" "$RUNTIME_STANDIN" "$REV" build_runtime)
printf '%s\n' "GO_IMAGE=$go_image" "RUNTIME_IMAGE=$runtime_image"
