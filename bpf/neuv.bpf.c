// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * neuv.bpf.c: the port-pair datapath (docs/datapath.md §3 and §5).
 *
 * Three TC programs, each on the ingress hook of one kind of port:
 *   neuv_vin  vin ingress:      frames from the workload
 *   neuv_vex  vex ingress:      frames from the host side, headed for the workload
 *   neuv_vbr  vbr-neuv ingress: frames the DP (enforcer userspace) sends back
 *
 * Every decision is one or two hash lookups plus a MAC rewrite and a
 * redirect: constant time in the number of pairs, no loops. Each map is
 * looked up at most once per frame: neuv_config at the start (vin/vex: the DP
 * port, whether flows are offloaded, whether tracing is on), the port entry,
 * then one counter map at the exit (neuv_stats, or neuv_flow_stats for a frame
 * neuv_flows decided).
 *
 * Minimum kernel: 6.1. Helpers used here: bpf_redirect, bpf_redirect_peer
 * (5.10), bpf_clone_redirect, bpf_skb_store_bytes, bpf_skb_change_type,
 * bpf_skb_load_bytes, bpf_ringbuf_* (5.8); global functions with pointer
 * arguments (5.12) and BTF-defined maps.
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
 * bpf_ktime_get_ns() is below it). When tracing is off that costs one load
 * and one branch (the config entry was looked up at the start). The record is
 * written by neuv_trace_emit(), a global function: the verifier checks it
 * once, not once per path into finish().
 *
 * Decisions beyond the docs/datapath.md tables (mirrored in src/model.ts):
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
 *   (deleted) sends it to the DP as before. TAP and BYPASS never look, nor
 *   does FWD while neuv_config.flags lacks NEUV_CFG_FLOWS (no writer of
 *   neuv_flows yet: the frame goes to the DP without the lookup).
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
 * neuv_build_tag: identifies a build (the reload tests look for it in a
 * program's .rodata). Never read: a global is kept in .rodata whether or not
 * code uses it, and every program references .rodata (neuv_set_pkt_type), so
 * the map holding it is bound to each.
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

/* Where the datapath lives (struct neuv_home): the loader's record, never read here. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct neuv_home);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_home SEC(".maps");

/* Per-frame decision records (struct neuv_trace) while tracing is on. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NEUV_TRACE_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} neuv_trace SEC(".maps");

/* Trace records that did not fit in the ring (reported in every record). */
__u32 neuv_trace_lost = 0;

/*
 * The fields of an Ethernet header the rules look at, as they arrived: 16
 * bytes written as two words. Callers zero it first (the tracer reads it
 * whole, parsed or not).
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
 * Bounds-checked parse of the Ethernet header: fills *ei (three packet loads,
 * two stores) and returns the packet's start (ETH_HLEN bytes readable), or
 * NULL when the frame is shorter than 14 bytes. Little-endian layout of
 * raw[] (x86, arm64): DA[0] is the low byte.
 */
static __always_inline void *parse_eth(const struct __sk_buff *skb, struct eth_info *ei)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u64 w0;

	if (data + ETH_HLEN > data_end)
		return NULL;
	w0 = *(__u64 *)data; /* DA, SA[0..1] */
	ei->raw[0] = w0;
	ei->raw[1] = (__u64)*(__u32 *)(data + 8) |                       /* SA[2..5] */
		     (__u64)bpf_ntohs(*(__u16 *)(data + 12)) << 32 |      /* proto */
		     (__u64)(~w0 & 1) << 48;                              /* unicast */
	return data;
}

/*
 * Whether the 6 bytes at pkt (a packet pointer, bounds checked by the caller)
 * are the MAC m (in a map value, 4-byte aligned): two loads each.
 */
static __always_inline int pkt_mac_eq(const __u8 *pkt, const __u8 *m)
{
	return *(const __u32 *)pkt == *(const __u32 *)m && *(const __u16 *)(pkt + 4) == *(const __u16 *)(m + 4);
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

	/* FAST and FLOW_DROP are counted in neuv_flow_stats (neuv_flow_count()). */
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
 * Writes one trace record: d is what the program decided, ei the header as it
 * parsed it before any rewrite (valid with NEUV_TF_PARSED; otherwise nothing
 * was rewritten and the frame is read here), cfg the neuv_config entry the
 * program looked up. Checks the deadline and the filter itself: the caller
 * only saw trace_until != 0. Returns 1 if a record was written.
 * A global function, so the verifier checks it once, on its own, instead of
 * once per path into finish() (pointer arguments: it null-checks them).
 */
__attribute__((noinline))
int neuv_trace_emit(struct __sk_buff *skb, const struct neuv_config *cfg,
		    const struct neuv_decision *d, const struct eth_info *ei)
{
	__u8 now[ETH_HLEN]; /* the Ethernet header as it is now: DA, SA, EtherType (network order) */
	struct neuv_trace *t;
	__u32 flags, dp;
	__u64 ts;
	__u8 tf;

	if (!cfg || !d || !ei)
		return 0;
	flags = cfg->flags;
	if ((flags & NEUV_CFG_TRACE_ID) && (!d->has_id || d->id != (flags & NEUV_CFG_TRACE_ID_MASK)))
		return 0;
	ts = bpf_ktime_get_ns();
	if (ts >= cfg->trace_until)
		return 0;
	t = bpf_ringbuf_reserve(&neuv_trace, sizeof(*t), 0);
	if (!t) {
		__sync_fetch_and_add(&neuv_trace_lost, 1);
		return 0;
	}
	tf = d->flags;
	/* On failure bpf_skb_load_bytes() zeroes the buffer: too short now, so never parsed nor rewritten. */
	if (bpf_skb_load_bytes(skb, 0, now, ETH_HLEN) < 0)
		tf |= NEUV_TF_SHORT;
	t->ts = ts;
	__builtin_memcpy(&t->d, d, sizeof(t->d));
	t->d.flags = tf;
	t->ifindex = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	t->len = skb->len;
	dp = cfg->dp_ifindex ? cfg->dp_ifindex : NEUV_VBR_IFINDEX;
	t->copy_ifindex = d->v1 == NEUV_V_COPY ? dp : 0; /* TAP copy: the DP port */
	t->lost = neuv_trace_lost;
	if (tf & NEUV_TF_PARSED) {
		__builtin_memcpy(t->before, ei->da, 12);
		t->proto = ei->proto;
	} else {
		/* Not parsed: the header as it is now is the one it arrived with. */
		__builtin_memcpy(t->before, now, 12);
		t->proto = (__u16)now[12] << 8 | now[13];
	}
	__builtin_memcpy(t->after, now, 12);
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
 * Counts a frame neuv_flows decided in neuv_flow_stats[id].c[dir][drop]
 * (dir 0 or 1; drop: 0 FAST, 1 FLOW_DROP), creating the entry at the pair's
 * first.
 * A global function (verified once).
 */
__attribute__((noinline))
int neuv_flow_count(__u32 id, __u32 dir, __u32 drop, __u32 len)
{
	struct neuv_flow_stats *st;
	struct neuv_ctr *c;

	st = bpf_map_lookup_elem(&neuv_flow_stats, &id);
	if (!st) {
		struct neuv_flow_stats zero = {};

		bpf_map_update_elem(&neuv_flow_stats, &id, &zero, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&neuv_flow_stats, &id);
		if (!st)
			return 0;
	}
	c = &st->c[dir & 1][drop & 1]; /* NEUV_DIR_MAX, NEUV_FLOW_VERDICTS: 2 each */
	c->packets += 1; /* per-CPU value: plain adds */
	c->bytes += len;
	return 1;
}

#define IP_MF_OFFSET 0x3fff /* IP_MF | IP_OFFSET: any fragment */
#define TCP_FLAGS_OFF 13    /* offsetof the flags byte in struct tcphdr */
#define TCP_FIN 0x01
#define TCP_RST 0x04

/* An IPv4 header the flow lookup takes: version 4, IHL >= 5, not a fragment. */
static __always_inline int ip4_flow_ok(__u8 vihl, __u16 frag_off)
{
	return (vihl >> 4) == 4 && (vihl & 0x0f) >= 5 && !(frag_off & bpf_htons(IP_MF_OFFSET));
}

/* What the flow key takes from the IPv4 and L4 headers (addresses and ports in network order). */
struct flow_hdr {
	__u32 sa, da;
	__u16 sp, dp;
	__u8 proto, tcpflags;
	__u8 pad[2];
};

/*
 * neuv_flow_check()'s slow path, for headers not all in the linear data: reads
 * them with bpf_skb_load_bytes() into the stack (the IPv4 header's 20 bytes,
 * options skipped by IHL, then the first 14 bytes of TCP or 4 of UDP) and
 * fills *h. Returns 1, or 0 (no lookup) under the same rules as the direct
 * reads (EtherType included); a copy past the frame's end fails, as a short
 * header does there. A global function: verified once, apart from the
 * caller's paths.
 */
__attribute__((noinline))
int neuv_flow_copy(struct __sk_buff *skb, struct flow_hdr *h)
{
	struct iphdr iph;
	__u8 l4[TCP_FLAGS_OFF + 1];
	__u16 proto;
	__u32 ihl;
	__u8 vihl;

	if (!h)
		return 0;
	if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0 || proto != bpf_htons(ETH_P_IP))
		return 0; /* 12: offsetof(struct ethhdr, h_proto) */
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &iph, sizeof(iph)) < 0)
		return 0;
	vihl = *(__u8 *)&iph;
	if (!ip4_flow_ok(vihl, iph.frag_off))
		return 0;
	ihl = (__u32)(vihl & 0x0f) * 4;
	__builtin_memset(h, 0, sizeof(*h));
	h->proto = iph.protocol;
	h->sa = iph.saddr;
	h->da = iph.daddr;
	if (iph.protocol == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, l4, TCP_FLAGS_OFF + 1) < 0)
			return 0;
		h->tcpflags = l4[TCP_FLAGS_OFF];
	} else if (iph.protocol == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, ETH_HLEN + ihl, l4, 4) < 0)
			return 0;
	} else {
		return 1;
	}
	h->sp = *(__u16 *)l4;
	h->dp = *(__u16 *)(l4 + 2);
	return 1;
}

/*
 * Flow offload: the neuv_flows lookup for a frame FWD would send to the DP
 * (unicast, the workload's MAC where the hook looks; IPv4 by its EtherType,
 * checked here). Parses the IPv4 header (IHL honoured) and the TCP/UDP
 * ports, builds the normalised key (neuv.h) with o->id, applies expiry and
 * TCP FIN/RST, and for a hit touches the entry. Adds NEUV_TF_FLOW* to
 * o->flags and returns the entry's verdict: NEUV_FLOW_ALLOW (send it to the
 * peer, verdict FAST), NEUV_FLOW_DENY (drop it, FLOW_DROP) or NEUV_FLOW_NONE
 * (to the DP as without offload). finish() counts FAST and FLOW_DROP.
 *
 * The headers are read in place (direct packet access) when they are all in
 * the skb's linear data, the usual case. When they are not (a frame from an
 * AF_PACKET TX ring carries only its Ethernet header linearly, the rest in
 * page fragments), neuv_flow_copy() copies the same fields out with
 * bpf_skb_load_bytes(): the same frame decides the same either way. Never
 * bpf_skb_pull_data(): a global function that changes packet data is
 * verified differently across kernels, and it would invalidate the
 * caller's packet pointers.
 *
 * No lookup (NONE, no flag) for: not IPv4 (EtherType, version 4, IHL >= 5),
 * any fragment (a non-first one has no ports; the first goes along so the
 * DP can reassemble), a frame shorter than its IPv4 header, a TCP header
 * shorter than its flags byte or a UDP header shorter than its ports. Other
 * protocols have ports 0.
 *
 * A global function: the verifier checks it once, on its own, instead of on
 * every path of the caller.
 */
__attribute__((noinline))
int neuv_flow_check(struct __sk_buff *skb, struct neuv_decision *o)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;
	struct neuv_flow_key k = {};
	struct flow_hdr h;
	struct neuv_flow *f;
	__u32 ihl, sa, da;
	__u16 sp = 0, dp = 0;
	__u8 vihl, proto, tcpflags = 0, v;
	__u64 now, deadline, idle, last;

	if (!o)
		return NEUV_FLOW_NONE;
	if ((void *)(ip + 1) > data_end)
		goto copy;
	if (((struct ethhdr *)data)->h_proto != bpf_htons(ETH_P_IP))
		return NEUV_FLOW_NONE;
	vihl = *(__u8 *)ip;
	if (!ip4_flow_ok(vihl, ip->frag_off))
		return NEUV_FLOW_NONE;
	ihl = (__u32)(vihl & 0x0f) * 4;
	proto = ip->protocol;
	if (proto == IPPROTO_TCP) {
		__u8 *l4 = (__u8 *)ip + ihl;

		if (l4 + TCP_FLAGS_OFF + 1 > (__u8 *)data_end)
			goto copy;
		sp = *(__u16 *)l4;
		dp = *(__u16 *)(l4 + 2);
		tcpflags = l4[TCP_FLAGS_OFF];
	} else if (proto == IPPROTO_UDP) {
		__u8 *l4 = (__u8 *)ip + ihl;

		if (l4 + 4 > (__u8 *)data_end)
			goto copy;
		sp = *(__u16 *)l4;
		dp = *(__u16 *)(l4 + 2);
	}
	sa = ip->saddr;
	da = ip->daddr;
	goto key;

copy:
	if (!neuv_flow_copy(skb, &h))
		return NEUV_FLOW_NONE;
	sa = h.sa;
	da = h.da;
	sp = h.sp;
	dp = h.dp;
	proto = h.proto;
	tcpflags = h.tcpflags;
key:
	k.id = o->id;
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
	o->flags |= NEUV_TF_FLOW;
	f = bpf_map_lookup_elem(&neuv_flows, &k);
	if (!f)
		return NEUV_FLOW_NONE;
	v = f->verdict;
	if (v != NEUV_FLOW_ALLOW && v != NEUV_FLOW_DENY)
		return NEUV_FLOW_NONE; /* no decision: as no entry */
	/* The coarse clock (CLOCK_MONOTONIC at the last tick, up to 1/HZ behind): expiry up to a tick late,
	 * last_ns up to a tick early, for a third of the FAST path's cost (docs/flow-offload.md). */
	now = bpf_ktime_get_coarse_ns();
	deadline = f->deadline_ns;
	idle = f->idle_ns;
	last = f->last_ns;
	if ((deadline && now >= deadline) || (idle && last && now > last && now - last >= idle)) {
		bpf_map_delete_elem(&neuv_flows, &k);
		o->flags |= NEUV_TF_FLOW_EXPIRED;
		return NEUV_FLOW_NONE;
	}
	if (v == NEUV_FLOW_ALLOW && (tcpflags & (TCP_FIN | TCP_RST))) {
		/* The flow ends: the DP sees its closing frames. */
		bpf_map_delete_elem(&neuv_flows, &k);
		o->flags |= NEUV_TF_FLOW_END;
		return NEUV_FLOW_NONE;
	}
	f->last_ns = now;
	__sync_fetch_and_add(&f->packets, 1);
	__sync_fetch_and_add(&f->bytes, skb->len);
	return v;
}

/*
 * The single exit of every program: count the outcome (one counter map: FAST
 * and FLOW_DROP in neuv_flow_stats, the rest in neuv_stats), trace it if
 * tracing is on, return its action. cfg is the program's neuv_config lookup;
 * ei is the header as parsed when o->flags has NEUV_TF_PARSED, zeros
 * otherwise.
 */
static __always_inline int finish(struct __sk_buff *skb, const struct neuv_config *cfg,
				  const struct neuv_decision *o, const struct eth_info *ei)
{
	__u32 zero = 0;
	__u32 r = o->reason;

	if (o->has_id) {
		__u32 id = o->id;

		if (o->v2 == NEUV_V_FAST || o->v1 == NEUV_V_FLOW_DROP) {
			neuv_flow_count(id, o->dir, o->v1 == NEUV_V_FLOW_DROP, skb->len);
		} else {
			struct neuv_stats *st = bpf_map_lookup_elem(&neuv_stats, &id);

			if (st) {
				count(st, o->dir, o->v1, skb->len);
				count(st, o->dir, o->v2, skb->len);
			}
		}
	}
	if (r != NEUV_R_NONE) {
		struct neuv_global *g = bpf_map_lookup_elem(&neuv_global, &zero);

		barrier_var(r); /* else clang folds both tests into one the verifier cannot bound */
		if (g && r < NEUV_R_MAX)
			g->reason[r] += 1;
	}
	if (cfg && cfg->trace_until)
		neuv_trace_emit(skb, cfg, o, ei);
	return o->action;
}

static __always_inline void drop(struct neuv_decision *o, __u8 reason)
{
	o->action = TC_ACT_SHOT;
	o->v1 = NEUV_V_DROP;
	o->v2 = NEUV_V_MAX;
	o->reason = reason;
}

static __always_inline struct neuv_config *config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&neuv_config, &zero);
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
	struct neuv_config *cfg = config();
	struct neuv_port *p;
	struct eth_info ei = {};
	__u8 uc[6], m[6];
	__u32 peer, flags;
	__u8 mode, to_peer = NEUV_V_TO_PEER;
	int host = 0, match = 0;
	void *data;

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
	if (p->role != role) {
		drop(&o, NEUV_R_DROP_ROLE);
		goto out;
	}
	if (mode != NEUV_MODE_FWD && mode != NEUV_MODE_TAP && mode != NEUV_MODE_BYPASS) {
		drop(&o, NEUV_R_DROP_MODE);
		goto out;
	}

	data = parse_eth(skb, &ei);
	if (data) {
		int l3;

		o.flags = NEUV_TF_PARSED;
		l3 = ei.proto == ETH_P_IP ||
			 (ei.proto == ETH_P_IPV6 && (flags & NEUV_F_IPV6_TO_DP));

		/* The workload's MAC M compared where the frame is (no helper has run yet). */
		if (vin) {
			match = l3 && ei.unicast && pkt_mac_eq(data + ETH_OFF_SOURCE, p->mac);
			host = ei.unicast;
		} else {
			host = ei.unicast && pkt_mac_eq(data + ETH_OFF_DEST, p->mac);
			match = l3 && host;
		}
	}
	/* else: shorter than an Ethernet header, goes to the peer unchanged. */

	if (match && mode == NEUV_MODE_FWD) {
		/*
		 * Flow offload: an entry of the DP's decides without it (IPv4 only;
		 * not looked up until something wrote neuv_flows).
		 */
		int v = NEUV_FLOW_NONE;

		if (ei.proto == ETH_P_IP && cfg && (cfg->flags & NEUV_CFG_FLOWS))
			v = neuv_flow_check(skb, &o);
		if (v == NEUV_FLOW_DENY) {
			o.action = TC_ACT_SHOT;
			o.v1 = NEUV_V_FLOW_DROP;
			goto out;
		}
		if (v == NEUV_FLOW_ALLOW) {
			to_peer = NEUV_V_FAST; /* in TO_PEER's place: the frame takes its path */
			goto send;
		}
		make_ucmac(uc, o.id);
		if (bpf_skb_store_bytes(skb, off, uc, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		o.target = dp_ifindex_of(cfg);
		o.action = bpf_redirect(o.target, 0);
		o.v1 = NEUV_V_TO_DP;
		goto out;
	}
	if (match && mode == NEUV_MODE_TAP) {
		int err;

		__builtin_memcpy(m, p->mac, 6); /* M, put back after the copy */
		make_ucmac(uc, o.id);
		if (bpf_skb_store_bytes(skb, off, uc, 6, 0)) {
			drop(&o, NEUV_R_REWRITE_FAILED);
			goto out;
		}
		/* Anything but 0 (an errno, or NET_XMIT_DROP) means the copy did not get out. */
		err = bpf_clone_redirect(skb, dp_ifindex_of(cfg), 0);
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
send:
	o.v2 = to_peer;
	o.action = deliver(skb, peer, flags, host);
	o.target = peer;
	if (flags & NEUV_F_REDIRECT_PEER)
		o.flags |= NEUV_TF_PEER;
out:
	return finish(skb, cfg, &o, &ei);
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

	if (!parse_eth(skb, &ei))
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
	return finish(skb, config(), &o, &ei);
}
