# shellcheck shell=bash
# Shared helpers for the .ci/ scripts. Source it; do not execute it.

# Make `set -e` apply inside $(...) too (bash clears it there by default), so
# a failing build inside `x=$(choose_image ...)` stops the script.
shopt -s inherit_errexit

# Say where a script stopped: `set -e` alone exits without a word.
trap 'log "FAILED (exit $?) in ${0##*/} line $LINENO: $BASH_COMMAND"' ERR

# Everything we build is cached here so a second run on the same machine
# (or a re-import after `docker image rm`) is cheap.
CI_CACHE=${CI_CACHE:-/var/cache/payservice-ci}

# log MSG...: one greppable line on stderr (stdout stays free for values).
log() { printf '%s\n' "--- $*" >&2; }

# die MSG...: report and stop.
die() { printf '%s\n' "!!! $*" >&2; exit 1; }

# retry N CMD...: run CMD up to N times with a growing pause between tries,
# because mirrors and the module proxy occasionally hiccup.
retry() {
	local n=$1 i=1
	shift
	until "$@"; do
		if [ "$i" -ge "$n" ]; then
			log "failed after $n tries: $*"
			return 1
		fi
		log "try $i/$n failed, retrying in $((i * 5))s: $*"
		sleep $((i * 5))
		i=$((i + 1))
	done
}

# apt_install PKG...: install missing Debian packages non-interactively.
# `apt-get update` runs at most once per CI run: .ci/run exports CI_RUN_DIR,
# where a marker file tells the other scripts it already ran.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	export DEBIAN_FRONTEND=noninteractive # CI has no stdin: never prompt
	local marker=${CI_RUN_DIR:+$CI_RUN_DIR/apt-updated}
	if [ -z "${_apt_updated:-}" ] && ! [ -e "${marker:-/nonexistent}" ]; then
		log "apt-get update"
		retry 3 apt-get update -qq >&2
		_apt_updated=1
		if [ -n "$marker" ]; then : >"$marker"; fi
	fi
	log "apt-get install ${missing[*]}"
	# NEEDRESTART_SUSPEND: docker.io recommends needrestart, whose report is
	#   noise in CI. >&2: dpkg's chatter must not end up in a $(...) value.
	NEEDRESTART_SUSPEND=1 retry 3 apt-get install -y -qq "${missing[@]}" >&2
}

# debian_mirror: the archive URI this machine already uses, read at run time
# (never hard-coded: CI machines may point at a different mirror/snapshot).
# Takes the first URIs: entry that is not the security archive.
debian_mirror() {
	local f=/etc/apt/sources.list.d/debian.sources m
	m=$(awk '/^URIs:/ && !/security/ {print $2; exit}' "$f" 2>/dev/null || true)
	[ -n "$m" ] || die "no URIs: line in $f"
	printf '%s\n' "$m"
}

# have_image NAME: the image is in the local store.
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# rootfs_tarball NAME PKGS: print the path of a cached Debian bookworm minbase
# root filesystem tarball containing PKGS (comma-separated), building it with
# debootstrap on first use. No registry is reachable, but Debian's archive
# is, so stand-in images start from this instead of from a base image.
rootfs_tarball() {
	local name=$1 pkgs=$2
	local tarball="$CI_CACHE/rootfs-$name.tar"
	if [ -s "$tarball" ]; then
		log "rootfs $name: cached at $tarball"
		printf '%s\n' "$tarball"
		return 0
	fi
	command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
	local mirror dir
	mirror=$(debian_mirror)
	dir="$CI_CACHE/rootfs-$name.d"
	mkdir -p "$CI_CACHE"
	log "debootstrap $name ($pkgs) from $mirror (about a minute)"
	# --variant=minbase: only Essential packages + apt, like Docker's debian
	#   base images; --include pulls the service packages in the same run.
	# The directory is wiped before each try: debootstrap cannot resume.
	retry 3 _debootstrap "$dir" "$pkgs" "$mirror"
	# Drop what only bloats the images: downloaded .debs, package lists,
	# docs and message translations; and the "15/main" cluster that
	# postgresql-common's postinst creates (the entrypoint uses $PGDATA).
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
		"$dir"/usr/share/doc "$dir"/usr/share/man "$dir"/usr/share/info \
		"$dir"/usr/share/locale "$dir"/var/lib/postgresql/*/main \
		"$dir"/etc/postgresql/*/main
	# --numeric-owner: keep the rootfs' own uids (postgres, redis) as numbers,
	#   not re-mapped through the host's /etc/passwd.
	# dev/proc/sys contents: docker provides them at run time.
	tar -C "$dir" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
		--exclude='./sys/*' -cf "$tarball.tmp" .
	mv "$tarball.tmp" "$tarball" # atomic: a killed run leaves no half tarball
	rm -rf "$dir"
	printf '%s\n' "$tarball"
}

# _debootstrap DIR PKGS MIRROR: one try, its chatty log shown only on failure.
_debootstrap() {
	rm -rf "$1"
	debootstrap --variant=minbase --include="$2" bookworm "$1" "$3" \
		>"$1.log" 2>&1 || { tail -n 30 "$1.log" >&2; return 1; }
	rm -f "$1.log"
}

# Stand-in images carry this label: a hash of what they were built from, so
# an edited build script or entrypoint triggers a rebuild, and nothing else
# does.
REV_LABEL=payservice-ci.rev

# rev FILE... : short hash of the given files (plus any extra words in $REV_EXTRA).
rev() { { cat "$@"; printf '%s' "${REV_EXTRA:-}"; } | sha256sum | cut -c1-16; }

# image_rev NAME: the stand-in revision label of a local image ("" if none).
image_rev() {
	docker image inspect -f "{{index .Config.Labels \"$REV_LABEL\"}}" "$1" 2>/dev/null || true
}

# choose_image OFFICIAL STANDIN REV BUILDER...: print the image to use.
# OFFICIAL when it is already in the local store or can be pulled (machines
# with a registry); otherwise STANDIN, running BUILDER... first unless STANDIN
# already exists with revision REV.
choose_image() {
	local official=$1 standin=$2 want=$3
	shift 3
	if have_image "$official"; then
		log "using $official (already present)"
	# timeout: a pull with no registry reachable usually fails at once, but
	# a black-holed network would hang; never wait long for it.
	elif timeout 60 docker pull -q "$official" >/dev/null 2>&1; then
		log "using $official (pulled)"
	elif [ "$(image_rev "$standin")" = "$want" ]; then
		log "cannot pull $official; stand-in $standin is up to date"
		official=$standin
	else
		log "cannot pull $official; building stand-in $standin"
		local old
		old=$(docker image inspect -f '{{.Id}}' "$standin" 2>/dev/null || true)
		"$@"
		# Drop the outdated build (fails harmlessly while a container uses it).
		if [ -n "$old" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
		official=$standin
	fi
	printf '%s\n' "$official"
}

# quiet_build ARGS...: `docker build` with the legacy builder (no buildx
# plugin needed), printing its chatter only when it fails.
quiet_build() {
	local out
	if ! out=$(DOCKER_BUILDKIT=0 docker build -q "$@" 2>&1); then
		printf '%s\n' "$out" >&2
		return 1
	fi
}
