/**
 * TypeScript mirror of bpf/neuv.h: enums, flags and codecs for every map key
 * and value. `checkAgainstBtf` compares these declarations with the loaded
 * object's BTF (sizes, member offsets and sizes, enum values) so C/TS drift is
 * an error at load, never a corrupted map.
 */

import { Fields, StructDecl } from './fields';

/** enum neuv_const: constants shared with bpf/neuv.h (checked against BTF like the enums below). */
export const Const = {
  UCMAC_B0: 0x4e,
  UCMAC_B1: 0x65,
  UCMAC_B2: 0x75,
  UCMAC_B3: 0x56,
  VBR_IFINDEX: 10000000,
  VTH_IFINDEX: 10000001,
  STATS_VERDICTS: 5,
  FLOW_VERDICTS: 2,
  FLOWS_DEFAULT: 65536,
  TRACE_RING_SIZE: 256 * 1024,
  MAX_PORTS: 131072,
  MAX_IDS: 65536,
} as const;

export const UCMAC_PREFIX = [Const.UCMAC_B0, Const.UCMAC_B1, Const.UCMAC_B2, Const.UCMAC_B3] as const; // "NeuV"
export const VBR_IFINDEX = Const.VBR_IFINDEX;
export const VTH_IFINDEX = Const.VTH_IFINDEX;
export const MAX_PORTS = Const.MAX_PORTS;
export const MAX_IDS = Const.MAX_IDS;

export const Mode = { NONE: 0, FWD: 1, TAP: 2, BYPASS: 3, DROP: 4 } as const;
export type ModeValue = (typeof Mode)[keyof typeof Mode];
export const Role = { VIN: 1, VEX: 2 } as const;
export type RoleValue = (typeof Role)[keyof typeof Role];
export const Dir = { TO_WL: 0, FROM_WL: 1 } as const;
export const DIR_COUNT = 2;
export const Verdict = { TO_DP: 0, TO_PEER: 1, COPY: 2, FROM_DP: 3, DROP: 4, FAST: 5, FLOW_DROP: 6 } as const;
/** NEUV_V_MAX: every verdict, and "none" in a struct neuv_decision. */
export const VERDICT_COUNT = 7;
/** NEUV_STATS_VERDICTS: the verdicts struct neuv_stats counts (TO_DP..DROP; fixed, so a pinned map stays compatible). */
export const STATS_VERDICT_COUNT = Const.STATS_VERDICTS;
/** NEUV_FLOW_VERDICTS: the verdicts struct neuv_flow_stats counts (FAST, FLOW_DROP), from Verdict.FAST on. */
export const FLOW_VERDICT_COUNT = Const.FLOW_VERDICTS;
/** enum neuv_flow_verdict: struct neuv_flow.verdict. */
export const FlowVerdict = { NONE: 0, ALLOW: 1, DENY: 2 } as const;
export type FlowVerdictValue = (typeof FlowVerdict)[keyof typeof FlowVerdict];
/** NEUV_FLOWS_DEFAULT: max_entries of neuv_flows unless `load --flows N` says otherwise. */
export const FLOWS_DEFAULT = Const.FLOWS_DEFAULT;
export const Reason = {
  NONE: 0,
  PASS_NO_PAIR: 1,
  PASS_NO_PORT: 2,
  DROP_MODE: 3,
  DROP_INJECT: 4,
  DROP_ROLE: 5,
  DROP_NO_PEER: 6,
  CLONE_FAILED: 7,
  REWRITE_FAILED: 8,
} as const;
export const REASON_COUNT = 9;
/** enum neuv_port_flag: struct neuv_port.flags (NEUV_F_*). */
export const PortFlag = { IPV6_TO_DP: 1 << 0, REDIRECT_PEER: 1 << 1, QDISC_OURS: 1 << 2, SELF_PEER: 1 << 3 } as const;
/**
 * enum neuv_cfg_flag: neuv_config.flags (NEUV_CFG_*). With TRACE_ID, trace only the pair whose id is
 * flags & TRACE_ID_MASK. FLOWS: neuv_flows may hold entries (the programs look flows up only then; set
 * by whoever writes the map, never cleared).
 */
export const ConfigFlag = { TRACE_ID_MASK: 0xffff, TRACE_ID: 1 << 16, FLOWS: 1 << 17 } as const;
/** enum neuv_hook: the program that decided (VIN/VEX equal Role). */
export const Hook = { VIN: 1, VEX: 2, VBR: 3 } as const;
export type HookValue = (typeof Hook)[keyof typeof Hook];
export const HOOK_NAMES: Record<number, string> = { 1: 'vin', 2: 'vex', 3: 'vbr' };
/** enum neuv_trace_flag: struct neuv_decision.flags (NEUV_TF_*). */
export const TraceFlag = { PEER: 1 << 0, PARSED: 1 << 1, SHORT: 1 << 2, FLOW: 1 << 3, FLOW_EXPIRED: 1 << 4, FLOW_END: 1 << 5 } as const;
export const TRACE_RING_SIZE = Const.TRACE_RING_SIZE;

export const MODE_NAMES: Record<number, string> = { 0: 'none', 1: 'fwd', 2: 'tap', 3: 'bypass', 4: 'drop' };
export const VERDICT_NAMES = ['to_dp', 'to_peer', 'copy', 'from_dp', 'drop', 'fast', 'flow_drop'] as const;
export const DIR_NAMES = ['to_wl', 'from_wl'] as const;
export const REASON_NAMES = [
  'none',
  'pass_no_pair',
  'pass_no_port',
  'drop_mode',
  'drop_inject',
  'drop_role',
  'drop_no_peer',
  'clone_failed',
  'rewrite_failed',
] as const;

export function parseMode(s: string): ModeValue {
  const m = (Mode as Record<string, ModeValue>)[s.toUpperCase()];
  if (m === undefined || m === Mode.NONE) {
    throw new Error(`unknown mode '${s}' (expected fwd, tap, bypass or drop)`);
  }
  return m;
}

// ---------------------------------------------------------------- declared layouts

export type { StructDecl } from './fields';

export const PortDecl: StructDecl = {
  name: 'neuv_port',
  size: 24,
  members: [
    { name: 'peer_ifindex', offset: 0, size: 4 },
    { name: 'flags', offset: 4, size: 4 },
    { name: 'id', offset: 8, size: 2 },
    { name: 'role', offset: 10, size: 1 },
    { name: 'mode', offset: 11, size: 1 },
    { name: 'mac', offset: 12, size: 6 },
    { name: 'pad', offset: 18, size: 2 },
    { name: 'lock', offset: 20, size: 4 },
  ],
};

/**
 * Flags every write of a neuv_ports entry carries: BPF_F_LOCK, so an existing
 * entry is updated in place (see struct neuv_port in bpf/neuv.h: a plain
 * update hands the replaced element to the next update at once, under a
 * program that may still be reading it).
 */
export const PORT_UPDATE = 4; /* BPF_F_LOCK */

export const IdDecl: StructDecl = {
  name: 'neuv_id',
  size: 8,
  members: [
    { name: 'vin_ifindex', offset: 0, size: 4 },
    { name: 'vex_ifindex', offset: 4, size: 4 },
  ],
};

export const CtrDecl: StructDecl = {
  name: 'neuv_ctr',
  size: 16,
  members: [
    { name: 'packets', offset: 0, size: 8 },
    { name: 'bytes', offset: 8, size: 8 },
  ],
};

export const StatsDecl: StructDecl = {
  name: 'neuv_stats',
  size: DIR_COUNT * STATS_VERDICT_COUNT * 16,
  members: [{ name: 'c', offset: 0, size: DIR_COUNT * STATS_VERDICT_COUNT * 16 }],
};

/** struct neuv_flow_key: pair id + normalised IPv4 5-tuple (addresses and ports in network order). */
export const FlowKeyDecl: StructDecl = {
  name: 'neuv_flow_key',
  size: 16,
  members: [
    { name: 'id', offset: 0, size: 2 },
    { name: 'proto', offset: 2, size: 1 },
    { name: 'pad', offset: 3, size: 1 },
    { name: 'addr_a', offset: 4, size: 4 },
    { name: 'addr_b', offset: 8, size: 4 },
    { name: 'port_a', offset: 12, size: 2 },
    { name: 'port_b', offset: 14, size: 2 },
  ],
};

/** struct neuv_flow: the value of neuv_flows. */
export const FlowDecl: StructDecl = {
  name: 'neuv_flow',
  size: 48,
  members: [
    { name: 'verdict', offset: 0, size: 1 },
    { name: 'pad', offset: 1, size: 7 },
    { name: 'deadline_ns', offset: 8, size: 8 },
    { name: 'idle_ns', offset: 16, size: 8 },
    { name: 'last_ns', offset: 24, size: 8 },
    { name: 'packets', offset: 32, size: 8 },
    { name: 'bytes', offset: 40, size: 8 },
  ],
};

export const FlowStatsDecl: StructDecl = {
  name: 'neuv_flow_stats',
  size: DIR_COUNT * FLOW_VERDICT_COUNT * 16,
  members: [{ name: 'c', offset: 0, size: DIR_COUNT * FLOW_VERDICT_COUNT * 16 }],
};

export const GlobalDecl: StructDecl = {
  name: 'neuv_global',
  size: REASON_COUNT * 8,
  members: [{ name: 'reason', offset: 0, size: REASON_COUNT * 8 }],
};

export const ConfigDecl: StructDecl = {
  name: 'neuv_config',
  size: 16,
  members: [
    { name: 'dp_ifindex', offset: 0, size: 4 },
    { name: 'flags', offset: 4, size: 4 },
    { name: 'trace_until', offset: 8, size: 8 },
  ],
};

export const DecisionDecl: StructDecl = {
  name: 'neuv_decision',
  size: 16,
  members: [
    { name: 'target', offset: 0, size: 4 },
    { name: 'id', offset: 4, size: 2 },
    { name: 'has_id', offset: 6, size: 1 },
    { name: 'dir', offset: 7, size: 1 },
    { name: 'v1', offset: 8, size: 1 },
    { name: 'v2', offset: 9, size: 1 },
    { name: 'reason', offset: 10, size: 1 },
    { name: 'mode', offset: 11, size: 1 },
    { name: 'hook', offset: 12, size: 1 },
    { name: 'flags', offset: 13, size: 1 },
    { name: 'action', offset: 14, size: 2 },
  ],
};

export const TraceDecl: StructDecl = {
  name: 'neuv_trace',
  size: 72,
  members: [
    { name: 'ts', offset: 0, size: 8 },
    { name: 'd', offset: 8, size: 16 },
    { name: 'ifindex', offset: 24, size: 4 },
    { name: 'len', offset: 28, size: 4 },
    { name: 'copy_ifindex', offset: 32, size: 4 },
    { name: 'lost', offset: 36, size: 4 },
    { name: 'before', offset: 40, size: 12 },
    { name: 'after', offset: 52, size: 12 },
    { name: 'proto', offset: 64, size: 2 },
    { name: 'pad', offset: 66, size: 6 },
  ],
};

export const STRUCTS: StructDecl[] = [
  PortDecl, IdDecl, CtrDecl, StatsDecl, GlobalDecl, ConfigDecl, DecisionDecl, TraceDecl, FlowKeyDecl, FlowDecl, FlowStatsDecl,
];

/** Enums as this file knows them, by their C name; C names are upper-case with a prefix. */
export const ENUMS: Array<{ name: string; prefix: string; values: Record<string, number> }> = [
  { name: 'neuv_mode', prefix: 'NEUV_MODE_', values: { ...Mode, MAX: 5 } },
  { name: 'neuv_role', prefix: 'NEUV_ROLE_', values: Role },
  { name: 'neuv_dir', prefix: 'NEUV_DIR_', values: { ...Dir, MAX: DIR_COUNT } },
  { name: 'neuv_verdict', prefix: 'NEUV_V_', values: { ...Verdict, MAX: VERDICT_COUNT } },
  { name: 'neuv_reason', prefix: 'NEUV_R_', values: { ...Reason, MAX: REASON_COUNT } },
  { name: 'neuv_hook', prefix: 'NEUV_HOOK_', values: Hook },
  { name: 'neuv_flow_verdict', prefix: 'NEUV_FLOW_', values: FlowVerdict },
  { name: 'neuv_port_flag', prefix: 'NEUV_F_', values: PortFlag },
  { name: 'neuv_cfg_flag', prefix: 'NEUV_CFG_', values: ConfigFlag },
  { name: 'neuv_trace_flag', prefix: 'NEUV_TF_', values: TraceFlag },
  { name: 'neuv_const', prefix: 'NEUV_', values: Const },
];

/**
 * Map names and their key/value declarations (the key is a __u32 except for
 * neuv_flows, keyed by struct neuv_flow_key; the ring buffer neuv_trace has
 * no key, its records are struct neuv_trace).
 */
export const MAPS = {
  ports: { name: 'neuv_ports', value: PortDecl },
  ids: { name: 'neuv_ids', value: IdDecl },
  stats: { name: 'neuv_stats', value: StatsDecl },
  global: { name: 'neuv_global', value: GlobalDecl },
  config: { name: 'neuv_config', value: ConfigDecl },
  trace: { name: 'neuv_trace', value: TraceDecl },
  flows: { name: 'neuv_flows', value: FlowDecl },
  flowStats: { name: 'neuv_flow_stats', value: FlowStatsDecl },
} as const;

// ---------------------------------------------------------------- codecs

const PORT = new Fields(PortDecl);
const ID = new Fields(IdDecl);
const CTR = new Fields(CtrDecl);
const STATS = new Fields(StatsDecl);
const FLOW_STATS = new Fields(FlowStatsDecl);
const GLOBAL = new Fields(GlobalDecl);
const CONFIG = new Fields(ConfigDecl);
const FLOW_KEY = new Fields(FlowKeyDecl);
const FLOW = new Fields(FlowDecl);
const DECISION = new Fields(DecisionDecl);
const TRACE = new Fields(TraceDecl);

export interface PortEntry {
  peerIfindex: number;
  flags: number;
  id: number;
  role: RoleValue;
  mode: number;
  mac: Buffer; // 6 bytes
}

export function u32Key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

export function decodeU32Key(b: Buffer): number {
  return b.readUInt32LE(0);
}

export function encodePort(p: PortEntry): Buffer {
  const b = Buffer.alloc(PortDecl.size);
  PORT.setU(b, 'peer_ifindex', p.peerIfindex);
  PORT.setU(b, 'flags', p.flags);
  PORT.setU(b, 'id', p.id);
  PORT.setU(b, 'role', p.role);
  PORT.setU(b, 'mode', p.mode);
  if (p.mac.length !== 6) throw new Error('MAC must be 6 bytes');
  PORT.setBytes(b, 'mac', p.mac);
  return b;
}

export function decodePort(b: Buffer): PortEntry {
  return {
    peerIfindex: PORT.u(b, 'peer_ifindex'),
    flags: PORT.u(b, 'flags'),
    id: PORT.u(b, 'id'),
    role: PORT.u(b, 'role') as RoleValue,
    mode: PORT.u(b, 'mode'),
    mac: PORT.bytes(b, 'mac'),
  };
}

export interface IdEntry {
  vinIfindex: number;
  vexIfindex: number;
}

export function encodeId(e: IdEntry): Buffer {
  const b = Buffer.alloc(IdDecl.size);
  ID.setU(b, 'vin_ifindex', e.vinIfindex);
  ID.setU(b, 'vex_ifindex', e.vexIfindex);
  return b;
}

export function decodeId(b: Buffer): IdEntry {
  return { vinIfindex: ID.u(b, 'vin_ifindex'), vexIfindex: ID.u(b, 'vex_ifindex') };
}

export interface Ctr {
  packets: bigint;
  bytes: bigint;
}
/**
 * stats[dir][verdict], every verdict: TO_DP..DROP from neuv_stats (addStats),
 * FAST and FLOW_DROP from neuv_flow_stats (addFlowStats).
 */
export type Stats = Ctr[][];

export function emptyStats(): Stats {
  return Array.from({ length: DIR_COUNT }, () => Array.from({ length: VERDICT_COUNT }, () => ({ packets: 0n, bytes: 0n })));
}

/** Offset of counter c[dir][slot] in a struct whose member `c` is struct neuv_ctr [DIR_COUNT][slots]. */
function ctrOff(f: Fields, slots: number, dir: number, slot: number): number {
  return f.off('c') + (dir * slots + slot) * CtrDecl.size;
}

/** Decodes one per-CPU neuv_stats value and adds it into `into`. */
export function addStats(into: Stats, b: Buffer): Stats {
  for (let d = 0; d < DIR_COUNT; d++) {
    for (let v = 0; v < STATS_VERDICT_COUNT; v++) {
      const off = ctrOff(STATS, STATS_VERDICT_COUNT, d, v);
      into[d]![v]!.packets += CTR.u64(b, 'packets', off);
      into[d]![v]!.bytes += CTR.u64(b, 'bytes', off);
    }
  }
  return into;
}

/** Decodes one per-CPU neuv_flow_stats value and adds it into `into` (at Verdict.FAST and FLOW_DROP). */
export function addFlowStats(into: Stats, b: Buffer): Stats {
  for (let d = 0; d < DIR_COUNT; d++) {
    for (let i = 0; i < FLOW_VERDICT_COUNT; i++) {
      const off = ctrOff(FLOW_STATS, FLOW_VERDICT_COUNT, d, i);
      into[d]![Verdict.FAST + i]!.packets += CTR.u64(b, 'packets', off);
      into[d]![Verdict.FAST + i]!.bytes += CTR.u64(b, 'bytes', off);
    }
  }
  return into;
}

/** A neuv_stats value (the verdicts it holds: TO_DP..DROP). */
export function encodeStats(s: Stats): Buffer {
  const b = Buffer.alloc(StatsDecl.size);
  for (let d = 0; d < DIR_COUNT; d++) {
    for (let v = 0; v < STATS_VERDICT_COUNT; v++) {
      const off = ctrOff(STATS, STATS_VERDICT_COUNT, d, v);
      CTR.setU64(b, 'packets', s[d]![v]!.packets, off);
      CTR.setU64(b, 'bytes', s[d]![v]!.bytes, off);
    }
  }
  return b;
}

// ---------------------------------------------------------------- flow offload

/** A flow as the DP sees it: pair id, IP protocol, source and destination (dotted quad, port). */
export interface FlowTuple {
  id: number;
  proto: number;
  src: string;
  sport: number;
  dst: string;
  dport: number;
}

/** struct neuv_flow_key, decoded: endpoint A is the lower (address, port); ports 0 unless TCP/UDP. */
export interface FlowKey {
  id: number;
  proto: number;
  addrA: string;
  portA: number;
  addrB: string;
  portB: number;
}

export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

/** Dotted quad -> its 4 bytes (network order). */
export function ipv4Bytes(a: string): Buffer {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(a);
  const parts = m ? m.slice(1).map(Number) : [];
  if (!m || parts.some((x) => x > 255)) throw new Error(`'${a}' is not an IPv4 address`);
  return Buffer.from(parts);
}

export function formatIpv4(b: Uint8Array, off = 0): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/**
 * The key of a flow, normalised as the datapath does: the same for both
 * directions (endpoint A = the lower (address, port) as big-endian numbers,
 * address first), ports 0 for protocols other than TCP and UDP.
 */
export function flowKeyOf(t: FlowTuple): FlowKey {
  const ports = t.proto === IPPROTO_TCP || t.proto === IPPROTO_UDP;
  const sp = ports ? t.sport & 0xffff : 0;
  const dp = ports ? t.dport & 0xffff : 0;
  const s = ipv4Bytes(t.src).readUInt32BE(0);
  const d = ipv4Bytes(t.dst).readUInt32BE(0);
  const srcFirst = s < d || (s === d && sp <= dp);
  const [addrA, portA, addrB, portB] = srcFirst ? [t.src, sp, t.dst, dp] : [t.dst, dp, t.src, sp];
  return { id: t.id & 0xffff, proto: t.proto & 0xff, addrA: formatIpv4(ipv4Bytes(addrA)), portA, addrB: formatIpv4(ipv4Bytes(addrB)), portB };
}

export function encodeFlowKey(k: FlowKey): Buffer {
  const b = Buffer.alloc(FlowKeyDecl.size);
  FLOW_KEY.setU(b, 'id', k.id); // host order (little-endian here, as the BPF side on x86/arm64)
  FLOW_KEY.setU(b, 'proto', k.proto);
  FLOW_KEY.setBytes(b, 'addr_a', ipv4Bytes(k.addrA)); // network order
  FLOW_KEY.setBytes(b, 'addr_b', ipv4Bytes(k.addrB));
  FLOW_KEY.setBe(b, 'port_a', k.portA);
  FLOW_KEY.setBe(b, 'port_b', k.portB);
  return b;
}

export function decodeFlowKey(b: Buffer): FlowKey {
  return {
    id: FLOW_KEY.u(b, 'id'),
    proto: FLOW_KEY.u(b, 'proto'),
    addrA: formatIpv4(b, FLOW_KEY.off('addr_a')),
    addrB: formatIpv4(b, FLOW_KEY.off('addr_b')),
    portA: FLOW_KEY.be(b, 'port_a'),
    portB: FLOW_KEY.be(b, 'port_b'),
  };
}

/** struct neuv_flow. */
export interface FlowEntry {
  verdict: number;
  /** Absolute CLOCK_MONOTONIC deadline in ns, 0 = none. */
  deadlineNs: bigint;
  /** Idle timeout in ns, 0 = none. */
  idleNs: bigint;
  /** Last frame (CLOCK_MONOTONIC ns), 0 = none yet. */
  lastNs: bigint;
  packets: bigint;
  bytes: bigint;
}

export function encodeFlow(f: FlowEntry): Buffer {
  const b = Buffer.alloc(FlowDecl.size);
  FLOW.setU(b, 'verdict', f.verdict);
  FLOW.setU64(b, 'deadline_ns', f.deadlineNs);
  FLOW.setU64(b, 'idle_ns', f.idleNs);
  FLOW.setU64(b, 'last_ns', f.lastNs);
  FLOW.setU64(b, 'packets', f.packets);
  FLOW.setU64(b, 'bytes', f.bytes);
  return b;
}

export function decodeFlow(b: Buffer): FlowEntry {
  return {
    verdict: FLOW.u(b, 'verdict'),
    deadlineNs: FLOW.u64(b, 'deadline_ns'),
    idleNs: FLOW.u64(b, 'idle_ns'),
    lastNs: FLOW.u64(b, 'last_ns'),
    packets: FLOW.u64(b, 'packets'),
    bytes: FLOW.u64(b, 'bytes'),
  };
}

/** Adds one per-CPU neuv_global value into `into` (reason counters). */
export function addGlobal(into: bigint[], b: Buffer): bigint[] {
  const base = GLOBAL.off('reason');
  for (let r = 0; r < REASON_COUNT; r++) into[r] = (into[r] ?? 0n) + b.readBigUInt64LE(base + r * 8);
  return into;
}

export interface Config {
  dpIfindex: number;
  flags: number;
  traceUntil: bigint;
}

export function encodeConfig(c: Config): Buffer {
  const b = Buffer.alloc(ConfigDecl.size);
  CONFIG.setU(b, 'dp_ifindex', c.dpIfindex);
  CONFIG.setU(b, 'flags', c.flags);
  CONFIG.setU64(b, 'trace_until', c.traceUntil);
  return b;
}

export function decodeConfig(b: Buffer): Config {
  return { dpIfindex: CONFIG.u(b, 'dp_ifindex'), flags: CONFIG.u(b, 'flags'), traceUntil: CONFIG.u64(b, 'trace_until') };
}

/** neuv_config.flags for a trace filter: only pair `id`, or everything (undefined). */
export function traceFilterFlags(id: number | undefined): number {
  return id === undefined ? 0 : (ConfigFlag.TRACE_ID | (id & ConfigFlag.TRACE_ID_MASK)) >>> 0;
}

/** struct neuv_decision: what a program did with a frame. */
export interface Decision {
  target: number;
  id: number;
  hasId: boolean;
  dir: number;
  v1: number;
  v2: number;
  reason: number;
  mode: number;
  hook: number;
  flags: number;
  action: number;
}

/** struct neuv_trace: one ring buffer record. */
export interface TraceRecord {
  /** bpf_ktime_get_ns() (CLOCK_MONOTONIC, same clock as process.hrtime.bigint()). */
  ts: bigint;
  d: Decision;
  ifindex: number;
  len: number;
  copyIfindex: number;
  lost: number;
  /** DA then SA as the frame arrived (6 + 6 bytes). */
  before: Buffer;
  /** DA then SA as it left. */
  after: Buffer;
  proto: number;
}

export function decodeDecision(b: Buffer, off = 0): Decision {
  return {
    target: DECISION.u(b, 'target', off),
    id: DECISION.u(b, 'id', off),
    hasId: DECISION.u(b, 'has_id', off) !== 0,
    dir: DECISION.u(b, 'dir', off),
    v1: DECISION.u(b, 'v1', off),
    v2: DECISION.u(b, 'v2', off),
    reason: DECISION.u(b, 'reason', off),
    mode: DECISION.u(b, 'mode', off),
    hook: DECISION.u(b, 'hook', off),
    flags: DECISION.u(b, 'flags', off),
    action: DECISION.i(b, 'action', off),
  };
}

export function decodeTrace(b: Buffer): TraceRecord {
  if (b.length < TraceDecl.size) throw new Error(`trace record is ${b.length} bytes, expected ${TraceDecl.size}`);
  return {
    ts: TRACE.u64(b, 'ts'),
    d: decodeDecision(b, TRACE.off('d')),
    ifindex: TRACE.u(b, 'ifindex'),
    len: TRACE.u(b, 'len'),
    copyIfindex: TRACE.u(b, 'copy_ifindex'),
    lost: TRACE.u(b, 'lost'),
    before: TRACE.bytes(b, 'before'),
    after: TRACE.bytes(b, 'after'),
    proto: TRACE.u(b, 'proto'),
  };
}

/** The inverse of decodeTrace (for tests and tools that replay records). */
export function encodeTrace(r: TraceRecord): Buffer {
  const b = Buffer.alloc(TraceDecl.size);
  const d = r.d;
  const o = TRACE.off('d');
  TRACE.setU64(b, 'ts', r.ts);
  DECISION.setU(b, 'target', d.target, o);
  DECISION.setU(b, 'id', d.id, o);
  DECISION.setU(b, 'has_id', d.hasId ? 1 : 0, o);
  DECISION.setU(b, 'dir', d.dir, o);
  DECISION.setU(b, 'v1', d.v1, o);
  DECISION.setU(b, 'v2', d.v2, o);
  DECISION.setU(b, 'reason', d.reason, o);
  DECISION.setU(b, 'mode', d.mode, o);
  DECISION.setU(b, 'hook', d.hook, o);
  DECISION.setU(b, 'flags', d.flags, o);
  DECISION.setI(b, 'action', d.action, o);
  TRACE.setU(b, 'ifindex', r.ifindex);
  TRACE.setU(b, 'len', r.len);
  TRACE.setU(b, 'copy_ifindex', r.copyIfindex);
  TRACE.setU(b, 'lost', r.lost);
  TRACE.setBytes(b, 'before', r.before.subarray(0, 12));
  TRACE.setBytes(b, 'after', r.after.subarray(0, 12));
  TRACE.setU(b, 'proto', r.proto);
  return b;
}

// ---------------------------------------------------------------- BTF check

export interface BtfSource {
  btfStruct(name: string): { size: number; members: Array<{ name: string; offset: number; size: number }> } | undefined;
  btfEnum(name: string): { values: Record<string, number> } | undefined;
}

/**
 * Compares the declarations above with the object's BTF. Returns the list of
 * disagreements (empty when they agree). `structs`/`enums` default to ours;
 * tests pass altered copies to prove a drift is caught.
 */
export function checkAgainstBtf(src: BtfSource, structs: StructDecl[] = STRUCTS, enums = ENUMS): string[] {
  const problems: string[] = [];
  for (const decl of structs) {
    const t = src.btfStruct(decl.name);
    if (!t) {
      problems.push(`struct ${decl.name}: not in the object's BTF`);
      continue;
    }
    if (t.size !== decl.size) problems.push(`struct ${decl.name}: size ${t.size} in BTF, ${decl.size} in layout.ts`);
    const names = new Set(decl.members.map((m) => m.name));
    for (const m of decl.members) {
      const bm = t.members.find((x) => x.name === m.name);
      if (!bm) {
        problems.push(`struct ${decl.name}.${m.name}: not in BTF`);
        continue;
      }
      if (bm.offset !== m.offset) problems.push(`struct ${decl.name}.${m.name}: offset ${bm.offset} in BTF, ${m.offset} in layout.ts`);
      if (bm.size !== m.size) problems.push(`struct ${decl.name}.${m.name}: size ${bm.size} in BTF, ${m.size} in layout.ts`);
    }
    for (const bm of t.members) {
      if (!names.has(bm.name)) problems.push(`struct ${decl.name}.${bm.name}: in BTF, missing from layout.ts`);
    }
  }
  for (const e of enums) {
    const t = src.btfEnum(e.name);
    if (!t) {
      problems.push(`enum ${e.name}: not in the object's BTF`);
      continue;
    }
    for (const [k, v] of Object.entries(e.values)) {
      const cv = t.values[e.prefix + k];
      if (cv === undefined) problems.push(`enum ${e.name}: ${e.prefix}${k} not in BTF`);
      else if (cv !== v) problems.push(`enum ${e.name}: ${e.prefix}${k} is ${cv} in BTF, ${v} in layout.ts`);
    }
    for (const [k, v] of Object.entries(t.values)) {
      const short = k.startsWith(e.prefix) ? k.slice(e.prefix.length) : k;
      if (!(short in e.values)) problems.push(`enum ${e.name}: ${k} = ${v} in BTF, missing from layout.ts`);
    }
  }
  return problems;
}
