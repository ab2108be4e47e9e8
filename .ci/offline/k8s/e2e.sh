#!/usr/bin/env bash
# make k8s-e2e against a real cluster on this machine: bring the offline
# cluster up (cluster.sh; its binaries are built once and cached), run the
# suite, and always take the cluster down and restore the machine, whether
# the suite passed, failed or was interrupted.
#
# Needs the images of the app and the fake provider (payservice:dev and
# payservice-fakeprovider:dev, built by compose-e2e.sh) and the
# Postgres and Redis images .ci/run chose (POSTGRES_IMAGE, REDIS_IMAGE) in
# the local Docker engine.
set -euo pipefail
cd "$(dirname "$0")/../../.." # the repository root
# shellcheck source=SCRIPTDIR/env.sh
. .ci/offline/k8s/env.sh

# A cluster left behind by a killed run would stop `up`: clear it first.
.ci/offline/k8s/cluster.sh down
trap '.ci/offline/k8s/cluster.sh down' EXIT
.ci/offline/k8s/cluster.sh up
make k8s-e2e KUBECTL="$K8S_BIN/kubectl" K8S_E2E_LOAD="$PWD/.ci/offline/k8s/cluster.sh load" \
	K8S_E2E_IMAGE=payservice:dev K8S_E2E_FAKEPROVIDER_IMAGE=payservice-fakeprovider:dev \
	K8S_E2E_POSTGRES_IMAGE="${POSTGRES_IMAGE:?set by .ci/run}" K8S_E2E_REDIS_IMAGE="${REDIS_IMAGE:?set by .ci/run}"
