#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, with no registry:
#
#   cluster.sh up            build (cached) and start it; prints KUBECONFIG=...
#   cluster.sh load IMAGE... copy images from the local Docker engine into it
#   cluster.sh down          stop it and restore the machine as it was
#
# etcd, the control plane, a kubelet and kube-proxy run as plain processes
# (build.sh compiles them from the Go module proxy); Debian's containerd,
# runc and CNI plugins run the pods, in a containerd instance of their own
# so that Docker's is untouched. Every image is built or imported locally,
# and every pod uses imagePullPolicy IfNotPresent or Never: nothing is
# pulled. Nothing listens or routes beyond this machine: the node address is
# an extra /32 on lo, pods live on a bridge, and guard rules reject cluster
# traffic that would otherwise follow the default route out.
#
# It needs real root: bridges, network namespaces, overlay mounts, cgroups
# and iptables. `down` undoes everything `up` did, and is safe to run twice
# or after a half-finished `up`.
set -euo pipefail
# shellcheck source=SCRIPTDIR/env.sh
. "$(dirname "$0")/env.sh"
here=$(cd "$(dirname "$0")" && pwd)
PATH=$K8S_BIN:$PATH # our kubectl, whatever else is installed
P=$K8S_RUN/pki

# start NAME CMD...: run CMD detached (setsid: it outlives this script and
# ignores CI's signals), log in $K8S_RUN/log/NAME.log, pid recorded for down.
start() {
	local name=$1
	shift
	setsid "$@" >"$K8S_RUN/log/$name.log" 2>&1 </dev/null &
	echo $! >"$K8S_RUN/pid/$name"
}

# wait_for WHAT SECONDS CMD...: poll CMD once a second until it succeeds.
wait_for() {
	local what=$1 n=$2 i
	shift 2
	for ((i = 0; i < n; i++)); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 1
	done
	die "$what not ready after ${n}s (logs: $K8S_RUN/log)"
}

# guard up|down: an iptables chain in OUTPUT and FORWARD that REJECTs a
# packet still addressed to the service range after NAT (a ClusterIP dialled
# before kube-proxy programmed it would follow the default route off the
# machine: it happened while this recipe was built), and a pod-range packet
# that does not leave through the bridge. DNATed packets are exempt: for
# locally generated ones, filter OUTPUT sees the pre-NAT route.
guard() {
	local c
	for c in OUTPUT FORWARD; do while iptables -D "$c" -j PAYSERVICE-K8S-GUARD 2>/dev/null; do :; done; done
	iptables -F PAYSERVICE-K8S-GUARD 2>/dev/null || true
	iptables -X PAYSERVICE-K8S-GUARD 2>/dev/null || true
	[ "$1" = up ] || return 0
	iptables -N PAYSERVICE-K8S-GUARD
	iptables -A PAYSERVICE-K8S-GUARD -d "$SVC_CIDR" -j REJECT
	iptables -A PAYSERVICE-K8S-GUARD -d "$POD_CIDR" ! -o "$BRIDGE" -m conntrack ! --ctstate DNAT -j REJECT
	for c in OUTPUT FORWARD; do iptables -I "$c" 1 -j PAYSERVICE-K8S-GUARD; done
}

# pki: a CA and one certificate per component, made once per cluster.
pki() {
	mkdir -p "$P"
	(
		cd "$P"
		openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=payservice-e2e-ca -days 30 2>/dev/null
		openssl genrsa -out sa.key 2048 2>/dev/null # signs service-account tokens
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		cert apiserver /CN=kube-apiserver serverAuth "IP:$NODE_IP,IP:127.0.0.1,IP:${SVC_CIDR%.0/16}.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
		cert kubelet-serving "/CN=$NODE_NAME" serverAuth "IP:$NODE_IP,DNS:$NODE_NAME"
		cert admin /O=system:masters/CN=admin
		cert apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client
		cert front-proxy-client /CN=front-proxy-client # the aggregation layer (metrics-server)
		cert controller-manager /CN=system:kube-controller-manager
		cert scheduler /CN=system:kube-scheduler
		cert kube-proxy /CN=system:kube-proxy
		cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
		for n in admin controller-manager scheduler kube-proxy kubelet; do kubeconfig $n; done
	)
}

# cert NAME SUBJECT [USAGE [SANS]]: a key and a certificate signed by the CA.
cert() {
	local n=$1 subj=$2 usage=${3:-clientAuth} sans=${4:-}
	openssl req -newkey rsa:2048 -nodes -keyout "$n.key" -subj "$subj" -out "$n.csr" 2>/dev/null
	{
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
	} >"$n.ext"
	openssl x509 -req -in "$n.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile "$n.ext" -out "$n.crt" 2>/dev/null
	rm "$n.csr" "$n.ext"
}

# kubeconfig NAME: NAME.kubeconfig, with NAME's client certificate embedded.
kubeconfig() {
	local k=$1.kubeconfig
	kubectl config --kubeconfig="$k" set-cluster e2e --server="https://$NODE_IP:6443" --certificate-authority=ca.crt --embed-certs >/dev/null
	kubectl config --kubeconfig="$k" set-credentials "$1" --client-certificate="$1.crt" --client-key="$1.key" --embed-certs >/dev/null
	kubectl config --kubeconfig="$k" set-context e2e --cluster=e2e --user="$1" >/dev/null
	kubectl config --kubeconfig="$k" use-context e2e >/dev/null
}

control_plane() {
	start etcd etcd --data-dir "$K8S_STATE/etcd" \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
	# --enable-aggregator-routing: reach metrics-server by its pod IP, not
	# through its ClusterIP (see guard).
	start kube-apiserver kube-apiserver --advertise-address="$NODE_IP" --bind-address="$NODE_IP" \
		--etcd-servers=http://127.0.0.1:2379 --service-cluster-ip-range="$SVC_CIDR" \
		--client-ca-file="$P/ca.crt" --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
		--kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
		--kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--requestheader-client-ca-file="$P/ca.crt" --requestheader-allowed-names=front-proxy-client \
		--requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
		--requestheader-extra-headers-prefix=X-Remote-Extra- \
		--proxy-client-cert-file="$P/front-proxy-client.crt" --proxy-client-key-file="$P/front-proxy-client.key" \
		--enable-aggregator-routing=true
	wait_for kube-apiserver 120 kubectl get --raw=/readyz
	start kube-controller-manager kube-controller-manager --kubeconfig="$P/controller-manager.kubeconfig" \
		--authentication-kubeconfig="$P/controller-manager.kubeconfig" --authorization-kubeconfig="$P/controller-manager.kubeconfig" \
		--bind-address=127.0.0.1 --root-ca-file="$P/ca.crt" --service-account-private-key-file="$P/sa.key" \
		--cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
		--use-service-account-credentials --service-cluster-ip-range="$SVC_CIDR" --leader-elect=false
	start kube-scheduler kube-scheduler --kubeconfig="$P/scheduler.kubeconfig" \
		--authentication-kubeconfig="$P/scheduler.kubeconfig" --authorization-kubeconfig="$P/scheduler.kubeconfig" \
		--bind-address=127.0.0.1 --leader-elect=false
}

node() {
	mkdir -p "$K8S_RUN/cni" "$K8S_STATE/kubelet"
	cat >"$K8S_RUN/cni/10-bridge.conflist" <<-JSON
		{"cniVersion": "0.4.0", "name": "payservice-e2e", "plugins": [
		  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
		            "dataDir": "$K8S_RUN/cni-ipam"}},
		  {"type": "portmap", "capabilities": {"portMappings": true}}]}
	JSON
	# restrict_oom_score_adj: these machines lack CAP_SYS_RESOURCE, and runc
	# fails every sandbox whose oom_score_adj (pause: -998) is below
	# containerd's own. cgroupfs: no systemd as PID 1.
	cat >"$K8S_RUN/containerd.toml" <<-TOML
		version = 2
		root = "$K8S_STATE/containerd"
		state = "$K8S_RUN/containerd"
		[grpc]
		  address = "$K8S_RUN/containerd.sock"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "localhost/pause:e2e"
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "/usr/lib/cni"
		    conf_dir = "$K8S_RUN/cni"
	TOML
	start containerd containerd --config "$K8S_RUN/containerd.toml"
	wait_for containerd 30 "${CTR[@]}" version
	addon_images
	# The sysctls the kubelet would set, recorded first so down restores them.
	sysctl -n vm.overcommit_memory kernel.panic kernel.panic_on_oops | paste -sd' ' >"$K8S_RUN/sysctl.before"
	sysctl -qw vm.overcommit_memory=1 kernel.panic=10 kernel.panic_on_oops=1
	cat >"$K8S_RUN/kubelet.yaml" <<-YAML
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		address: $NODE_IP
		authentication: {anonymous: {enabled: false}, webhook: {enabled: true}, x509: {clientCAFile: $P/ca.crt}}
		authorization: {mode: Webhook}
		tlsCertFile: $P/kubelet-serving.crt
		tlsPrivateKeyFile: $P/kubelet-serving.key
		cgroupDriver: cgroupfs
		failCgroupV1: false
		failSwapOn: false
		containerRuntimeEndpoint: unix://$K8S_RUN/containerd.sock
		clusterDomain: cluster.local
		clusterDNS: [$DNS_IP]
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		imageGCHighThresholdPercent: 100 # never collect the imported images: nothing could pull them back
		evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
	YAML
	start kubelet kubelet --config="$K8S_RUN/kubelet.yaml" --kubeconfig="$P/kubelet.kubeconfig" \
		--hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --root-dir="$K8S_STATE/kubelet" --v=1
	# The zeroes and localhost-nodeports=false: kube-proxy changes no sysctl.
	start kube-proxy kube-proxy --kubeconfig="$P/kube-proxy.kubeconfig" --hostname-override="$NODE_NAME" \
		--proxy-mode=iptables --cluster-cidr="$POD_CIDR" --iptables-localhost-nodeports=false \
		--conntrack-max-per-core=0 --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
		--metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256
	wait_for "node $NODE_NAME" 180 sh -c "kubectl get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
}

# addon_images: pause (Kubernetes' own pause.c, from the module), CoreDNS
# and metrics-server, each a one-file image built FROM scratch.
addon_images() {
	local d=$K8S_RUN/images src
	mkdir -p "$d/pause" "$d/coredns" "$d/metrics-server"
	src=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	gcc -Os -static -DVERSION=e2e -o "$d/pause/pause" "$src/build/pause/linux/pause.c"
	cp "$K8S_BIN/coredns" "$d/coredns/"
	cp "$K8S_BIN/metrics-server" "$d/metrics-server/"
	local n
	for n in pause coredns metrics-server; do
		printf 'FROM scratch\nCOPY %s /%s\nENTRYPOINT ["/%s"]\n' "$n" "$n" "$n" >"$d/$n/Dockerfile"
		quiet_build -t "localhost/$n:e2e" "$d/$n"
	done
	load localhost/pause:e2e localhost/coredns:e2e localhost/metrics-server:e2e
}

# load IMAGE...: from the local Docker engine into the cluster's containerd.
load() {
	docker save "$@" | "${CTR[@]}" images import - >/dev/null
}

up() {
	command -v docker >/dev/null && docker info >/dev/null 2>&1 || die "a running Docker engine is needed to build and load images"
	apt_install containerd runc containernetworking-plugins conntrack iptables gcc libc6-dev openssl
	"$here/build.sh"
	[ ! -e "$K8S_RUN/pid" ] || die "a cluster seems to be up ($K8S_RUN/pid exists): run '$0 down' first"
	mkdir -p "$K8S_RUN/pid" "$K8S_RUN/log" "$K8S_STATE"
	local t0=$SECONDS
	ip addr add "$NODE_IP/32" dev lo
	guard up # before anything can dial a ClusterIP
	pki
	control_plane
	node
	kubectl apply -f "$here/addons.yaml" >/dev/null
	kubectl -n kube-system rollout status deploy/coredns --timeout=120s >/dev/null
	kubectl -n kube-system rollout status deploy/metrics-server --timeout=120s >/dev/null
	log "cluster up in $((SECONDS - t0))s: $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.nodeInfo.kubeletVersion}') on $NODE_IP"
	echo "KUBECONFIG=$KUBECONFIG"
}

# stop NAME: SIGTERM, up to 10 s, then SIGKILL; only the pid we recorded.
stop() {
	local f=$K8S_RUN/pid/$1 pid i
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	kill "$pid" 2>/dev/null || true
	for ((i = 0; i < 20; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
	kill -9 "$pid" 2>/dev/null || true
	rm -f "$f"
}

down() {
	set +e # clean up all we can, whatever fails
	local t0=$SECONDS
	stop kube-proxy
	stop kubelet
	# The pods' containers outlive the kubelet: kill them and their shims.
	if [ -S "$K8S_RUN/containerd.sock" ]; then
		local t
		for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks kill -s SIGKILL "$t"; done
		sleep 1
		for t in $("${CTR[@]}" tasks ls -q 2>/dev/null); do "${CTR[@]}" tasks delete -f "$t"; done
		for t in $("${CTR[@]}" containers ls -q 2>/dev/null); do "${CTR[@]}" containers delete "$t"; done
	fi
	for n in kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do stop $n; done
	# iptables: kube-proxy's chains, then the kubelet's own, then ours.
	[ -x "$K8S_BIN/kube-proxy" ] && "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1
	local ipt tb
	for ipt in iptables ip6tables; do
		$ipt -D INPUT -j KUBE-FIREWALL 2>/dev/null
		$ipt -D OUTPUT -j KUBE-FIREWALL 2>/dev/null
		$ipt -F KUBE-FIREWALL 2>/dev/null
		$ipt -X KUBE-FIREWALL 2>/dev/null
		for tb in filter nat mangle; do $ipt -t $tb -X KUBE-KUBELET-CANARY 2>/dev/null; done
		$ipt -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null
	done
	guard down
	# Pod network namespaces, the bridge, the node address.
	for n in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns del "$n"; done
	ip link del "$BRIDGE" 2>/dev/null
	ip addr del "$NODE_IP/32" dev lo 2>/dev/null
	if [ -f "$K8S_RUN/sysctl.before" ]; then
		read -r oc panic oops <"$K8S_RUN/sysctl.before"
		sysctl -qw vm.overcommit_memory="$oc" kernel.panic="$panic" kernel.panic_on_oops="$oops"
	fi
	# The kubelet's cgroups (cgroupfs driver), deepest first.
	for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
		[ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} + 2>/dev/null
	done
	# Mounts left by pods (secrets, overlay rootfs), deepest first.
	mount | awk -v a="$K8S_STATE" -v b="$K8S_RUN" 'index($3, a) == 1 || index($3, b) == 1 {print $3}' |
		sort -r | xargs -r umount -l 2>/dev/null
	rm -rf "$K8S_STATE" "$K8S_RUN"
	log "cluster down in $((SECONDS - t0))s; binaries stay in $K8S_BIN"
	return 0
}

case ${1:-} in
up) up ;;
down) down ;;
load)
	shift
	load "$@"
	;;
*) die "usage: $0 up|down|load IMAGE..." ;;
esac
