/** NeuVector's tc rules decoded: filter lists, u32 keys and pedit keys per byte offset, each rule classified. */
import { TC_HANDLE, TC_PRIORITY } from '../attach';
import { NeuvError } from '../errors';
import { formatMac, isUcmac } from '../mac';
import { NV_PREF_BASE } from './nvtc';

/** NeuVector's prefs on vin/vex ingress: IPv4 unicast to/from the workload, and the catch-all. */
export const NV_PREF_IP = NV_PREF_BASE + 1;
export const NV_PREF_ALL = NV_PREF_BASE + 2;

// ================================================================ filters

/** One u32 key: a 32-bit word at `off` from the network header (negative: the MAC header). */
export interface U32Key {
  off: number;
  mask: number;
  value: number;
  /** Non-zero: the offset depends on the packet (nexthdr), not something NeuVector writes. */
  offmask: number;
}

export interface PeditKey {
  htype: string;
  off: number;
  cmd: string;
  val: number;
  /** Bits kept (pedit's mask is inverted: 0 bits are written). */
  mask: number;
}

export interface TcAction {
  order: number;
  kind: string;
  /** control_action.type: pipe, drop, ok, ... */
  control?: string;
  mirred?: { action: string; direction: string; dev: string };
  pedit?: PeditKey[];
}

/** One filter rule on an ingress hook, from `tc -json filter show dev X ingress`. */
export interface TcFilter {
  dev: string;
  pref: number;
  protocol: string;
  kind: string;
  chain: number;
  keys: U32Key[];
  actions: TcAction[];
  /** cls_bpf: its handle and program. */
  bpf?: { handle: number; progId: number; name: string };
}

function hex(v: unknown, what: string): number {
  if (typeof v === 'number') return v >>> 0;
  if (typeof v !== 'string' || !/^(0x)?[0-9a-fA-F]{1,8}$/.test(v)) throw new NeuvError(`tc's JSON: ${what} ${JSON.stringify(v)} is not a hex word`);
  return parseInt(v.replace(/^0x/, ''), 16) >>> 0;
}

type Json = Record<string, unknown>;

function parseActions(raw: unknown): TcAction[] {
  if (!Array.isArray(raw)) return [];
  const out: TcAction[] = [];
  for (const a of raw as Json[]) {
    const act: TcAction = { order: Number(a.order ?? out.length + 1), kind: String(a.kind ?? '') };
    const ctl = a.control_action as Json | undefined;
    if (ctl && typeof ctl.type === 'string') act.control = ctl.type;
    if (act.kind === 'mirred') {
      act.mirred = { action: String(a.mirred_action ?? ''), direction: String(a.direction ?? ''), dev: String(a.to_dev ?? '') };
    } else if (act.kind === 'pedit') {
      act.pedit = ((a.keys ?? []) as Json[]).map((k) => ({
        htype: String(k.htype ?? 'network'),
        off: Number(k.offset),
        cmd: String(k.cmd ?? 'set'),
        val: hex(k.val, 'pedit val'),
        mask: hex(k.mask, 'pedit mask'),
      }));
    }
    out.push(act);
  }
  return out.sort((x, y) => x.order - y.order);
}

/**
 * The rules in one device's `tc -json filter show dev X ingress` output:
 * u32 hash-table headers and per-pref headers (entries without a key or an
 * action) are left out; a u32 rule's keys come from every "match" object.
 */
export function parseFilterList(dev: string, raw: unknown): TcFilter[] {
  if (!Array.isArray(raw)) throw new NeuvError(`tc's JSON for ${dev}: expected an array`);
  const out: TcFilter[] = [];
  for (const f of raw as Json[]) {
    const o = f.options as Json | undefined;
    if (!o) continue;
    const base = {
      dev,
      pref: Number(f.pref),
      protocol: String(f.protocol ?? ''),
      kind: String(f.kind ?? ''),
      chain: Number(f.chain ?? 0),
    };
    if (base.kind === 'u32') {
      if (o.match === undefined && o.actions === undefined) continue; // hash table header
      const keys = ((o.match ?? []) as Json[]).map((m) => ({
        off: Number(m.off),
        mask: hex(m.mask, 'u32 mask'),
        value: hex(m.value, 'u32 value'),
        offmask: m.offmask ? hex(m.offmask, 'u32 offmask') : 0,
      }));
      out.push({ ...base, keys, actions: parseActions(o.actions) });
    } else if (base.kind === 'bpf') {
      const prog = (o.prog ?? {}) as Json;
      out.push({
        ...base,
        keys: [],
        actions: parseActions(o.actions),
        bpf: { handle: hex(o.handle ?? 0, 'bpf handle'), progId: Number(prog.id ?? 0), name: String(prog.name ?? o.bpf_name ?? '') },
      });
    } else {
      out.push({ ...base, keys: [], actions: parseActions(o.actions) });
    }
  }
  return out;
}

/** Our own tc filter (handle 0x4e56 at pref 1). */
export function isOurFilter(f: TcFilter): boolean {
  return f.kind === 'bpf' && f.pref === TC_PRIORITY && f.bpf?.handle === TC_HANDLE;
}

// ================================================================ decoding keys

/** Why a rule is not NeuVector's (or not a shape we can take over). */
export class RuleError extends Error {}
export function bad(why: string): never {
  throw new RuleError(why);
}

/** What a set of u32 keys matches, per byte offset from the network header. */
export type ByteMatch = Map<number, { mask: number; value: number }>;

export function matchBytes(keys: U32Key[]): ByteMatch {
  const m: ByteMatch = new Map();
  for (const k of keys) {
    if (k.offmask) bad(`a u32 key at a packet-dependent offset (offmask ${k.offmask.toString(16)})`);
    for (let b = 0; b < 4; b++) {
      const sh = 24 - 8 * b;
      const mask = (k.mask >>> sh) & 0xff;
      if (!mask) continue;
      const value = (k.value >>> sh) & 0xff;
      const cur = m.get(k.off + b) ?? { mask: 0, value: 0 };
      m.set(k.off + b, { mask: cur.mask | mask, value: (cur.value & ~mask) | (value & mask) });
    }
  }
  return m;
}

/** The 6 bytes at `at` when all of them are matched exactly, else undefined. */
export function macMatched(m: ByteMatch, at: number): Buffer | undefined {
  const out = Buffer.alloc(6);
  for (let b = 0; b < 6; b++) {
    const x = m.get(at + b);
    if (!x || x.mask !== 0xff) return undefined;
    out[b] = x.value;
  }
  return out;
}

/** Bytes a pedit action writes, per offset from the network header. */
export function peditWrites(a: TcAction): Map<number, number> {
  const w = new Map<number, number>();
  for (const k of a.pedit ?? []) {
    if (k.htype !== 'network' && k.htype !== '') bad(`a pedit key on the ${k.htype} header (NeuVector's are network-relative)`);
    if (k.cmd !== 'set') bad(`a pedit '${k.cmd}' key (NeuVector only sets)`);
    for (let b = 0; b < 4; b++) {
      const sh = 24 - 8 * b;
      const keep = (k.mask >>> sh) & 0xff;
      if (keep === 0xff) continue;
      if (keep !== 0) bad(`a pedit key writing part of a byte at ${k.off + b}`);
      w.set(k.off + b, (k.val >>> sh) & 0xff);
    }
  }
  return w;
}

/** The MAC a pedit action writes at `at` (DA -14, SA -8); it must write those 6 bytes and nothing else. */
function peditMac(a: TcAction, at: number, what: string): Buffer {
  const w = peditWrites(a);
  const out = Buffer.alloc(6);
  for (let b = 0; b < 6; b++) {
    const v = w.get(at + b);
    if (v === undefined) bad(`its pedit does not write the whole ${what}`);
    out[b] = v;
  }
  if (w.size !== 6) bad(`its pedit writes more than the ${what}`);
  return out;
}

export const DA = -14;
export const SA = -8;

function range(at: number, len: number): number[] {
  return Array.from({ length: len }, (_, b) => at + b);
}

function onlyBytes(m: ByteMatch, allowed: number[], what: string): void {
  const extra = [...m.keys()].filter((o) => !allowed.includes(o)).sort((a, b) => a - b);
  if (extra.length) bad(`${what} also matches the byte(s) at ${extra.join(', ')}`);
}

export function isMirror(a: TcAction | undefined, dev?: string): boolean {
  return a?.kind === 'mirred' && a.mirred?.action === 'mirror' && a.mirred.direction === 'egress' && (dev === undefined || a.mirred.dev === dev);
}

function describeAction(a: TcAction): string {
  if (a.mirred) return `mirred ${a.mirred.direction} ${a.mirred.action} to ${a.mirred.dev}`;
  return a.control && a.kind === 'gact' ? `gact ${a.control}` : a.kind;
}

/** vin/vex pref 10001: IPv4 unicast to (vex: DA) or from (vin: SA) the workload. */
export interface IpRule {
  mac: Buffer;
  /** TAP: a mirror to the other port comes first. */
  tap: boolean;
  /** The UCMAC the pedit writes; undefined when the rule has no pedit. */
  ucmac?: Buffer;
}

export function classifyIpRule(f: TcFilter, role: 'vin' | 'vex', peer: string, vbr: string): IpRule {
  const what = `${f.dev} pref ${f.pref}`;
  if (f.kind !== 'u32') bad(`${what} is a ${f.kind} filter, not u32`);
  if (f.protocol !== 'ip') bad(`${what} has protocol ${f.protocol}, not ip`);
  const m = matchBytes(f.keys);
  const at = role === 'vex' ? DA : SA;
  const field = role === 'vex' ? 'destination MAC' : 'source MAC';
  const mac = macMatched(m, at);
  if (!mac) bad(`${what} does not match a whole ${field}`);
  if (role === 'vin') {
    const u = m.get(DA);
    if (!u || (u.mask & 1) === 0 || (u.value & 1) !== 0 || u.mask !== 1) bad(`${what} lacks NeuVector's unicast check on the destination MAC`);
    onlyBytes(m, [DA, ...range(SA, 6)], what);
  } else {
    if (mac[0]! & 1) bad(`${what} matches a multicast destination MAC ${formatMac(mac)}`);
    onlyBytes(m, range(DA, 6), what);
  }
  const acts = f.actions;
  let k = 0;
  let tap = false;
  if (isMirror(acts[k], peer)) {
    tap = true;
    k++;
  }
  let ucmac: Buffer | undefined;
  if (acts[k]?.kind === 'pedit') {
    ucmac = peditMac(acts[k]!, at, field);
    if (!isUcmac(ucmac)) bad(`${what} rewrites the ${field} to ${formatMac(ucmac)}, not a UCMAC (4e:65:75:56:..)`);
    k++;
  }
  if (!isMirror(acts[k], vbr)) {
    bad(`${what}: expected${tap ? '' : ` [mirred to ${peer}]`} [pedit] mirred to ${vbr}, found ${acts.map(describeAction).join(', ') || 'no action'}`);
  }
  k++;
  if (k !== acts.length) bad(`${what} has more actions than NeuVector's: ${acts.slice(k).map(describeAction).join(', ')}`);
  return { mac, tap, ucmac };
}

/** vin/vex pref 10002: everything else, mirrored to the other port. */
export function classifyAllRule(f: TcFilter, peer: string): void {
  const what = `${f.dev} pref ${f.pref}`;
  if (f.kind !== 'u32') bad(`${what} is a ${f.kind} filter, not u32`);
  if (f.protocol !== 'all') bad(`${what} has protocol ${f.protocol}, not all`);
  const m = matchBytes(f.keys);
  if (m.size) bad(`${what} is not a catch-all (it matches bytes at ${[...m.keys()].join(', ')})`);
  if (f.actions.length !== 1 || !isMirror(f.actions[0], peer)) {
    bad(`${what}: expected mirred to ${peer}, found ${f.actions.map(describeAction).join(', ') || 'no action'}`);
  }
}

/** A vbr-neuv rule: frames from the DP for one UCMAC (as DA: to the workload; as SA: to the network). */
export interface VbrRule {
  pref: number;
  protocol: string;
  dir: 'da' | 'sa';
  ucmac: Buffer;
  /** FWD: the port it mirrors to; undefined for a drop rule. */
  target?: string;
  /** FWD with pedit: the MAC it restores. */
  restore?: Buffer;
  drop: boolean;
}

export function classifyVbrRule(f: TcFilter): VbrRule {
  const what = `${f.dev} pref ${f.pref}`;
  if (f.kind !== 'u32') bad(`${what} is a ${f.kind} filter, not NeuVector's u32`);
  const m = matchBytes(f.keys);
  const da = macMatched(m, DA);
  const sa = macMatched(m, SA);
  if ((da && sa) || (!da && !sa)) bad(`${what} does not match exactly one whole MAC (DA or SA)`);
  const dir = da ? 'da' : 'sa';
  const uc = (da ?? sa)!;
  onlyBytes(m, range(da ? DA : SA, 6), what);
  if (!isUcmac(uc)) bad(`${what} matches ${formatMac(uc)}, not a UCMAC (4e:65:75:56:..)`);
  const acts = f.actions;
  if (acts.length === 1 && acts[0]!.kind === 'gact' && acts[0]!.control === 'drop') {
    return { pref: f.pref, protocol: f.protocol, dir, ucmac: uc, drop: true };
  }
  let k = 0;
  let restore: Buffer | undefined;
  if (acts[k]?.kind === 'pedit') {
    restore = peditMac(acts[k]!, da ? DA : SA, da ? 'destination MAC' : 'source MAC');
    k++;
  }
  if (!isMirror(acts[k]) || k + 1 !== acts.length) {
    bad(`${what}: expected [pedit] mirred to a port, or drop; found ${acts.map(describeAction).join(', ') || 'no action'}`);
  }
  return { pref: f.pref, protocol: f.protocol, dir, ucmac: uc, target: acts[k]!.mirred!.dev, restore, drop: false };
}

