#!/usr/bin/env bash
# partition.sh - a network partition between the prefill's and the decode's
# namespaces, mid-transfer, over tcp and ucx (on UCX's tcp transport).
# Layout (netns.sh's bridge, plus a direct link that carries the KV):
#
#   ns C  10.79.0.4  the test driver and a unified server (reference)
#   ns P  10.79.0.2  prefill (HTTP over the bridge)   kv0 10.80.0.1
#   ns D  10.79.0.3  decode  (HTTP over the bridge)   kv0 10.80.0.2
#   bridge br0 in a fourth namespace joins P, D and C; kv0 joins P and D
#
# Taking P's kv0 down cuts P from D only: the client still reaches both and
# sees each half's answer. Skips (exit 0) where namespaces cannot be made;
# always removes its namespaces.
source "$(dirname "$0")/lib.sh"
START=$SECONDS
command -v ip >/dev/null || { echo "skip: partition.sh needs ip"; exit 0; }
TAG=flt$$
export NS_SW=${TAG}sw NS_P=${TAG}p NS_D=${TAG}d NS_C=${TAG}c
CLEANUP_MORE='for n in $NS_P $NS_D $NS_C $NS_SW; do ip netns del "$n"; done'
if ! ip netns add "$NS_SW" 2>/dev/null; then
	echo "skip: cannot create network namespaces here (needs root / CAP_SYS_ADMIN)"
	exit 0
fi
ip -n "$NS_SW" link add br0 type bridge
ip -n "$NS_SW" link set br0 up
i=2
for ns in $NS_P $NS_D $NS_C; do
	ip netns add "$ns"
	ip link add "v$ns" type veth peer name "b$ns"
	ip link set "v$ns" netns "$ns"
	ip link set "b$ns" netns "$NS_SW"
	ip -n "$NS_SW" link set "b$ns" master br0 up
	ip -n "$ns" addr add "10.79.0.$i/24" dev "v$ns"
	ip -n "$ns" link set "v$ns" up
	ip -n "$ns" link set lo up
	i=$((i + 1))
done
ip link add kvp netns "$NS_P" type veth peer name kvd netns "$NS_D"
ip -n "$NS_P" link set kvp name kv0
ip -n "$NS_D" link set kvd name kv0
ip -n "$NS_P" addr add 10.80.0.1/24 dev kv0
ip -n "$NS_D" addr add 10.80.0.2/24 dev kv0
ip -n "$NS_P" link set kv0 up
ip -n "$NS_D" link set kv0 up
# UCX only lists an interface once it is operationally up
for _ in $(seq 100); do
	ip -n "$NS_P" link show kv0 | grep -q 'state UP' && ip -n "$NS_D" link show kv0 | grep -q 'state UP' && break
	sleep 0.05
done
export P_IP=10.79.0.2 D_IP=10.79.0.3 C_IP=10.79.0.4 KV_P_IP=10.80.0.1 KV_DEV=kv0
# ucx runs on UCX's tcp transport over kv0. The decode gives each prefill
# connection a UCX worker of its own and closes it with the connection, so
# the prefill's late emulated puts (retransmitted once the link heals) find
# nothing; with one shared worker UCX 1.13 aborted the decode there
# ("Endpoint timeout" in ucp_put_handler). tcp alone is a fencing transport,
# so the decode frees the room's pages at once (checked).
PB=tcp
case " $BACKENDS " in *" ucx "*) PB="tcp ucx" ;; esac
# shellcheck disable=SC2086
ip netns exec "$NS_C" python3 "$FAULTS/faults.py" partition $PB || fail partition
echo "ok: partition.sh ($((SECONDS - START)) s)"
