/** Codecs: every map key and value (and trace record) to and from its bytes, by the declared layouts. */
import { Fields } from './fields';
import { ConfigFlag, DIR_COUNT, FLOW_VERDICT_COUNT, REASON_COUNT, RoleValue, STATS_VERDICT_COUNT, VERDICT_COUNT, Verdict } from './enums';
import { ConfigDecl, CtrDecl, HomeDecl, DecisionDecl, FlowDecl, FlowKeyDecl, FlowStatsDecl, GlobalDecl, IdDecl, PortDecl, StatsDecl, TraceDecl } from './structs';

const PORT = new Fields(PortDecl);
const ID = new Fields(IdDecl);
const CTR = new Fields(CtrDecl);
const STATS = new Fields(StatsDecl);
const FLOW_STATS = new Fields(FlowStatsDecl);
const GLOBAL = new Fields(GlobalDecl);
const CONFIG = new Fields(ConfigDecl);
const HOME = new Fields(HomeDecl);
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

/** struct neuv_home: the enforcer netns a pin root was loaded in. */
export interface Home {
  /** SO_NETNS_COOKIE, 0n when the kernel has none (< 5.14). */
  netnsCookie: bigint;
  netnsIno: bigint;
  netnsDev: bigint;
  vbrIfindex: number;
}

export function encodeHome(h: Home): Buffer {
  const b = Buffer.alloc(HomeDecl.size);
  HOME.setU64(b, 'netns_cookie', h.netnsCookie);
  HOME.setU64(b, 'netns_ino', h.netnsIno);
  HOME.setU64(b, 'netns_dev', h.netnsDev);
  HOME.setU(b, 'vbr_ifindex', h.vbrIfindex);
  return b;
}

export function decodeHome(b: Buffer): Home {
  return { netnsCookie: HOME.u64(b, 'netns_cookie'), netnsIno: HOME.u64(b, 'netns_ino'), netnsDev: HOME.u64(b, 'netns_dev'), vbrIfindex: HOME.u(b, 'vbr_ifindex') };
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
