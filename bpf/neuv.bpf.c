// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * neuv.bpf.c: the port-pair datapath (DATAPATH.md sections 3 and 5).
 *
 * Three TC programs, each on the ingress hook of one kind of port:
 *   neuv_vin  vin ingress:      frames from the workload
 *   neuv_vex  vex ingress:      frames from the host side, headed for the workload
 *   neuv_vbr  vbr-neuv ingress: frames the DP (enforcer userspace) sends back
 *
 * Every decision is one or two hash lookups plus a MAC rewrite and a
 * redirect: constant time in the number of pairs, no loops.
 *
 * Minimum kernel: 5.10 (bpf_redirect_peer). Every other helper used here
 * (bpf_redirect, bpf_clone_redirect, bpf_skb_store_bytes,
 * bpf_skb_change_type) and BTF-defined maps are older than that.
 *
 * Each program has one exit: it fills a struct outcome (action, counters,
 * reason), finish() counts it and returns the action. Programs only ever
 * return TC_ACT_OK, TC_ACT_SHOT or TC_ACT_REDIRECT (the value of
 * bpf_redirect*, which is TC_ACT_REDIRECT for flags 0).
 *
 * Decisions beyond the DATAPATH.md tables (mirrored in src/model.ts):
 * - vin/vex: no port entry passes (PASS_NO_PORT); a role that does not match
 *   the hook, or a mode other than FWD/TAP/BYPASS, drops every frame, even
 *   one shorter than an Ethernet header; otherwise such a short frame goes to
 *   the peer unchanged.
 * - vbr-neuv: the port entry of the target (vin or vex) gives the mode, the
 *   MAC and the flags; its role is not checked.
 * - TAP: a clone that does not get out (any non-zero bpf_clone_redirect
 *   result, e.g. no such DP port, or it is down) counts CLONE_FAILED instead
 *   of COPY; the original is still forwarded.
 * - pkt_type (neuv_set_pkt_type): set to PACKET_HOST before a redirect_peer
 *   of a frame whose DA is M (towards the workload) or any unicast DA
 *   (towards the network: vin -> vex and vbr-neuv -> vex alike).
 *
 * MAC rewrites always go through bpf_skb_store_bytes (flags 0: the Ethernet
 * header is outside skb->csum at tc ingress). parse_eth() copies what the
 * rules need out of the packet before any helper runs, and loads data and
 * data_end afresh from the skb each time it is called; nothing dereferences
 * a packet pointer after bpf_skb_store_bytes or bpf_clone_redirect (which
 * may move the data). A later packet read must call parse_eth() again.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "neuv.h"

#ifndef PACKET_HOST
#define PACKET_HOST 0 /* linux/if_packet.h */
#endif /* PACKET_HOST */

#define ETH_OFF_DEST   0 /* offsetof(struct ethhdr, h_dest) */
#define ETH_OFF_SOURCE 6 /* offsetof(struct ethhdr, h_source) */

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/*
 * Load-time constants (.rodata, set between open and load).
 * neuv_set_pkt_type: before a bpf_redirect_peer of a unicast frame, set
 * skb->pkt_type to PACKET_HOST (kernels < 6.15 keep PACKET_OTHERHOST and the
 * receiving stack drops the frame).
 * neuv_build_tag: identifies a build; only referenced, never acted on.
 */
const volatile __u32 neuv_set_pkt_type = 1;
const volatile __u32 neuv_build_tag = 0;

/* Key: ingress ifindex of a vin or vex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NEUV_MAX_PORTS);
	__type(key, __u32);
	__type(value, struct neuv_port);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_ports SEC(".maps");

/* Key: 16-bit port id carried in the UCMAC. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NEUV_MAX_IDS);
	__type(key, __u32);
	__type(value, struct neuv_id);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_ids SEC(".maps");

/* Key: port id. The loader creates the entry at pair add; no entry, no count. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NEUV_MAX_IDS);
	__type(key, __u32);
	__type(value, struct neuv_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_stats SEC(".maps");

/* Node-wide pass/drop reason counters. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct neuv_global);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_global SEC(".maps");

/* Node-wide settings written by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct neuv_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_config SEC(".maps");

/* What a program decided; counted and returned by finish(). */
struct outcome {
	int action;   /* TC_ACT_* */
	__u32 id;     /* port id for neuv_stats, valid if has_id */
	__u8 has_id;
	__u8 dir;     /* enum neuv_dir */
	__u8 v1;      /* enum neuv_verdict, NEUV_V_MAX = none */
	__u8 v2;      /* second verdict (TAP: COPY then TO_PEER), NEUV_V_MAX = none */
	__u8 reason;  /* enum neuv_reason, NEUV_R_NONE = none */
};

/* The fields of an Ethernet header the rules look at. */
struct eth_info {
	__u16 proto;      /* EtherType, host order (a VLAN tag is just 0x8100) */
	__u8 unicast;     /* DA[0] bit 0 clear */
	__u8 da[6];
	__u8 sa[6];
};

/*
 * Bounds-checked parse of the Ethernet header: fills *ei and returns 0, or
 * returns -1 when the frame is shorter than 14 bytes.
 */
static __always_inline int parse_eth(const struct __sk_buff *skb, struct eth_info *ei)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(ei->da, eth->h_dest, 6);
	__builtin_memcpy(ei->sa, eth->h_source, 6);
	ei->proto = bpf_ntohs(eth->h_proto);
	ei->unicast = !(eth->h_dest[0] & 1);
	return 0;
}

static __always_inline int mac_eq(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) |
		(a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

static __always_inline int is_ucmac(const __u8 *m)
{
	return m[0] == NEUV_UCMAC_B0 && m[1] == NEUV_UCMAC_B1 &&
	       m[2] == NEUV_UCMAC_B2 && m[3] == NEUV_UCMAC_B3;
}

static __always_inline void make_ucmac(__u8 *m, __u16 id)
{
	m[0] = NEUV_UCMAC_B0;
	m[1] = NEUV_UCMAC_B1;
	m[2] = NEUV_UCMAC_B2;
	m[3] = NEUV_UCMAC_B3;
	m[4] = id >> 8;
	m[5] = id & 0xff;
}

static __always_inline void count(struct neuv_stats *st, __u32 dir, __u32 v, __u32 len)
{
	struct neuv_ctr *c;

	if (dir >= NEUV_DIR_MAX || v >= NEUV_V_MAX)
		return;
	c = &st->c[dir][v];
	c->packets += 1; /* per-CPU value: plain adds */
	c->bytes += len;
}

/* The single exit of every program: count the outcome, return its action. */
static __always_inline int finish(struct __sk_buff *skb, const struct outcome *o)
{
	__u32 zero = 0;
	__u32 r = o->reason;
	/* Reference the build tag so it stays in the object's .rodata. */
	volatile __u32 build_tag = neuv_build_tag;

	(void)build_tag;
	if (o->has_id) {
		__u32 id = o->id;
		struct neuv_stats *st = bpf_map_lookup_elem(&neuv_stats, &id);

		if (st) {
			count(st, o->dir, o->v1, skb->len);
			count(st, o->dir, o->v2, skb->len);
		}
	}
	if (r != NEUV_R_NONE && r < NEUV_R_MAX) {
		struct neuv_global *g = bpf_map_lookup_elem(&neuv_global, &zero);

		if (g)
			g->reason[r] += 1;
	}
	return o->action;
}

static __always_inline void drop(struct outcome *o, __u8 reason)
{
	o->action = TC_ACT_SHOT;
	o->v1 = NEUV_V_DROP;
	o->v2 = NEUV_V_MAX;
	o->reason = reason;
}

static __always_inline __u32 dp_ifindex(void)
{
	__u32 zero = 0;
	struct neuv_config *cfg = bpf_map_lookup_elem(&neuv_config, &zero);
	__u32 ifindex = cfg ? cfg->dp_ifindex : 0;

	return ifindex ? ifindex : NEUV_VBR_IFINDEX;
}

/*
 * Send the frame to ifindex: bpf_redirect_peer if the port entry asks for it
 * (then, if neuv_set_pkt_type, a frame the receiver must take as its own is
 * marked PACKET_HOST first), else bpf_redirect (egress of ifindex).
 */
static __always_inline int deliver(struct __sk_buff *skb, __u32 ifindex, __u32 flags, int host)
{
	if (flags & NEUV_F_REDIRECT_PEER) {
		if (neuv_set_pkt_type && host)
			bpf_skb_change_type(skb, PACKET_HOST);
		return bpf_redirect_peer(ifindex, 0);
	}
	return bpf_redirect(ifindex, 0);
}

/*
 * vin and vex ingress. role is the role the hook serves: NEUV_ROLE_VIN (frames
 * from the workload, direction FROM_WL, the match is on SA) or NEUV_ROLE_VEX
 * (frames for the workload, direction TO_WL, the match is on DA).
 */
static __always_inline int port_ingress(struct __sk_buff *skb, const __u8 role)
{
	const int vin = role == NEUV_ROLE_VIN;
	struct outcome o = {
		.action = TC_ACT_OK,
		.dir = vin ? NEUV_DIR_FROM_WL : NEUV_DIR_TO_WL,
		.v1 = NEUV_V_MAX,
		.v2 = NEUV_V_MAX,
		.reason = NEUV_R_NONE,
	};
	const __u32 off = vin ? ETH_OFF_SOURCE : ETH_OFF_DEST;
	__u32 ifindex = skb->ingress_ifindex;
	struct neuv_port *p;
	struct eth_info ei;
	__u8 uc[6], m[6];
	__u32 peer, flags;
	__u8 mode;
	int host = 0, match = 0;

	if (!ifindex)
		ifindex = skb->ifindex;
	p = bpf_map_lookup_elem(&neuv_ports, &ifindex);
	if (!p) {
		o.reason = NEUV_R_PASS_NO_PORT;
		goto out;
	}
	/* One snapshot of the entry: a concurrent mode switch is seen whole or not at all per field. */
	peer = p->peer_ifindex;
	flags = p->flags;
	mode = p->mode;
	o.id = p->id;
	o.has_id = 1;
	__builtin_memcpy(m, p->mac, 6);
	if (p->role != role) {
		drop(&o, NEUV_R_DROP_ROLE);
		goto out;
	}
	if (mode != NEUV_MODE_FWD && mode != NEUV_MODE_TAP && mode != NEUV_MODE_BYPASS) {
		drop(&o, NEUV_R_DROP_MODE);
		goto out;
	}

	if (parse_eth(skb, &ei) == 0) {
		int l3 = ei.proto == ETH_P_IP ||
			 (ei.proto == ETH_P_IPV6 && (flags & NEUV_F_IPV6_TO_DP));

		if (vin) {
			match = l3 && ei.unicast && mac_eq(ei.sa, m);
			host = ei.unicast;
		} else {
			host = ei.unicast && mac_eq(ei.da, m);
			match = l3 && host;
		}
	}
	/* else: shorter than an Ethernet header, goes to the peer unchanged. */

	if (match && mode == NEUV_MODE_FWD) {
		make_ucmac(uc, o.id);
		if (bpf_skb_store_bytes(skb, off, uc, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		o.action = bpf_redirect(dp_ifindex(), 0);
		o.v1 = NEUV_V_TO_DP;
		goto out;
	}
	if (match && mode == NEUV_MODE_TAP) {
		int err;

		make_ucmac(uc, o.id);
		if (bpf_skb_store_bytes(skb, off, uc, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		/* Anything but 0 (an errno, or NET_XMIT_DROP) means the copy did not get out. */
		err = bpf_clone_redirect(skb, dp_ifindex(), 0);
		/* The matched MAC was M: put it back for the original. */
		if (bpf_skb_store_bytes(skb, off, m, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		if (err)
			o.reason = NEUV_R_CLONE_FAILED;
		else
			o.v1 = NEUV_V_COPY;
	}
	o.action = deliver(skb, peer, flags, host);
	o.v2 = NEUV_V_TO_PEER;
out:
	return finish(skb, &o);
}

/* vin ingress: frames from the workload (its new eth0), headed for the network. */
SEC("tc")
int neuv_vin(struct __sk_buff *skb)
{
	return port_ingress(skb, NEUV_ROLE_VIN);
}

/* vex ingress: frames arriving from the host side, headed for the workload. */
SEC("tc")
int neuv_vex(struct __sk_buff *skb)
{
	return port_ingress(skb, NEUV_ROLE_VEX);
}

/*
 * vbr-neuv ingress: frames the DP sends back through vth-neuv.
 * DA == UCMAC(id): DA := M, to the pair's vin (towards the workload).
 * else SA == UCMAC(id): SA := M, to the pair's vex (towards the network).
 * Anything else, or an id with no pair, passes to the enforcer netns stack.
 */
SEC("tc")
int neuv_vbr(struct __sk_buff *skb)
{
	struct outcome o = {
		.action = TC_ACT_OK,
		.v1 = NEUV_V_MAX,
		.v2 = NEUV_V_MAX,
		.reason = NEUV_R_PASS_NO_PAIR,
	};
	struct neuv_port *p;
	struct neuv_id *pair;
	struct eth_info ei;
	__u32 id, off, ifindex, flags;
	__u8 m[6], mode;
	int host;

	if (parse_eth(skb, &ei))
		goto out;
	if (is_ucmac(ei.da)) {
		id = (__u32)ei.da[4] << 8 | ei.da[5];
		o.dir = NEUV_DIR_TO_WL;
		off = ETH_OFF_DEST;
	} else if (is_ucmac(ei.sa)) {
		id = (__u32)ei.sa[4] << 8 | ei.sa[5];
		o.dir = NEUV_DIR_FROM_WL;
		off = ETH_OFF_SOURCE;
	} else {
		goto out;
	}
	pair = bpf_map_lookup_elem(&neuv_ids, &id);
	if (!pair)
		goto out;
	o.id = id;
	o.has_id = 1;
	o.reason = NEUV_R_NONE;
	ifindex = o.dir == NEUV_DIR_TO_WL ? pair->vin_ifindex : pair->vex_ifindex;
	p = bpf_map_lookup_elem(&neuv_ports, &ifindex);
	if (!p) {
		drop(&o, NEUV_R_DROP_NO_PEER);
		goto out;
	}
	flags = p->flags;
	mode = p->mode;
	__builtin_memcpy(m, p->mac, 6);
	if (mode == NEUV_MODE_TAP || mode == NEUV_MODE_BYPASS) {
		drop(&o, NEUV_R_DROP_INJECT);
		goto out;
	}
	if (mode != NEUV_MODE_FWD) {
		drop(&o, NEUV_R_DROP_MODE);
		goto out;
	}
	if (bpf_skb_store_bytes(skb, off, m, 6, 0)) {
		drop(&o, NEUV_R_REWRITE_FAILED);
		goto out;
	}
	/* Towards the workload the DA is now M; towards the network, any unicast DA. */
	host = o.dir == NEUV_DIR_TO_WL ? !(m[0] & 1) : ei.unicast;
	o.action = deliver(skb, ifindex, flags, host);
	o.v1 = NEUV_V_FROM_DP;
out:
	return finish(skb, &o);
}
