/**
 * Flow offload, the DP side (docs/flow-offload.md): the enforcer's DP, once
 * it has decided a flow, writes the decision into the pinned map neuv_flows
 * and the vin/vex programs apply it to the flow's later frames without the
 * DP (pairs in FWD only): ALLOW forwards them straight to the pair's other
 * port (verdict FAST), DENY drops them in the kernel (FLOW_DROP).
 *
 * This module is the typed API over that map (the CLI `neuv-bpf flow` is a
 * thin shell over it; a DP written in C writes the map itself, see
 * examples/flow-offload.c). Every call is one or a few map operations on the
 * pinned map: no lock, so a DP can offload at its own pace; the map's
 * updates are atomic per entry.
 *
 * Times are CLOCK_MONOTONIC nanoseconds, the clock of process.hrtime.bigint();
 * the datapath reads it coarse (bpf_ktime_get_coarse_ns(): up to a tick behind).
 */
import * as fs from 'node:fs';
import { MapFd } from './bpf';
import { NotFoundError, UsageError, cutValue } from './errors';
import { enableFlowLookups } from './config';
import {
  FlowEntry,
  FlowKey,
  FlowVerdict,
  IPPROTO_TCP,
  IPPROTO_UDP,
  MAPS,
  decodeFlow,
  decodeFlowKey,
  decodeId,
  decodePort,
  encodeFlow,
  encodeFlowKey,
  flowKeyOf,
  formatIpv4,
  ipv4Bytes,
  u32Key,
  decodeU32Key,
  MODE_NAMES,
} from './layout';
import { log } from './log';
import { formatMac } from './mac';
import { Pins, mapPinPath } from './pins';
import { FLOW_SECONDS, IP_PROTO, L4_PORT, PORT_ID, parseDecimal, parseInteger } from './numbers';

// ================================================================ types

export type FlowVerdictName = 'allow' | 'deny';

/** One end of a flow: "10.0.0.1:1234", "10.0.0.1" (port 0), or an object. */
export type Endpoint = string | { addr: string; port?: number };

/** A flow as the DP sees one of its frames (either direction gives the same entry). */
export interface FlowSpec {
  /** Pair id (as in the UCMAC, 0..65535). */
  id: number;
  /** 'tcp', 'udp', 'icmp' or an IP protocol number 0..255. */
  proto: string | number;
  src: Endpoint;
  dst: Endpoint;
}

export interface OffloadOptions {
  /** Default 'allow' (the fast path). */
  verdict?: FlowVerdictName;
  /** The entry expires this many seconds from now, whatever the traffic (deadline_ns). */
  timeoutS?: number;
  /** The entry expires after this many seconds without a frame (idle_ns). */
  idleS?: number;
}

export interface FlowView {
  id: number;
  proto: number;
  /** 'tcp', 'udp', 'icmp' or the number. */
  protoName: string;
  /** Endpoint A: the lower (address, port). */
  a: { addr: string; port: number };
  b: { addr: string; port: number };
  verdict: FlowVerdictName | 'none' | string;
  /** CLOCK_MONOTONIC ns; 0 = none. */
  deadlineNs: bigint;
  idleNs: bigint;
  lastNs: bigint;
  packets: bigint;
  bytes: bigint;
  /** Milliseconds until the deadline or the idle timeout, whichever comes first (null: never). */
  expiresInMs: number | null;
  /** The next frame would find it expired (the datapath deletes it then). */
  expired: boolean;
}

export interface OffloadResult extends FlowView {
  /** The pair's mode as read: entries only apply in fwd (and a mode switch clears them). */
  pairMode: string;
  /** An entry for the flow existed and was replaced (its counters start again). */
  replaced: boolean;
}

// ================================================================ parsing (pure)

const PROTO_NAMES: Record<number, string> = { 1: 'icmp', 6: 'tcp', 17: 'udp' };

export function parseProto(p: string | number): number {
  if (typeof p === 'number') return parseInteger(p, 'IP protocol', IP_PROTO);
  const s = String(p).trim().toLowerCase();
  const named = Object.entries(PROTO_NAMES).find(([, n]) => n === s);
  if (named) return Number(named[0]);
  if (/^[0-9]+$/.test(s)) return parseInteger(s, 'IP protocol', IP_PROTO);
  throw new UsageError(`unknown protocol ${JSON.stringify(cutValue(String(p)))} (expected tcp, udp, icmp or a number 0..255)`);
}

export function protoName(n: number): string {
  return PROTO_NAMES[n] ?? String(n);
}

/** "10.0.0.1:80" -> { addr, port }; a bare address has port 0. */
export function parseEndpoint(e: Endpoint, what: string): { addr: string; port: number } {
  let addr: string;
  let port: number;
  if (typeof e === 'string') {
    const m = /^([0-9.]+)(?::([0-9]+))?$/.exec(e.trim());
    if (!m) throw new UsageError(`${what} ${JSON.stringify(cutValue(e))} is not ADDR or ADDR:PORT (IPv4)`);
    addr = m[1]!;
    port = m[2] === undefined ? 0 : parseInteger(m[2], `${what} port`, L4_PORT);
  } else {
    addr = e.addr;
    port = e.port ?? 0;
  }
  try {
    addr = formatIpv4(ipv4Bytes(addr));
  } catch {
    throw new UsageError(`${what} address ${JSON.stringify(cutValue(String(addr)))} is not an IPv4 address`);
  }
  port = parseInteger(port, `${what} port`, L4_PORT);
  return { addr, port };
}

/** Validates a spec and gives its normalised key (the same for both directions). */
export function flowKeyFromSpec(f: FlowSpec): FlowKey {
  parseInteger(f.id, 'pair id', PORT_ID);
  const proto = parseProto(f.proto);
  const s = parseEndpoint(f.src, 'source');
  const d = parseEndpoint(f.dst, 'destination');
  const ports = proto === IPPROTO_TCP || proto === IPPROTO_UDP;
  if (!ports && (s.port || d.port)) throw new UsageError(`ports only exist for tcp and udp, not ${protoName(proto)}: give addresses only`);
  return flowKeyOf({ id: f.id, proto, src: s.addr, sport: s.port, dst: d.addr, dport: d.port });
}

/** A timeout in nanoseconds; none (0) when not given or 0, else in FLOW_SECONDS. */
function seconds(v: number | undefined, what: string): bigint {
  if (v === undefined || v === 0) return 0n;
  return BigInt(Math.round(parseDecimal(v, what, FLOW_SECONDS) * 1e9));
}

/** The value to write: deadline from `now`, idle timeout, counters zero, last_ns 0 (the idle clock starts at the first frame). */
export function flowValue(opts: OffloadOptions, now: bigint): FlowEntry {
  const verdict = opts.verdict ?? 'allow';
  if (verdict !== 'allow' && verdict !== 'deny') throw new UsageError(`verdict '${verdict}' (expected allow or deny)`);
  const t = seconds(opts.timeoutS, 'timeout');
  return {
    verdict: verdict === 'allow' ? FlowVerdict.ALLOW : FlowVerdict.DENY,
    deadlineNs: t ? now + t : 0n,
    idleNs: seconds(opts.idleS, 'idle timeout'),
    lastNs: 0n,
    packets: 0n,
    bytes: 0n,
  };
}

/**
 * Whether the datapath would find the entry expired at `now` (the rule of
 * bpf/neuv.h struct neuv_flow), and how long until it would be.
 */
export function flowExpiry(e: FlowEntry, now: bigint): { expired: boolean; expiresInMs: number | null } {
  const idleEnd = e.idleNs && e.lastNs ? e.lastNs + e.idleNs : 0n;
  const expired = (e.deadlineNs !== 0n && now >= e.deadlineNs) || (e.idleNs !== 0n && e.lastNs !== 0n && now > e.lastNs && now - e.lastNs >= e.idleNs);
  const ends = [e.deadlineNs, idleEnd].filter((x) => x !== 0n);
  if (!ends.length) return { expired, expiresInMs: null }; // no deadline, and no idle clock running yet
  const first = ends.reduce((a, b) => (a < b ? a : b));
  return { expired, expiresInMs: expired ? 0 : Number((first - now) / 1_000_000n) };
}

export function viewFlow(k: FlowKey, e: FlowEntry, now: bigint): FlowView {
  const verdict = e.verdict === FlowVerdict.ALLOW ? 'allow' : e.verdict === FlowVerdict.DENY ? 'deny' : e.verdict === 0 ? 'none' : `verdict${e.verdict}`;
  return {
    id: k.id,
    proto: k.proto,
    protoName: protoName(k.proto),
    a: { addr: k.addrA, port: k.portA },
    b: { addr: k.addrB, port: k.portB },
    verdict,
    deadlineNs: e.deadlineNs,
    idleNs: e.idleNs,
    lastNs: e.lastNs,
    packets: e.packets,
    bytes: e.bytes,
    ...flowExpiry(e, now),
  };
}

// ================================================================ the map

export function monotonicNs(): bigint {
  return process.hrtime.bigint(); // CLOCK_MONOTONIC (the datapath's coarse reading is up to a tick behind)
}

/**
 * The pinned flow map of a loaded datapath. Keep one open while offloading
 * many flows (each standalone function below opens and closes it).
 */
export class Flows {
  readonly pinRoot: string;
  /** neuv_flows and neuv_config (offload turns flow lookups on). */
  private readonly pins: Pins;
  private readonly map: MapFd;

  private constructor(pins: Pins, map: MapFd) {
    this.pinRoot = pins.pinRoot;
    this.pins = pins;
    this.map = map;
  }

  /** Whether the datapath at pinRoot has a flow map (one loaded by a version without it has none). */
  static available(pinRoot: string): boolean {
    return fs.existsSync(mapPinPath(pinRoot, 'flows'));
  }

  static open(pinRoot: string): Flows {
    const pins = Pins.open(pinRoot, ['flows', 'config']);
    if (!pins.flows) {
      pins.close();
      throw new NotFoundError(`no ${MAPS.flows.name} under ${pinRoot}: the datapath was loaded by a version without flow offload (run neuv-bpf load)`);
    }
    return new Flows(pins, pins.flows);
  }

  /** max_entries of the pinned map (`load --flows N`). */
  get capacity(): number {
    return this.map.info.maxEntries;
  }

  /** How many entries the map holds now (offloaded flows, expired ones not yet deleted included). */
  count(): number {
    return this.map.keys().length;
  }

  /** The mode of pair `id` as its vin entry says, or undefined if there is no such pair. */
  private pairMode(id: number): string | undefined {
    return Pins.with(this.pinRoot, ['ids', 'ports'], ({ ids, ports }) => {
      const v = ids.lookup(u32Key(id));
      if (!v) return undefined;
      const p = ports.lookup(u32Key(decodeId(v).vinIfindex));
      return p ? (MODE_NAMES[decodePort(p).mode] ?? 'none') : 'none';
    }, { legacyPorts: true });
  }

  /**
   * Every pair by its workload MAC: id and mode (its vin entry's), read from
   * the pinned maps without the pin root's lock (reads only; a pair changing
   * meanwhile is seen before or after). For a DP's sessions, named by MAC.
   */
  pairsByMac(): Map<string, { id: number; mode: string }> {
    return Pins.with(this.pinRoot, ['ids', 'ports'], ({ ids, ports }) => {
      const out = new Map<string, { id: number; mode: string }>();
      for (const [k, v] of ids.entries()) {
        const p = ports.lookup(u32Key(decodeId(v).vinIfindex));
        if (!p) continue;
        const port = decodePort(p);
        out.set(formatMac(port.mac), { id: decodeU32Key(k), mode: MODE_NAMES[port.mode] ?? 'none' });
      }
      return out;
    }, { legacyPorts: true });
  }

  /**
   * Writes (or replaces) the decision for a flow. The pair must exist; its
   * mode is reported, not required (entries only apply in fwd).
   */
  offload(flow: FlowSpec, opts: OffloadOptions = {}): OffloadResult {
    const k = flowKeyFromSpec(flow);
    const mode = this.pairMode(k.id);
    if (mode === undefined) throw new NotFoundError(`no pair with port id ${k.id}`);
    const now = monotonicNs();
    const e = flowValue(opts, now);
    const key = encodeFlowKey(k);
    const replaced = this.map.lookup(key) !== undefined;
    enableFlowLookups(this.pinRoot, this.pins.config);
    this.map.update(key, encodeFlow(e));
    const r: OffloadResult = { ...viewFlow(k, e, now), pairMode: mode, replaced };
    log('flows').debug({ id: k.id, proto: k.proto, a: r.a, b: r.b, verdict: r.verdict, deadlineNs: e.deadlineNs, idleNs: e.idleNs }, 'flow offloaded');
    return r;
  }

  /** Removes a flow's entry (its frames go to the DP again). Returns false if there was none. */
  revoke(flow: FlowSpec): boolean {
    return this.map.delete(encodeFlowKey(flowKeyFromSpec(flow)));
  }

  /** The entry of a flow, or undefined. */
  get(flow: FlowSpec): FlowView | undefined {
    const k = flowKeyFromSpec(flow);
    const v = this.map.lookup(encodeFlowKey(k));
    return v ? viewFlow(k, decodeFlow(v), monotonicNs()) : undefined;
  }

  /** Every entry (of pair `id` only, if given), ordered by id, protocol, endpoints. */
  list(filter: { id?: number } = {}): FlowView[] {
    const now = monotonicNs();
    const out: FlowView[] = [];
    for (const [kb, vb] of this.map.entries()) {
      const k = decodeFlowKey(kb);
      if (filter.id !== undefined && k.id !== filter.id) continue;
      out.push(viewFlow(k, decodeFlow(vb), now));
    }
    const ip = (a: string) => ipv4Bytes(a).readUInt32BE(0);
    return out.sort((x, y) => x.id - y.id || x.proto - y.proto || ip(x.a.addr) - ip(y.a.addr) || x.a.port - y.a.port || ip(x.b.addr) - ip(y.b.addr) || x.b.port - y.b.port);
  }

  /** Deletes every entry of pair `id`; returns how many. */
  clearPair(id: number): number {
    return this.clearPairs(new Set([id])).get(id) ?? 0;
  }

  /** Deletes every flow entry of these pairs (one walk over the map): how many each, for the pairs that had any. */
  clearPairs(ids: Set<number>): Map<number, number> {
    const n = new Map<number, number>();
    if (!ids.size) return n;
    for (const kb of this.map.keys()) {
      const id = decodeFlowKey(kb).id;
      if (!ids.has(id)) continue;
      if (this.map.delete(kb)) n.set(id, (n.get(id) ?? 0) + 1);
    }
    return n;
  }

  close(): void {
    this.pins.close();
  }
}

/** Runs fn on the pin root's flow map, closed afterwards. */
export function withFlows<T>(pinRoot: string, fn: (f: Flows) => T): T {
  const f = Flows.open(pinRoot);
  try {
    return fn(f);
  } finally {
    f.close();
  }
}

/** Writes the DP's decision for a flow: 'allow' (fast path, default) or 'deny', with optional timeouts. */
export function offloadFlow(pinRoot: string, flow: FlowSpec, opts: OffloadOptions = {}): OffloadResult {
  return withFlows(pinRoot, (f) => f.offload(flow, opts));
}

/** Removes a flow's entry; false if there was none. */
export function revokeFlow(pinRoot: string, flow: FlowSpec): boolean {
  return withFlows(pinRoot, (f) => f.revoke(flow));
}

/** Every offloaded flow (of one pair with { id }). */
export function listFlows(pinRoot: string, filter: { id?: number } = {}): FlowView[] {
  return withFlows(pinRoot, (f) => f.list(filter));
}

/**
 * Deletes every flow entry of a pair (pair del, mode switches). 0 when the
 * datapath has no flow map (loaded by a version without flow offload).
 */
export function clearPairFlows(pinRoot: string, id: number): number {
  return clearPairsFlows(pinRoot, new Set([id])).get(id) ?? 0;
}

/** clearPairFlows for many pairs, one walk over the flow map: how many entries each (pairs without any left out). */
export function clearPairsFlows(pinRoot: string, ids: Set<number>): Map<number, number> {
  if (!ids.size || !Flows.available(pinRoot)) return new Map();
  return withFlows(pinRoot, (f) => f.clearPairs(ids));
}
