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
 * bpf_skb_change_type, bpf_skb_load_bytes, bpf_ringbuf_* (5.8)), global
 * functions (5.6) and BTF-defined maps are older than that.
 *
 * Each program has one exit: it fills a struct neuv_decision (action, counters,
 * reason), finish() counts it and returns the action. Programs only ever
 * return TC_ACT_UNSPEC, TC_ACT_SHOT or TC_ACT_REDIRECT (the value of
 * bpf_redirect*, which is TC_ACT_REDIRECT for flags 0).
 *
 * A frame we do not handle (no port entry, no pair for a vbr-neuv frame) is
 * passed on with TC_ACT_UNSPEC, not TC_ACT_OK: the filters and programs after
 * ours on that hook still see it (for tcx, legacy tc filters run only after
 * TC_ACT_UNSPEC), and with nothing after ours it goes to the stack as
 * without any rule. That keeps NeuVector's rules working for the pairs we
 * have not taken over yet while migrating (adopt, handback).
 *
 * Tracing: finish() also emits one struct neuv_trace per frame into the
 * neuv_trace ring buffer while neuv_config.trace_until is non-zero (and
 * bpf_ktime_get_ns() is below it). When tracing is off that costs the config
 * lookup (an inlined array access), one load and one branch. The record is
 * written by neuv_trace_emit(), a global function: the verifier checks it
 * once, not once per path into finish(), and the outcome and the header as
 * parsed reach it as four scalars.
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
 * - Flow offload (FWD only): a frame FWD would send to the DP that is IPv4
 *   (EtherType and header) first asks neuv_flow_check() whether the DP left
 *   a decision for its flow in neuv_flows: ALLOW sends it to the peer
 *   unchanged like BYPASS (verdict FAST), DENY drops it (FLOW_DROP); no
 *   entry, an expired one (deleted), or a TCP FIN/RST on an ALLOW entry
 *   (deleted) sends it to the DP as before. TAP and BYPASS never look.
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
#include <linux/in.h>
#include <linux/ip.h>
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

/* Node-wide settings written by the loader (dp_ifindex) and the tracer. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct neuv_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_config SEC(".maps");

/*
 * Flow offload entries (struct neuv_flow), written by the DP, read (and
 * expired, retired, counted) by the vin/vex programs for pairs in FWD. LRU:
 * when full, the least recently used entry makes room (its frames go to the
 * DP again). max_entries is set by the loader (`load --flows N`); a pinned
 * map is only reused with the same size.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NEUV_FLOWS_DEFAULT);
	__type(key, struct neuv_flow_key);
	__type(value, struct neuv_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_flows SEC(".maps");

/* Key: port id. Frames neuv_flows decided (FAST, FLOW_DROP); entries created on first use. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NEUV_MAX_IDS);
	__type(key, __u32);
	__type(value, struct neuv_flow_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_flow_stats SEC(".maps");

/* Per-frame decision records (struct neuv_trace) while tracing is on. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NEUV_TRACE_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_trace SEC(".maps");

/* Trace records that did not fit in the ring (reported in every record). */
__u32 neuv_trace_lost = 0;

/*
 * The fields of an Ethernet header the rules look at. 16 bytes: as they
 * arrived, they reach neuv_trace_emit() as raw[0..1]. Callers zero it first
 * (the tracer reads it whole, parsed or not).
 */
struct eth_info {
	union {
		struct {
			__u8 da[6];
			__u8 sa[6];
			__u16 proto;  /* EtherType, host order (a VLAN tag is just 0x8100) */
			__u8 unicast; /* DA[0] bit 0 clear */
			__u8 pad;
		};
		__u64 raw[2];
	};
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
	ei->pad = 0; /* all 16 bytes defined: the tracer reads them as two words */
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

	/* FAST and FLOW_DROP are counted in neuv_flow_stats by neuv_flow_check(). */
	if (dir >= NEUV_DIR_MAX || v >= NEUV_STATS_VERDICTS)
		return;
	c = &st->c[dir][v];
	c->packets += 1; /* per-CPU value: plain adds */
	c->bytes += len;
}

static __always_inline __u32 dp_ifindex_of(const struct neuv_config *cfg)
{
	__u32 ifindex = cfg ? cfg->dp_ifindex : 0;

	return ifindex ? ifindex : NEUV_VBR_IFINDEX;
}

/*
 * Writes one trace record. d_raw: the struct neuv_decision; eth_raw: struct
 * eth_info as the program parsed it before any rewrite (valid with
 * NEUV_TF_PARSED; otherwise nothing was rewritten and the frame is read
 * here). Checks the deadline and the filter itself: the caller only saw
 * trace_until != 0. Returns 1 if a record was written.
 * A global function, so the verifier checks it once, on its own, instead of
 * once per path into finish(); everything reaches it as scalars (pointers to
 * the stack need kernel 5.12+ for a global function).
 */
__attribute__((noinline))
int neuv_trace_emit(struct __sk_buff *skb, __u64 d_raw0, __u64 d_raw1, __u64 eth_raw0, __u64 eth_raw1)
{
	union {
		struct neuv_decision d;
		__u64 raw[2];
	} u = { .raw = { d_raw0, d_raw1 } };
	/* The Ethernet header as it is now: DA, SA, EtherType in network order. */
	union {
		__u8 b[16];
		__u64 raw[2];
	} now = {};
	struct eth_info before = { .raw = { eth_raw0, eth_raw1 } };
	struct neuv_config *cfg;
	struct neuv_trace *t;
	__u32 zero = 0, flags;
	__u64 ts, m, ifindex, dp;
	long err;

	cfg = bpf_map_lookup_elem(&neuv_config, &zero);
	if (!cfg)
		return 0;
	flags = cfg->flags;
	if ((flags & NEUV_CFG_TRACE_ID) &&
	    (!u.d.has_id || u.d.id != (flags & NEUV_CFG_TRACE_ID_MASK)))
		return 0;
	ts = bpf_ktime_get_ns();
	if (ts >= cfg->trace_until)
		return 0;
	t = bpf_ringbuf_reserve(&neuv_trace, sizeof(*t), 0);
	if (!t) {
		__sync_fetch_and_add(&neuv_trace_lost, 1);
		return 0;
	}
	/*
	 * The rest is branch-free (masks instead of ifs): on older verifiers
	 * every combination of branches here was a path of its own.
	 * On failure bpf_skb_load_bytes() zeroes the buffer: too short now, so
	 * the frame was never parsed nor rewritten.
	 */
	err = bpf_skb_load_bytes(skb, 0, now.b, ETH_HLEN);
	barrier_var(err);
	u.d.flags |= (__u8)(((__u64)err >> 63) << 2); /* NEUV_TF_SHORT when err < 0 */
	/* Not parsed: the header as it is now is the one it arrived with. */
	m = ((u.d.flags >> 1) & 1) - 1; /* NEUV_TF_PARSED: 0, else all ones */
	barrier_var(m);
	before.raw[0] = (before.raw[0] & ~m) | (now.raw[0] & m);
	before.raw[1] = (before.raw[1] & ~m) | (now.raw[1] & m);
	before.proto = (before.proto & ~m) | (((__u16)now.b[12] << 8 | now.b[13]) & m);
	t->ts = ts;
	t->d = u.d;
	ifindex = skb->ingress_ifindex;
	barrier_var(ifindex);
	t->ifindex = ifindex | (skb->ifindex & -(((__u64)ifindex - 1) >> 63)); /* ingress_ifindex, or ifindex when 0 */
	t->len = skb->len;
	dp = cfg->dp_ifindex;
	barrier_var(dp);
	dp |= NEUV_VBR_IFINDEX & -(((__u64)dp - 1) >> 63); /* dp_ifindex_of() */
	m = (__u64)(u.d.v1 ^ NEUV_V_COPY);
	barrier_var(m);
	t->copy_ifindex = dp & -((m - 1) >> 63); /* TAP copy: the DP port */
	t->lost = neuv_trace_lost;
	__builtin_memcpy(t->before, before.raw, 12);
	__builtin_memcpy(t->after, now.b, 12);
	t->proto = before.proto;
	__builtin_memset(t->pad, 0, sizeof(t->pad));
	bpf_ringbuf_submit(t, 0);
	return 1;
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
 * Counts a frame neuv_flows decided in neuv_flow_stats[id], creating the
 * entry at the pair's first: slot = dir * NEUV_FLOW_VERDICTS + (FAST 0,
 * FLOW_DROP 1). A global function (verified once, scalars only).
 */
__attribute__((noinline))
int neuv_flow_count(__u32 id, __u64 slot, __u32 len)
{
	struct neuv_flow_stats *st;
	struct neuv_ctr *c;

	if (slot >= NEUV_DIR_MAX * NEUV_FLOW_VERDICTS)
		return 0;
	st = bpf_map_lookup_elem(&neuv_flow_stats, &id);
	if (!st) {
		struct neuv_flow_stats zero = {};

		bpf_map_update_elem(&neuv_flow_stats, &id, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&neuv_flow_stats, &id);
		if (!st)
			return 0;
	}
	c = &st->c[0][0] + slot;
	c->packets += 1; /* per-CPU value: plain adds */
	c->bytes += len;
	return 1;
}

#define IP_MF_OFFSET 0x3fff /* IP_MF | IP_OFFSET: any fragment */
#define TCP_FLAGS_OFF 13    /* offsetof the flags byte in struct tcphdr */
#define TCP_FIN 0x01
#define TCP_RST 0x04

/*
 * Flow offload: the neuv_flows lookup for a frame FWD would send to the DP
 * (unicast, the workload's MAC where the hook looks; IPv4 by its EtherType,
 * checked here). Parses the IPv4 header (IHL honoured) and the TCP/UDP
 * ports, builds the normalised key (neuv.h), applies expiry and TCP
 * FIN/RST; for a hit it touches the entry and counts the frame in
 * neuv_flow_stats[id].c[dir], and sends an ALLOW entry's frame to the peer
 * (deliver(), as the TO_PEER path would).
 *
 * id_dir: pair id | dir << 16; peer: the pair's other port; pflags: that
 * port entry's flags | host << 31 (deliver()'s arguments). Returns the
 * entry's verdict in bits 0-7 (NEUV_FLOW_ALLOW: the frame is redirected
 * already; NEUV_FLOW_DENY: drop it; NEUV_FLOW_NONE: to the DP as without
 * offload) and NEUV_TF_* trace flags in bits 8-15. No lookup (NONE, no flag)
 * for: not IPv4 (EtherType, version 4, IHL >= 5) or not in the linear data,
 * any fragment (a non-first one has no ports; the first goes along so the
 * DP can reassemble), a TCP header shorter than its flags byte or a UDP
 * header shorter than its ports. Other protocols have ports 0.
 *
 * A global function: the verifier checks it once, on its own, instead of on
 * every path of the caller, and the caller has one path per verdict (the
 * redirect's own branches are in here).
 */
__attribute__((noinline))
int neuv_flow_check(struct __sk_buff *skb, __u32 id_dir, __u32 peer, __u32 pflags)
{
	__u32 id = id_dir & 0xffff, dir = (id_dir >> 16) & 1;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct neuv_flow_key k = {};
	struct neuv_flow *f;
	__u32 ihl, sa, da, key = id & 0xffff;
	__u16 sp = 0, dp = 0;
	__u8 vihl, proto, tcpflags = 0, v;
	__u64 now, deadline, idle, last;

	if ((void *)(ip + 1) > data_end)
		return NEUV_FLOW_NONE;
	if (((struct ethhdr *)data)->h_proto != bpf_htons(ETH_P_IP))
		return NEUV_FLOW_NONE;
	vihl = *(__u8 *)ip;
	ihl = (__u32)(vihl & 0x0f) * 4;
	if ((vihl >> 4) != 4 || ihl < sizeof(*ip))
		return NEUV_FLOW_NONE;
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return NEUV_FLOW_NONE;
	proto = ip->protocol;
	/* Two separate branches: fewer paths for the verifier than shared port loads. */
	if (proto == IPPROTO_TCP) {
		__u8 *l4 = (__u8 *)ip + ihl;

		if (l4 + TCP_FLAGS_OFF + 1 > (__u8 *)data_end)
			return NEUV_FLOW_NONE;
		sp = *(__u16 *)l4;
		dp = *(__u16 *)(l4 + 2);
		tcpflags = l4[TCP_FLAGS_OFF];
	} else if (proto == IPPROTO_UDP) {
		__u8 *l4 = (__u8 *)ip + ihl;

		if (l4 + 4 > (__u8 *)data_end)
			return NEUV_FLOW_NONE;
		sp = *(__u16 *)l4;
		dp = *(__u16 *)(l4 + 2);
	}
	sa = ip->saddr;
	da = ip->daddr;
	k.id = key;
	k.proto = proto;
	/* Endpoint A: the lower (address, port), both as big-endian numbers. */
	if (bpf_ntohl(sa) < bpf_ntohl(da) || (sa == da && bpf_ntohs(sp) <= bpf_ntohs(dp))) {
		k.addr_a = sa;
		k.port_a = sp;
		k.addr_b = da;
		k.port_b = dp;
	} else {
		k.addr_a = da;
		k.port_a = dp;
		k.addr_b = sa;
		k.port_b = sp;
	}
	f = bpf_map_lookup_elem(&neuv_flows, &k);
	if (!f)
		return NEUV_TF_FLOW << 8;
	v = f->verdict;
	if (v != NEUV_FLOW_ALLOW && v != NEUV_FLOW_DENY)
		return NEUV_TF_FLOW << 8; /* no decision: as no entry */
	now = bpf_ktime_get_ns();
	deadline = f->deadline_ns;
	idle = f->idle_ns;
	last = f->last_ns;
	if ((deadline && now >= deadline) || (idle && last && now > last && now - last >= idle)) {
		bpf_map_delete_elem(&neuv_flows, &k);
		return (NEUV_TF_FLOW | NEUV_TF_FLOW_EXPIRED) << 8;
	}
	if (v == NEUV_FLOW_ALLOW && (tcpflags & (TCP_FIN | TCP_RST))) {
		/* The flow ends: the DP sees its closing frames. */
		bpf_map_delete_elem(&neuv_flows, &k);
		return (NEUV_TF_FLOW | NEUV_TF_FLOW_END) << 8;
	}
	f->last_ns = now;
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, skb->len);

	neuv_flow_count(key, (dir ? NEUV_FLOW_VERDICTS : 0) + (v == NEUV_FLOW_ALLOW ? 0 : 1), skb->len);
	if (v == NEUV_FLOW_ALLOW) {
		/* bpf_redirect*() with flags 0 returns TC_ACT_REDIRECT: the caller returns that. */
		deliver(skb, peer, pflags, pflags >> 31);
		/* NEUV_TF_PEER when it was bpf_redirect_peer (NEUV_F_REDIRECT_PEER is bit 1, NEUV_TF_PEER bit 0). */
		return v | (NEUV_TF_FLOW | ((pflags >> 1) & NEUV_TF_PEER)) << 8;
	}
	return v | NEUV_TF_FLOW << 8;
}

/*
 * The single exit of every program: count the outcome, trace it if tracing
 * is on, return its action. ei is the header as parsed when o->flags has
 * NEUV_TF_PARSED, zeros otherwise.
 */
static __always_inline int finish(struct __sk_buff *skb, const struct neuv_decision *o, const struct eth_info *ei)
{
	__u32 zero = 0;
	__u32 r = o->reason;
	struct neuv_config *cfg;
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
	cfg = bpf_map_lookup_elem(&neuv_config, &zero);
	if (cfg && cfg->trace_until) {
		/* volatile: o and ei stay on the stack, read as two words each,
		 * rather than being kept packed in registers on every path. */
		const volatile __u64 *oraw = (const volatile __u64 *)o;
		const volatile __u64 *eraw = (const volatile __u64 *)ei->raw;

		neuv_trace_emit(skb, oraw[0], oraw[1], eraw[0], eraw[1]);
	}
	return o->action;
}

static __always_inline void drop(struct neuv_decision *o, __u8 reason)
{
	o->action = TC_ACT_SHOT;
	o->v1 = NEUV_V_DROP;
	o->v2 = NEUV_V_MAX;
	o->reason = reason;
}

static __always_inline __u32 dp_ifindex(void)
{
	__u32 zero = 0;

	return dp_ifindex_of(bpf_map_lookup_elem(&neuv_config, &zero));
}

/*
 * vin and vex ingress. role is the role the hook serves: NEUV_ROLE_VIN (frames
 * from the workload, direction FROM_WL, the match is on SA) or NEUV_ROLE_VEX
 * (frames for the workload, direction TO_WL, the match is on DA).
 */
static __always_inline int port_ingress(struct __sk_buff *skb, const __u8 role)
{
	const int vin = role == NEUV_ROLE_VIN;
	struct neuv_decision o = {
		.action = TC_ACT_UNSPEC, /* pass on: the next filter or program, else the stack */
		.dir = vin ? NEUV_DIR_FROM_WL : NEUV_DIR_TO_WL,
		.v1 = NEUV_V_MAX,
		.v2 = NEUV_V_MAX,
		.reason = NEUV_R_NONE,
		.hook = role, /* NEUV_HOOK_VIN/VEX == NEUV_ROLE_VIN/VEX */
	};
	const __u32 off = vin ? ETH_OFF_SOURCE : ETH_OFF_DEST;
	__u32 ifindex = skb->ingress_ifindex;
	struct neuv_port *p;
	struct eth_info ei = {};
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
	o.mode = mode;
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
		int l3;

		o.flags = NEUV_TF_PARSED;
		l3 = ei.proto == ETH_P_IP ||
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
		/* Flow offload: an entry of the DP's decides without it (IPv4 only, checked there). */
		int fr = neuv_flow_check(skb, o.id | (__u32)o.dir << 16, peer, flags | (__u32)host << 31);

		o.flags |= (fr >> 8) & 0xff;
		if ((fr & 0xff) == NEUV_FLOW_ALLOW) { /* sent to the peer already */
			o.action = TC_ACT_REDIRECT;
			o.target = peer;
			o.v2 = NEUV_V_FAST; /* in TO_PEER's place: the frame took its path */
			goto out;
		}
		if ((fr & 0xff) == NEUV_FLOW_DENY) {
			o.action = TC_ACT_SHOT;
			o.v1 = NEUV_V_FLOW_DROP;
			goto out;
		}
		make_ucmac(uc, o.id);
		if (bpf_skb_store_bytes(skb, off, uc, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		o.target = dp_ifindex();
		o.action = bpf_redirect(o.target, 0);
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
	o.v2 = NEUV_V_TO_PEER;
	o.action = deliver(skb, peer, flags, host);
	o.target = peer;
	if (flags & NEUV_F_REDIRECT_PEER)
		o.flags |= NEUV_TF_PEER;
out:
	return finish(skb, &o, &ei);
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
	struct neuv_decision o = {
		.action = TC_ACT_UNSPEC, /* pass on: the next filter or program, else the stack */
		.v1 = NEUV_V_MAX,
		.v2 = NEUV_V_MAX,
		.reason = NEUV_R_PASS_NO_PAIR,
		.hook = NEUV_HOOK_VBR,
	};
	struct neuv_port *p;
	struct neuv_id *pair;
	struct eth_info ei = {};
	__u32 id, off, ifindex, flags;
	__u8 m[6], mode;
	int host;

	if (parse_eth(skb, &ei))
		goto out;
	o.flags = NEUV_TF_PARSED;
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
	/*
	 * The target is the port itself, not its pair-mate: whether it takes
	 * bpf_redirect_peer is NEUV_F_SELF_PEER (NEUV_F_REDIRECT_PEER speaks of
	 * peer_ifindex).
	 */
	flags = p->flags & NEUV_F_SELF_PEER ? NEUV_F_REDIRECT_PEER : 0;
	mode = p->mode;
	o.mode = mode;
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
	o.target = ifindex;
	if (flags & NEUV_F_REDIRECT_PEER)
		o.flags |= NEUV_TF_PEER;
	o.v1 = NEUV_V_FROM_DP;
out:
	return finish(skb, &o, &ei);
}
