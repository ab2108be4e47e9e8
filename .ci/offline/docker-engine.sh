#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
# No registry is reachable, but Debian's archive is: Debian's docker.io gives
# engine 20.10, which the machine's newer (28.x) docker client talks to fine.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

# Second run / engine already provided: neither reinstall nor start a second
# daemon.
if docker info >/dev/null 2>&1; then
	log "docker engine already running: $(docker version -f '{{.Server.Version}}' 2>/dev/null)"
	exit 0
fi

command -v dockerd >/dev/null 2>&1 || apt_install docker.io

log "starting dockerd"
# --iptables=false: this machine cannot program iptables. Published ports
#   still work on 127.0.0.1 through docker's userland proxy, and containers on
#   a user-defined network still reach each other by name.
# setsid: detach from our session so the daemon outlives this script and CI
#   step (and does not get our terminal's signals).
# A stale /var/run/docker.pid from a killed daemon is tolerated by dockerd.
setsid dockerd --iptables=false >/var/log/dockerd.log 2>&1 </dev/null &

for _ in $(seq 60); do
	if docker info >/dev/null 2>&1; then
		log "docker engine up: $(docker version -f '{{.Server.Version}}')"
		exit 0
	fi
	sleep 1
done
log "docker engine did not answer within 60s; tail of /var/log/dockerd.log:"
tail -n 40 /var/log/dockerd.log >&2 || true
exit 1
