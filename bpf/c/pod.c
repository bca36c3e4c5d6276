//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pod.c: Ferry's in-pod capture program (--capture pod). One instance is
 * attached to each enrolled pod's network namespace, loaded with that pod's
 * IPv4 address as a constant: an sk_lookup program cannot tell which
 * namespace it runs in, and the same connection (pod A to pod B, seen on
 * loopback) is A's outbound connection in A's namespace but the agent's
 * delivery to B in B's. All instances share the listener SOCKHASH (keyed by
 * pod address and listener) and the counters.
 *
 * Inside the pod, policy routing delivers the pod's own TCP locally (the
 * agent's sockets carry a mark that exempts them), so:
 *   - a connection from the pod's address to anything but the pod itself is
 *     the pod's outbound connection: the outbound listener;
 *   - a connection to the pod's address that arrived on an interface (not
 *     loopback) is inbound: the HBONE listener on the HBONE port, the
 *     plaintext one otherwise; the kubelet's probes, which the node sends
 *     from an address only it uses, are left alone;
 *   - the agent delivering an inbound connection to the pod (from the
 *     client's address, inside the pod) is left alone: the agent lists each
 *     such connection in ferry_pod_own before it connects. Nothing else in
 *     the context tells it from a client's: the kernel reports the pod's
 *     interface as the ingress of local connections to the pod's address,
 *     and an sk_lookup program cannot read the socket's mark;
 *   - the pod talking to itself (from and to its own address, or over
 *     127.0.0.0/8) is left alone.
 */
#include "ferry_bpf.h"

/* Must match bpf.Listener and bpf.Verdict in Go (and redirect.c). */
enum ferry_pod_listener {
	FERRY_POD_OUTBOUND = 0,
	FERRY_POD_INBOUND = 1,
	FERRY_POD_HBONE = 2,
};

enum ferry_pod_verdict {
	FERRY_POD_VERDICT_NO_LISTENER = 3,
	FERRY_POD_VERDICT_ASSIGN_FAILED = 4,
	FERRY_POD_VERDICT_MAX = 5,
};

/* Set per instance at load time; the verifier sees constants. */
volatile const __be32 ferry_pod_ip = 0;
volatile const __be32 ferry_probe_src = 0; /* 0: no probe exemption */
volatile const __u32 ferry_pod_hbone_port = 15008;

struct ferry_pod_key {
	__be32 pod;
	__u32 listener; /* enum ferry_pod_listener */
};

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 3 * 8192);
	__type(key, struct ferry_pod_key);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_pod_socks SEC(".maps");

/* A connection the agent is making into a pod, by its 4-tuple as the pod
 * sees it: the client's address and port (remote), the pod's (local). */
struct ferry_pod_conn {
	__be32 remote_ip;
	__be32 local_ip;
	__be16 remote_port; /* network byte order, as in the context */
	__u16 local_port;   /* host byte order, as in the context */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ferry_pod_conn);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_pod_own SEC(".maps");

/* The captured pods' addresses, for ferry_probe_connect. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __be32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FERRY_POD_VERDICT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ferry_pod_counts SEC(".maps");

static __always_inline void count(__u32 verdict)
{
	__u64 *n = bpf_map_lookup_elem(&ferry_pod_counts, &verdict);

	if (n)
		*n += 1;
}

SEC("sk_lookup")
int ferry_pod_lookup(struct bpf_sk_lookup *ctx)
{
	struct ferry_pod_key key = { .pod = ferry_pod_ip };
	__be32 local = ctx->local_ip4;
	struct bpf_sock *sk;
	long err;

	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;

	if (local == ferry_pod_ip) {
		struct ferry_pod_conn conn = {
			.remote_ip = ctx->remote_ip4,
			.local_ip = local,
			.remote_port = ctx->remote_port,
			.local_port = ctx->local_port,
		};

		if (ctx->remote_ip4 == ferry_pod_ip)
			return SK_PASS; /* the pod to itself */
		if (ferry_probe_src && ctx->remote_ip4 == ferry_probe_src)
			return SK_PASS;
		if (bpf_map_lookup_elem(&ferry_pod_own, &conn))
			return SK_PASS;
		key.listener = ctx->local_port == ferry_pod_hbone_port ? FERRY_POD_HBONE
								       : FERRY_POD_INBOUND;
	} else if (ctx->remote_ip4 == ferry_pod_ip && (local & 0xff) != 127) {
		/* (local & 0xff) is the first byte in network order on this
		 * little-endian target: 127.0.0.0/8 stays the pod's own. */
		key.listener = FERRY_POD_OUTBOUND;
	} else {
		return SK_PASS;
	}

	/* Ours from here on: without a listener the connection is refused
	 * (fail closed), never handed to whatever else listens. */
	sk = bpf_map_lookup_elem(&ferry_pod_socks, &key);
	if (!sk) {
		count(FERRY_POD_VERDICT_NO_LISTENER);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, BPF_SK_LOOKUP_F_NO_REUSEPORT);
	bpf_sk_release(sk);
	if (err) {
		count(FERRY_POD_VERDICT_ASSIGN_FAILED);
		return SK_DROP;
	}
	count(key.listener);
	return SK_PASS;
}

/*
 * ferry_probe_connect, attached to the kubelet's cgroup (one instance): the
 * kubelet's TCP connections to a captured pod leave from ferry_probe_src, an
 * address only the node uses, which the pod programs let through
 * uncaptured. Every other process on the node, hostNetwork pods included,
 * keeps its address and meets the pod's capture. It never refuses a
 * connection: if binding fails, the probe is captured like any other.
 */
SEC("cgroup/connect4")
int ferry_probe_connect(struct bpf_sock_addr *ctx)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	__be32 dst = ctx->user_ip4;

	if (!ferry_probe_src || ctx->protocol != IPPROTO_TCP)
		return 1;
	if (!bpf_map_lookup_elem(&ferry_pod_ips, &dst))
		return 1;
	sa.sin_addr = ferry_probe_src;
	bpf_bind(ctx, &sa, sizeof(sa));
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
