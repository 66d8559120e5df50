/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * neuv.h: every layout that crosses the kernel/user boundary.
 *
 * Shared by the BPF programs (bpf/neuv.bpf.c) and by the loader: make build
 * generates src/layout/generated.ts (every struct and enum named neuv_*: sizes,
 * offsets, values) from this object's BTF, and src/layout/codecs.ts reads and
 * writes the members by name. The loader checks the generated layouts against
 * the BTF of the object it loads, so an object built from another version of
 * this header fails loudly instead of corrupting a map. Keep fields naturally
 * aligned and padding explicit; types private to the BPF side are not named neuv_*.
 */
#ifndef NEUV_H
#define NEUV_H

#include <linux/types.h>
#include <linux/bpf.h> /* struct bpf_spin_lock */

/*
 * Constants shared with the loader (src/layout/generated.ts). An enum rather than
 * #defines, so they are in the object's BTF: generated from it and checked at load.
 */
enum neuv_const {
	/* "NeuV": the first four bytes of every pair's unicast MAC (UCMAC). */
	NEUV_UCMAC_B0 = 0x4e,
	NEUV_UCMAC_B1 = 0x65,
	NEUV_UCMAC_B2 = 0x75,
	NEUV_UCMAC_B3 = 0x56,
	/* The DP-facing veth pair inside the enforcer netns (docs/datapath.md §1). */
	NEUV_VBR_IFINDEX = 10000000,
	NEUV_VTH_IFINDEX = 10000001,
	/*
	 * Verdicts counted in struct neuv_stats: TO_DP..DROP. Fixed at 5 so the
	 * value size of a pinned neuv_stats never changes (a newer object reuses the
	 * map of an older load; libbpf refuses a pinned map whose value size
	 * differs). Verdicts added later are counted in maps of their own.
	 */
	NEUV_STATS_VERDICTS = 5,
	NEUV_FLOW_VERDICTS = 2,       /* verdicts counted in struct neuv_flow_stats: FAST, FLOW_DROP */
	NEUV_FLOWS_DEFAULT = 65536,   /* max_entries of neuv_flows unless the loader sets another */
	NEUV_TRACE_RING_SIZE = 256 * 1024,
	NEUV_MAX_PORTS = 131072,
	NEUV_MAX_IDS = 65536,
};

/* Forwarding mode of a pair: one value per port entry (docs/datapath.md §3, §5). */
enum neuv_mode {
	NEUV_MODE_NONE   = 0, /* never written by the loader; treated as DROP */
	NEUV_MODE_FWD    = 1, /* protect: IPv4 unicast of the workload through the DP */
	NEUV_MODE_TAP    = 2, /* monitor: traffic untouched, the DP gets a copy */
	NEUV_MODE_BYPASS = 3, /* fail-open: vex <-> vin directly, DP skipped */
	NEUV_MODE_DROP   = 4, /* fail-closed: everything of the pair dropped */
	NEUV_MODE_MAX,
};

/* Which side of a pair a port entry describes. */
enum neuv_role {
	NEUV_ROLE_VIN = 1, /* peer is the workload's new eth0 (container netns) */
	NEUV_ROLE_VEX = 2, /* the workload's original port (peer in the host netns) */
};

/*
 * Port entry flags (struct neuv_port.flags). An enum, so the values are in the
 * object's BTF and the loader's layout check covers them.
 */
enum neuv_port_flag {
	NEUV_F_IPV6_TO_DP    = 1U << 0, /* IPv6 unicast of the workload goes through the DP too */
	NEUV_F_REDIRECT_PEER = 1U << 1, /* deliver to the other port (peer_ifindex) with bpf_redirect_peer */
	NEUV_F_QDISC_OURS    = 1U << 2, /* loader only: it created this port's clsact, so it removes it */
	NEUV_F_SELF_PEER     = 1U << 3, /* this port's own veth peer is in another netns: frames the
	                                 * DP returns for it (vbr-neuv) go with bpf_redirect_peer */
	NEUV_F_WATCH_BYPASS  = 1U << 4, /* userspace only: a fail-open watcher put this port in BYPASS
	                                 * (written with the mode, so the switch is its own record) */
};

/*
 * Map neuv_ports: key __u32 ingress ifindex (a vin or vex), value struct neuv_port.
 * One entry per port; a pair is two entries pointing at each other.
 *
 * The lock is never taken by the programs: it is there so that userspace
 * writes an existing entry in place (bpf_map_update_elem with BPF_F_LOCK).
 * A plain update of a hash map swaps in another element and hands the old
 * one to the next update on that CPU at once; a program still reading the
 * old one (the vex entry of a mode switch) could then read the next key's
 * value (the vin entry written right after it) and drop or misdirect that
 * frame. In place, a reader sees each field old or new.
 */
struct neuv_port {
	__u32 peer_ifindex; /* the pair's other port (vex for a vin, vin for a vex) */
	__u32 flags;        /* NEUV_F_* */
	__u16 id;           /* 16-bit port id carried in the UCMAC */
	__u8  role;         /* enum neuv_role */
	__u8  mode;         /* enum neuv_mode */
	__u8  mac[6];       /* the workload MAC M */
	__u8  pad[2];
	struct bpf_spin_lock lock; /* for BPF_F_LOCK updates from userspace only */
};

/*
 * Map neuv_ids: key __u32 port id (0..65535), value struct neuv_id.
 * How the vbr-neuv program finds a pair from the UCMAC in a frame.
 */
struct neuv_id {
	__u32 vin_ifindex;
	__u32 vex_ifindex;
};

/* Traffic direction of a counter. */
enum neuv_dir {
	NEUV_DIR_TO_WL   = 0, /* towards the workload: vex ingress, vbr-neuv DA == UCMAC */
	NEUV_DIR_FROM_WL = 1, /* from the workload: vin ingress, vbr-neuv SA == UCMAC */
	NEUV_DIR_MAX,
};

/*
 * What happened to a frame. TO_DP..DROP are indexes of struct
 * neuv_stats.c[dir][]; FAST and FLOW_DROP (flow offload, FWD only) are
 * counted in struct neuv_flow_stats.c[dir][v - NEUV_V_FAST]. NEUV_V_MAX is
 * "no verdict" in a struct neuv_decision.
 */
enum neuv_verdict {
	NEUV_V_TO_DP   = 0, /* rewritten and sent to vbr-neuv (FWD) */
	NEUV_V_TO_PEER = 1, /* sent to the pair's other port unchanged */
	NEUV_V_COPY    = 2, /* TAP: a rewritten copy sent to vbr-neuv */
	NEUV_V_FROM_DP = 3, /* from vbr-neuv, rewritten back, sent to vin or vex */
	NEUV_V_DROP    = 4, /* dropped (see the drop reasons in neuv_global) */
	NEUV_V_FAST    = 5, /* FWD: an ALLOW entry of neuv_flows sent it to the peer unchanged (DP skipped) */
	NEUV_V_FLOW_DROP = 6, /* FWD: a DENY entry of neuv_flows dropped it (DP skipped) */
	NEUV_V_MAX,
};

struct neuv_ctr {
	__u64 packets;
	__u64 bytes;
};

/* Map neuv_stats (per-CPU hash): key __u32 port id, value struct neuv_stats. */
struct neuv_stats {
	struct neuv_ctr c[NEUV_DIR_MAX][NEUV_STATS_VERDICTS];
};

/*
 * Flow offload (docs/flow-offload.md). Map neuv_flows (LRU hash, pinned,
 * max_entries set at load: `neuv-bpf load --flows N`): written by the DP,
 * read by the vin/vex programs for pairs in FWD, for IPv4 unicast frames of
 * the workload (the frames FWD would send to the DP).
 *
 * The key is the same for both directions of a flow: endpoint A is the one
 * with the lower (address, port), both compared as big-endian numbers
 * (memcmp order of the network-order bytes), address first; B is the other.
 * Addresses and ports are in network byte order, as in the IP/TCP/UDP
 * headers. Ports are 0 for protocols other than TCP and UDP.
 */
struct neuv_flow_key {
	__u16  id;     /* pair id (host order), as in the UCMAC */
	__u8   proto;  /* IP protocol: 6 TCP, 17 UDP, anything else with ports 0 */
	__u8   pad;    /* 0 */
	__be32 addr_a; /* IPv4 address of endpoint A, network order */
	__be32 addr_b; /* IPv4 address of endpoint B, network order */
	__be16 port_a; /* TCP/UDP port of endpoint A, network order; 0 for other protocols */
	__be16 port_b; /* TCP/UDP port of endpoint B, network order */
};

/* struct neuv_flow.verdict */
enum neuv_flow_verdict {
	NEUV_FLOW_NONE  = 0, /* no decision: treated as no entry (the frame goes to the DP) */
	NEUV_FLOW_ALLOW = 1, /* fast path: forward to the pair's other port unchanged (as BYPASS) */
	NEUV_FLOW_DENY  = 2, /* drop in the kernel */
};

/*
 * Value of neuv_flows. Times are CLOCK_MONOTONIC nanoseconds
 * (clock_gettime(CLOCK_MONOTONIC) in userspace). The datapath reads the
 * coarse clock, bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC at the last tick,
 * up to 1/HZ behind, 4 ms at HZ=250): an entry expires up to a tick late.
 * With now = bpf_ktime_get_coarse_ns() when a frame finds the entry, it is expired if
 *   (deadline_ns != 0 && now >= deadline_ns) ||
 *   (idle_ns != 0 && last_ns != 0 && now > last_ns && now - last_ns >= idle_ns).
 * An expired entry is deleted by the datapath and the frame goes to the DP.
 * Otherwise the datapath sets last_ns = now and adds the frame to
 * packets/bytes (idle_ns counts from the last frame, or from the first
 * frame when the writer left last_ns 0). A TCP frame with FIN or RST on an
 * ALLOW entry deletes it and goes to the DP (which sees the flow end); DENY
 * entries drop those too.
 */
struct neuv_flow {
	__u8  verdict;     /* enum neuv_flow_verdict */
	__u8  pad[7];      /* 0 */
	__u64 deadline_ns; /* absolute deadline, 0 = none */
	__u64 idle_ns;     /* idle timeout, 0 = none */
	__u64 last_ns;     /* last frame (the datapath writes it), 0 = none yet */
	__u64 packets;     /* frames this entry forwarded or dropped (the datapath adds) */
	__u64 bytes;       /* their bytes (skb->len) */
};

/*
 * Map neuv_flow_stats (per-CPU hash): key __u32 port id, value
 * c[dir][verdict - NEUV_V_FAST] for FAST and FLOW_DROP. The datapath creates
 * an entry at a pair's first offloaded frame; pair del removes it.
 */
struct neuv_flow_stats {
	struct neuv_ctr c[NEUV_DIR_MAX][NEUV_FLOW_VERDICTS];
};

/*
 * Drop and pass reasons. Indexes of struct neuv_global.reason[]; internal to
 * the datapath and never returned to the kernel, so they cannot collide with
 * TC_ACT_* values (the programs only ever return TC_ACT_*).
 */
enum neuv_reason {
	NEUV_R_NONE          = 0,
	NEUV_R_PASS_NO_PAIR  = 1, /* vbr-neuv frame matching no pair: to the stack */
	NEUV_R_PASS_NO_PORT  = 2, /* vin/vex frame on a port with no entry: to the stack */
	NEUV_R_DROP_MODE     = 3, /* pair in DROP (or unknown) mode */
	NEUV_R_DROP_INJECT   = 4, /* DP injected a frame for a pair in TAP/BYPASS */
	NEUV_R_DROP_ROLE     = 5, /* entry's role does not match the hook */
	NEUV_R_DROP_NO_PEER  = 6, /* vbr-neuv frame for an id whose port entry is gone */
	NEUV_R_CLONE_FAILED  = 7, /* TAP copy could not be cloned (original still forwarded) */
	NEUV_R_REWRITE_FAILED = 8, /* MAC rewrite failed: dropped */
	NEUV_R_MAX,
};

/* Map neuv_global (per-CPU array, one entry): node-wide counters. */
struct neuv_global {
	__u64 reason[NEUV_R_MAX];
};

/*
 * neuv_config.flags. The low 16 bits are an argument of the flag that uses
 * them (only NEUV_CFG_TRACE_ID today).
 */
enum neuv_config_flag {
	NEUV_CFG_TRACE_ID_MASK = 0xffffU,   /* the pair id NEUV_CFG_TRACE_ID filters on */
	NEUV_CFG_TRACE_ID      = 1U << 16, /* trace only frames of the pair whose id is flags & 0xffff */
	/*
	 * neuv_flows may hold entries: the vin/vex programs look a FWD frame's
	 * flow up only when this is set. Whoever writes neuv_flows sets it
	 * first (the flow API, `neuv-bpf flow`, a DP in C: docs/flow-offload.md;
	 * `load` when the pinned map it reuses has entries). It stays set:
	 * clearing it would race with a writer.
	 */
	NEUV_CFG_FLOWS         = 1U << 17,
};

/*
 * Map neuv_config (array, one entry): node-wide settings written by the loader
 * (dp_ifindex) and by `neuv-bpf trace` (flags, trace_until). Its size must not
 * change: a newer object reuses the pinned map of an older load. Userspace
 * writes it whole, so every writer holds the config lock from its read to its
 * write (src/config.ts, docs/flow-offload.md).
 */
struct neuv_config {
	__u32 dp_ifindex;  /* vbr-neuv ifindex, the DP's port */
	__u32 flags;       /* NEUV_CFG_*, 0 = no trace filter */
	__u64 trace_until; /* tracing on while bpf_ktime_get_ns() < trace_until; 0 = off (a lease the tracer renews) */
};

/*
 * Map neuv_home (array, one entry): where this pin root's datapath lives,
 * written by the loader only, never read by the programs. Every command
 * checks it before it touches an interface and refuses in any other netns
 * (src/home.ts, docs/datapath.md). All zeros: nothing recorded yet (a pin
 * root loaded by a version before this map: the next load records it).
 */
struct neuv_home {
	__u64 netns_cookie; /* SO_NETNS_COOKIE of the enforcer netns, 0 = unknown (kernel < 5.14) */
	__u64 netns_ino;    /* inode of its nsfs file (/proc/self/ns/net there) */
	__u64 netns_dev;    /* device of its nsfs file */
	__u32 vbr_ifindex;  /* vbr-neuv's ifindex there at load */
	__u32 pad;
};

/* Which program made a decision (the hook it sits on). VIN/VEX equal enum neuv_role. */
enum neuv_hook {
	NEUV_HOOK_VIN = 1, /* vin ingress: frames from the workload */
	NEUV_HOOK_VEX = 2, /* vex ingress: frames for the workload */
	NEUV_HOOK_VBR = 3, /* vbr-neuv ingress: frames the DP sends back */
};

/* struct neuv_decision.flags */
enum neuv_trace_flag {
	NEUV_TF_PEER         = 1U << 0, /* the redirect used bpf_redirect_peer (else bpf_redirect) */
	NEUV_TF_PARSED       = 1U << 1, /* the program parsed the header before any rewrite */
	NEUV_TF_SHORT        = 1U << 2, /* shorter than an Ethernet header: no MACs, no EtherType */
	NEUV_TF_FLOW         = 1U << 3, /* FWD: a flow key was built and neuv_flows looked up */
	NEUV_TF_FLOW_EXPIRED = 1U << 4, /* ... the entry found had expired: deleted, frame to the DP */
	NEUV_TF_FLOW_END     = 1U << 5, /* ... TCP FIN/RST ended an ALLOW entry: deleted, frame to the DP */
};

/*
 * What a program decided about one frame. The datapath fills one per frame
 * (its "outcome": counted, then its action returned) and the trace record
 * carries it verbatim. 16 bytes, so it reaches the tracer as two words.
 */
struct neuv_decision {
	__u32 target;  /* ifindex the frame was redirected to, 0 = not redirected */
	__u16 id;      /* pair id, valid if has_id */
	__u8  has_id;  /* 1: a pair matched (else no port entry, or no pair for a vbr-neuv frame) */
	__u8  dir;     /* enum neuv_dir */
	__u8  v1;      /* enum neuv_verdict, NEUV_V_MAX = none */
	__u8  v2;      /* second verdict (TAP: COPY then TO_PEER; FAST in TO_PEER's place), NEUV_V_MAX = none */
	__u8  reason;  /* enum neuv_reason, NEUV_R_NONE = none */
	__u8  mode;    /* enum neuv_mode of the pair's entry as read, 0 = none */
	__u8  hook;    /* enum neuv_hook */
	__u8  flags;   /* NEUV_TF_* */
	__s16 action;  /* returned to tc: TC_ACT_UNSPEC -1 (pass on), TC_ACT_SHOT 2, TC_ACT_REDIRECT 7 */
};

/*
 * Map neuv_trace (ring buffer): one record per frame while tracing is on,
 * written at the programs' single exit. A record that does not fit (the
 * reader fell behind) is lost and counted; every record carries the count.
 */
struct neuv_trace {
	__u64 ts;                 /* bpf_ktime_get_ns() (CLOCK_MONOTONIC) */
	struct neuv_decision d;
	__u32 ifindex;            /* ingress ifindex */
	__u32 len;                /* skb->len */
	__u32 copy_ifindex;       /* TAP: where the copy went (the DP port), 0 = no copy */
	__u32 lost;               /* records lost so far (ring full), wraps; a jump means a gap */
	__u8  before[12];         /* DA then SA as the frame arrived */
	__u8  after[12];          /* DA then SA as it left (TAP: the original; the copy has the UCMAC) */
	__u16 proto;              /* EtherType (host order) as the frame arrived */
	__u8  pad[6];
};

#ifdef __BPF__
/*
 * BTF anchors: enums, and structs used only inside functions, appear in an
 * object's BTF only when some variable has the type (src/layout/generated.ts is
 * generated from the BTF, and the loader checks it). These read-only globals are
 * never used by the programs.
 */
const volatile enum neuv_mode neuv_btf_mode = NEUV_MODE_NONE;
const volatile enum neuv_role neuv_btf_role = NEUV_ROLE_VIN;
const volatile enum neuv_dir neuv_btf_dir = NEUV_DIR_TO_WL;
const volatile enum neuv_verdict neuv_btf_verdict = NEUV_V_TO_DP;
const volatile enum neuv_reason neuv_btf_reason = NEUV_R_NONE;
const volatile enum neuv_hook neuv_btf_hook = NEUV_HOOK_VIN;
const volatile struct neuv_trace neuv_btf_trace; /* and struct neuv_decision inside it */
const volatile enum neuv_flow_verdict neuv_btf_flow_verdict = NEUV_FLOW_NONE;
const volatile enum neuv_port_flag neuv_btf_port_flag = NEUV_F_IPV6_TO_DP;
const volatile enum neuv_config_flag neuv_btf_config_flag = NEUV_CFG_TRACE_ID;
const volatile enum neuv_trace_flag neuv_btf_trace_flag = NEUV_TF_PEER;
const volatile enum neuv_const neuv_btf_const = NEUV_STATS_VERDICTS;
#endif /* __BPF__ */

#endif /* NEUV_H */
