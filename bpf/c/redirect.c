//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * redirect.c: Ferry's capture program. One BPF_PROG_TYPE_SK_LOOKUP program is
 * attached to the node's network namespace. The kernel runs it whenever a
 * packet that policy routing delivered locally looks for a listening socket.
 * Connections from or to an enrolled pod are handed to one of the agent's
 * three listeners (held in a SOCKMAP); everything else is left alone.
 *
 * Order matters: a connection whose remote (source) address is an enrolled
 * pod is that pod's own outbound connection, even when its destination is an
 * enrolled pod on the same node, so the source pod's identity tunnels it. The
 * agent's own sockets never reach this program through capture (policy
 * routing sends everything the node originates to the main table), so an
 * enrolled remote address always means the pod itself sent the SYN.
 */
#include "ferry_bpf.h"

/* Index into ferry_listeners. Must match bpf.Listener in Go. */
enum ferry_listener {
	FERRY_LISTENER_OUTBOUND = 0,
	FERRY_LISTENER_INBOUND = 1,
	FERRY_LISTENER_HBONE = 2,
	FERRY_LISTENER_MAX,
};

/* Index into ferry_counters. Must match bpf.Verdict in Go. The first three
 * equal the listener they assign to. */
enum ferry_verdict {
	FERRY_VERDICT_OUTBOUND = 0,
	FERRY_VERDICT_INBOUND = 1,
	FERRY_VERDICT_HBONE = 2,
	FERRY_VERDICT_NO_LISTENER = 3,  /* dropped: the agent has no listener */
	FERRY_VERDICT_ASSIGN_FAILED = 4, /* dropped: bpf_sk_assign refused */
	FERRY_VERDICT_MAX,
};

/* Bits of a ferry_pods value. None is defined yet: presence enrols. */
enum ferry_pod_flags {
	FERRY_POD_NONE = 0,
};

/* The port that selects the HBONE listener for connections to an enrolled
 * pod. Set at load time; the verifier sees a constant. */
volatile const __u32 ferry_hbone_port = 15008;

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, FERRY_LISTENER_MAX);
	__type(key, enum ferry_listener);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_listeners SEC(".maps");

/* Enrolled pods: IPv4 address (network byte order) to enum ferry_pod_flags. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, enum ferry_pod_flags);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FERRY_VERDICT_MAX);
	__type(key, enum ferry_verdict);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_counters SEC(".maps");

static __always_inline void count(__u32 verdict)
{
	__u64 *n = bpf_map_lookup_elem(&ferry_counters, &verdict);

	if (n)
		*n += 1; /* per-CPU slot: no atomics needed */
}

SEC("sk_lookup")
int ferry_sk_lookup(struct bpf_sk_lookup *ctx)
{
	__be32 remote = ctx->remote_ip4;
	__be32 local = ctx->local_ip4;
	struct bpf_sock *sk;
	__u32 which;
	long err;

	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	if (bpf_map_lookup_elem(&ferry_pods, &remote))
		which = FERRY_LISTENER_OUTBOUND;
	else if (bpf_map_lookup_elem(&ferry_pods, &local))
		which = ctx->local_port == ferry_hbone_port ? FERRY_LISTENER_HBONE
							    : FERRY_LISTENER_INBOUND;
	else
		return SK_PASS;

	/* From here on the connection is ours: without a listener it is
	 * refused, never handed to whatever else listens on that port
	 * (fail closed). */
	sk = bpf_map_lookup_elem(&ferry_listeners, &which);
	if (!sk) {
		count(FERRY_VERDICT_NO_LISTENER);
		return SK_DROP;
	}
	/* NO_REUSEPORT: the exact socket in the map, not a member of its
	 * SO_REUSEPORT group, so swapping the entry moves new connections. */
	err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	if (err) {
		count(FERRY_VERDICT_ASSIGN_FAILED);
		return SK_DROP;
	}
	count(which);
	return SK_PASS;
}

char __license[] SEC("license") = "Dual BSD/GPL";
