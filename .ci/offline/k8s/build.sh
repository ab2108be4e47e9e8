#!/usr/bin/env bash
# Build the offline Kubernetes cluster's binaries from the Go module proxy:
# etcd, the five Kubernetes server binaries plus kubectl, CoreDNS and
# metrics-server. Nothing comes from GitHub or a registry. Each binary is
# cached under $K8S_CACHE/bin and skipped when present, so this costs about
# 25-30 minutes on a cold 2-core machine and nothing afterwards.
set -euo pipefail
# shellcheck source=SCRIPTDIR/env.sh
. "$(dirname "$0")/env.sh"

mkdir -p "$K8S_BIN" "$K8S_CACHE/src"
export CGO_ENABLED=0

# Kubernetes: `go install k8s.io/kubernetes/cmd/x@v` fails because its go.mod
# replaces every k8s.io/* staging module with ./staging/... . A wrapper
# module requires k8s.io/kubernetes and replaces each staging module with
# the published one of the same release (v1.34.4 <-> v0.34.4) instead.
build_kubernetes() {
	local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) c missing=0
	for c in "${cmds[@]}"; do [ -x "$K8S_BIN/$c" ] || missing=1; done
	[ "$missing" = 1 ] || return 0
	local w="$K8S_CACHE/src/kubernetes-$K8S_VERSION" src
	mkdir -p "$w"
	if ! [ -f "$w/go.sum" ]; then
		src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
		{
			echo 'module k8soffline'
			echo 'go 1.24.0'
			echo 'godebug default=go1.24' # the GODEBUG defaults Kubernetes was released with
			echo "require k8s.io/kubernetes $K8S_VERSION"
			echo 'replace ('
			awk -v v="v0.${K8S_VERSION#v1.}" '/=> \.\/staging/ {print "\t" $1 " => " $1 " " v}' "$src/go.mod"
			echo ')'
		} >"$w/go.mod"
		(cd "$w" && go get $(printf "k8s.io/kubernetes/cmd/%s@$K8S_VERSION " "${cmds[@]}"))
	fi
	# Without these the binaries report v0.0.0 and kubectl warns of skew.
	local ld="-s -w" p minor
	minor=$(echo "$K8S_VERSION" | cut -d. -f2)
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
	done
	(cd "$w" && go build -trimpath -ldflags "$ld" -o "$K8S_BIN/" $(printf 'k8s.io/kubernetes/cmd/%s ' "${cmds[@]}"))
}

# etcd's server module has replace directives too: the same wrapper trick.
build_etcd() {
	[ -x "$K8S_BIN/etcd" ] && return 0
	local w="$K8S_CACHE/src/etcd-$ETCD_VERSION" m
	mkdir -p "$w"
	if ! [ -f "$w/go.sum" ]; then
		printf 'module etcdoffline\ngo 1.24\n' >"$w/go.mod"
		(cd "$w" && go get $(for m in server api client/pkg client pkg; do printf 'go.etcd.io/etcd/%s/v3@%s ' "$m" "$ETCD_VERSION"; done))
	fi
	(cd "$w" && go build -trimpath -ldflags '-s -w' -o "$K8S_BIN/etcd" go.etcd.io/etcd/server/v3)
}

# CoreDNS and metrics-server have no replace directives: plain go install.
install_plain() { # NAME MODULE/PATH@VERSION
	[ -x "$K8S_BIN/$1" ] && return 0
	GOBIN=$K8S_BIN go install -trimpath -ldflags '-s -w' "$2"
}

t0=$SECONDS
build_etcd && log "etcd ready (+$((SECONDS - t0))s)"
build_kubernetes && log "kubernetes $K8S_VERSION ready (+$((SECONDS - t0))s)"
install_plain coredns "github.com/coredns/coredns@$COREDNS_VERSION" && log "coredns ready (+$((SECONDS - t0))s)"
install_plain metrics-server "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION" &&
	log "metrics-server ready (+$((SECONDS - t0))s)"
