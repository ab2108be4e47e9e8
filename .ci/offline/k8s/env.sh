# shellcheck shell=bash
# Settings shared by the .ci/offline/k8s/ scripts. Source it; do not execute it.
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../lib.sh"

K8S_VERSION=v1.34.4           # kept at 1.34: 1.36+ wants containerd 2, Debian 12 ships 1.6
ETCD_VERSION=v3.6.16
COREDNS_VERSION=v1.14.7
METRICS_SERVER_VERSION=v0.9.0

# Binaries survive runs (the slow part); cluster state does not.
K8S_CACHE=${K8S_CACHE:-/var/cache/payservice-k8s}
K8S_BIN=$K8S_CACHE/bin/$K8S_VERSION
K8S_STATE=/var/lib/payservice-k8s # etcd data, kubelet and containerd roots
K8S_RUN=/run/payservice-k8s       # sockets, pids, PKI, kubeconfigs, logs

# The node's address. This kernel has no dummy interface module and kubelet
# refuses loopback (127/8) node IPs, so it is an extra /32 on lo.
NODE_IP=10.200.0.1
NODE_NAME=node1
SVC_CIDR=10.96.0.0/16 # the API server's ClusterIP is its first address
POD_CIDR=10.88.0.0/16 # on the k8sbr0 bridge
DNS_IP=10.96.0.10
BRIDGE=k8sbr0

export KUBECONFIG=$K8S_RUN/pki/admin.kubeconfig
CTR=(ctr -a "$K8S_RUN/containerd.sock" -n k8s.io)
