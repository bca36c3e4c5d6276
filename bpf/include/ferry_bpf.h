/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ferry_bpf.h: the small part of the kernel's BPF UAPI and of the usual
 * map-definition conventions that Ferry's programs use, written out so the
 * build depends on no header of the machine it runs on (no /usr/include, no
 * vmlinux.h). Every number below is kernel ABI and can never change; the
 * values are those of include/uapi/linux/bpf.h. The loader's privileged tests
 * load and run the programs, so a wrong value fails them.
 */
#ifndef FERRY_BPF_H
#define FERRY_BPF_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;

/* Section placement and BTF-defined map attributes (the ELF conventions
 * libbpf established and cilium/ebpf reads). */
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))

/* enum bpf_map_type */
#define BPF_MAP_TYPE_HASH 1
#define BPF_MAP_TYPE_PERCPU_ARRAY 6
#define BPF_MAP_TYPE_SOCKMAP 15
#define BPF_MAP_TYPE_SOCKHASH 18

/* map_flags */
#define BPF_F_NO_PREALLOC (1U << 0)

/* Pinning mode understood by the loader: pin under the pin path by name. */
#define LIBBPF_PIN_BY_NAME 1

/* enum sk_action */
#define SK_DROP 0
#define SK_PASS 1

/* bpf_sk_assign flags for sk_lookup programs */
#define BPF_SK_LOOKUP_F_REPLACE (1ULL << 0)
#define BPF_SK_LOOKUP_F_NO_REUSEPORT (1ULL << 1)

#define AF_INET 2
#define IPPROTO_TCP 6

struct bpf_sock;

/* struct bpf_sk_lookup: the sk_lookup program context (Linux 5.9, with
 * ingress_ifindex since 5.17). Only loads of these fields are allowed. */
struct bpf_sk_lookup {
	union {
		struct bpf_sock *sk __attribute__((aligned(8)));
		__u64 cookie;
	};
	__u32 family;
	__u32 protocol;
	__u32 remote_ip4;    /* network byte order */
	__u32 remote_ip6[4]; /* network byte order */
	__be16 remote_port;  /* network byte order */
	__u16 : 16;
	__u32 local_ip4;     /* network byte order */
	__u32 local_ip6[4];  /* network byte order */
	__u32 local_port;    /* host byte order */
	__u32 ingress_ifindex;
};

/* struct bpf_sock_addr: the cgroup/connect4 program context (Linux 4.17).
 * Only the fields Ferry reads are used. */
struct bpf_sock_addr {
	__u32 user_family;
	__u32 user_ip4;    /* network byte order */
	__u32 user_ip6[4]; /* network byte order */
	__u32 user_port;   /* network byte order */
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	union {
		struct bpf_sock *sk __attribute__((aligned(8)));
		__u64 : 64;
	};
};

struct sockaddr_in {
	__u16 sin_family;
	__be16 sin_port;
	__be32 sin_addr;
	__u8 sin_zero[8];
};

/* Helpers, by their stable numbers in enum bpf_func_id. */
static long (*bpf_bind)(void *ctx, struct sockaddr_in *addr, int addr_len) = (void *)64;
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_sk_release)(void *sock) = (void *)86;
static long (*bpf_sk_assign)(void *ctx, void *sk, __u64 flags) = (void *)124;

#endif /* FERRY_BPF_H */
