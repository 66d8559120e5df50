/**
 * Migration from NeuVector's tc pipe (GitHub issue 8): `discover`, `adopt`
 * and `handback`, on a node whose enforcer netns runs NeuVector's u32 rules
 * (DATAPATH.md sections 3, 4 and 7; the rules themselves: src/nvtc.ts).
 *
 * discover reads the enforcer netns (`ip -d -j link show`, `tc -j qdisc
 * show`, `tc -json filter show dev X ingress` for every port with an ingress
 * qdisc) and classifies what it finds: vin/vex pairs (by NeuVector's names
 * and by the ports their rules mirror to), the workload MAC and UCMAC each
 * rule encodes (decoded byte by byte from the u32 keys and pedit keys, never
 * from a command line), the mode the rules imply, the qdisc kinds, and what
 * it cannot classify. tc's JSON repeats the "match" key once per u32 key, and
 * merges keys into 32-bit words (the u8 unicast check and the u16 DA match at
 * -14 become one key at -16), so it is parsed with repeated keys kept and the
 * keys are decoded per byte offset.
 *
 * adopt takes every discovered pair over without a gap:
 *   1. (load the datapath if it is not loaded: vbr-neuv and its legacy
 *      ingress qdisc are kept, neuv_vbr runs ahead of NeuVector's vbr-neuv
 *      filters: tcx, or tc pref 1 on the ingress block);
 *   2. write every pair's map entries (stats, vex, vin, then ids: neuv_vbr
 *      never sees an id without its ports) before any hook:
 *      from then on neuv_vbr delivers the DP's frames of these UCMACs exactly
 *      as NeuVector's vbr-neuv rules did, while vin/vex still run NeuVector's
 *      rules;
 *   3. per pair: attach neuv_vin/neuv_vex (tc pref 1 on the existing ingress
 *      qdisc, ahead of prefs 10001/10002, or tcx): a frame meets either all of
 *      NeuVector's rules or our program, never both, and our program finds its
 *      entry from the first frame; verify (our program is the one attached
 *      and runs first, a probe frame through the pinned programs with the
 *      port's ifindex as ingress comes out as a redirect to the other port and
 *      is counted for the pair); then delete NeuVector's filters of the pair
 *      (vin/vex prefs 10001/10002, its two vbr-neuv prefs) and check none is
 *      left.
 * It stops at the first pair that fails. A failure before the filters are
 * deleted puts that pair back as it was (its hooks detached, the entries
 * written by this run removed, the same for the pairs after it): it stays on
 * NeuVector's rules. A failure while deleting them leaves the pair on
 * neuv-bpf (verified live) with the remaining NeuVector filters shadowed, and
 * says which.
 *
 * handback is the reverse, for a node being rolled back: it installs
 * NeuVector's rules for every pair (shadowed while our hooks run first), then
 * detaches neuv_vbr (NeuVector's vbr-neuv rules take over), then deletes each
 * pair (hooks first, then entries: NeuVector's vin/vex rules take over), and
 * removes the pins. vbr-neuv/vth-neuv stay (NeuVector's DP is bound to
 * vth-neuv). It refuses before any change where the kernel cannot install
 * what a pair needs: FWD needs act_pedit; a pair in bypass or drop has no
 * NeuVector equivalent; a port with a clsact qdisc cannot take NeuVector's
 * `parent ffff:` rules. TAP without act_pedit (the DP's copies carry the
 * workload MAC instead of the UCMAC, as with NeuVector on such a kernel) or
 * without act_gact (no vbr-neuv drop rules: the DP's frames for the pair then
 * die in the enforcer netns stack instead) is handed back with a warning.
 *
 * NEUV_BPF_FAIL_AT=adopt:<step>[:<vin>] (steps: ADOPT_STEPS) makes a step of
 * adopt fail on purpose (for one pair only when <vin> is given), for the tests.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MapFd, ProgFd, ifIndexToName, ifNameToIndex, testRun } from './bpf';
import { Pins } from './pins';
import { EntryStep, PairMaps, PairWrite, peerElsewhere, portEntries, removePairEntries, samePort, writePairEntries } from './pairs/entries';
import { Undo } from './undo';
import { AttachKind, TC_HANDLE, TC_PRIORITY, attachState, detach } from './attach';
import { ConflictError, ExitCode, NeuvError, NotFoundError, UsageError } from './errors';
import { features } from './features';
import {
  Dir,
  Mode,
  ModeValue,
  Role,
  Verdict,
  addStats,
  decodeId,
  decodePort,
  decodeU32Key,
  emptyStats,
  u32Key,
} from './layout';
import { LinkJson, VBR, linkShow, run } from './link';
import { BPF_FS_MAGIC, isLoaded, load, progPinPath } from './loader';
import { withLock } from './lock';
import { log } from './log';
import { formatMac, isUcmac, parseMac, ucmac as ucmacOf } from './mac';
import { NV_PREF_BASE, NvMode, NvPair, nvPairRules, nvPref } from './nvtc';
import { Datapath, PairView } from './pairs';

/** NeuVector's prefs on vin/vex ingress: IPv4 unicast to/from the workload, and the catch-all. */
export const NV_PREF_IP = NV_PREF_BASE + 1;
export const NV_PREF_ALL = NV_PREF_BASE + 2;

// ================================================================ tc's JSON

/** Keys `tc -json` repeats inside one object (one "match" per u32 key). */
const REPEATED_KEYS: ReadonlySet<string> = new Set(['match']);

/**
 * Parses a sequence of JSON values (`tc -json -batch` prints one per
 * command). Unlike JSON.parse it keeps repeated keys: a key in `repeated`
 * always comes back as an array of every value it had in its object (an
 * array value is spread into it, for an iproute2 that prints a real array);
 * any other repeated key keeps its last value, as JSON.parse does.
 */
export function parseJsonValues(text: string, repeated: ReadonlySet<string> = REPEATED_KEYS): unknown[] {
  let i = 0;
  const n = text.length;
  const fail = (what: string): never => {
    throw new NeuvError(`cannot parse tc's JSON output at offset ${i}: ${what}`);
  };
  const ws = (): void => {
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) break;
      i++;
    }
  };
  const str = (): string => {
    const start = i++;
    while (i < n) {
      const c = text.charCodeAt(i);
      if (c === 0x5c) i += 2;
      else if (c === 0x22) return JSON.parse(text.slice(start, ++i)) as string;
      else i++;
    }
    return fail('unterminated string');
  };
  const LITERAL = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
  const value = (): unknown => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o: Record<string, unknown> = {};
      ws();
      if (text[i] === '}') {
        i++;
        return o;
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const k = str();
        ws();
        if (text[i] !== ':') fail("expected ':'");
        i++;
        const v = value();
        if (k === '__proto__') {
          /* never a tc key; not assigned */
        } else if (repeated.has(k)) {
          const arr = (Array.isArray(o[k]) ? o[k] : []) as unknown[];
          if (Array.isArray(v)) arr.push(...(v as unknown[]));
          else arr.push(v);
          o[k] = arr;
        } else o[k] = v;
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === '}') {
          i++;
          return o;
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const a: unknown[] = [];
      ws();
      if (text[i] === ']') {
        i++;
        return a;
      }
      for (;;) {
        a.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        if (text[i] === ']') {
          i++;
          return a;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    LITERAL.lastIndex = i;
    const m = LITERAL.exec(text);
    if (!m) return fail(`unexpected ${c === undefined ? 'end of input' : JSON.stringify(c)}`);
    i += m[0].length;
    return JSON.parse(m[0]) as unknown;
  };
  const out: unknown[] = [];
  ws();
  while (i < n) {
    out.push(value());
    ws();
  }
  return out;
}

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
function bad(why: string): never {
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

const DA = -14;
const SA = -8;

function range(at: number, len: number): number[] {
  return Array.from({ length: len }, (_, b) => at + b);
}

function onlyBytes(m: ByteMatch, allowed: number[], what: string): void {
  const extra = [...m.keys()].filter((o) => !allowed.includes(o)).sort((a, b) => a - b);
  if (extra.length) bad(`${what} also matches the byte(s) at ${extra.join(', ')}`);
}

function isMirror(a: TcAction | undefined, dev?: string): boolean {
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

// ================================================================ discovery

export type QdiscKind = 'ingress' | 'clsact' | 'none';

export interface QdiscJson {
  kind: string;
  dev: string;
  handle?: string;
  parent?: string;
}

/** What discover reads from the kernel (pure input of classifyNode, so it can be unit tested). */
export interface NodeSnapshot {
  links: LinkJson[];
  qdiscs: QdiscJson[];
  /** Ingress filters per device name (devices with an ingress or clsact qdisc). */
  filters: Record<string, TcFilter[]>;
  /** How our programs are attached, per ifindex (from the pin root: tcx link pins, our tc filter). */
  ours: Record<number, AttachKind>;
}

/** A NeuVector filter, as `tc filter del` needs it. */
export interface NvFilterRef {
  dev: string;
  pref: number;
  protocol: string;
}

export interface DiscoveredPair {
  in: string;
  ex: string;
  vinIfindex: number;
  vexIfindex: number;
  /** The workload MAC M (matched by the vex DA and vin SA rules). */
  mac: string;
  ucmac: string;
  /** The port id the UCMAC carries. */
  id: number;
  /** Where the UCMAC came from: the pedit of the vin/vex rules, the vbr-neuv match, or NeuVector's derivation (vex ifindex). */
  ucmacFrom: 'pedit' | 'vbr-neuv' | 'derived';
  mode: NvMode;
  /** The vin/vex rules rewrite to the UCMAC (false: classified by the mirred structure only). */
  pedit: boolean;
  /** What the pair has on vbr-neuv: forwarding rules (FWD), drop rules (TAP), or none. */
  vbrRules: 'mirred' | 'drop' | 'none';
  /** Prefs of its vbr-neuv rules: DA == UCMAC (NeuVector: the exPort's pref) and SA == UCMAC (the inPort's). */
  vbrPrefs: { da: number | null; sa: number | null };
  qdisc: { vin: QdiscKind; vex: QdiscKind };
  /** NeuVector's filters of the pair (what adopt deletes). */
  filters: NvFilterRef[];
  /** Our hooks already on the ports (an interrupted adopt). */
  ours: { vin: AttachKind | 'none'; vex: AttachKind | 'none' };
  notes: string[];
}

export interface Unclassified {
  /** A device, "dev pref N", or "vin/vex". */
  what: string;
  why: string;
}

export interface Discovery {
  vbr: { present: boolean; ifindex: number | null; mtu: number | null; qdisc: QdiscKind; nvRules: number; ours: AttachKind | 'none' };
  pairs: DiscoveredPair[];
  unclassified: Unclassified[];
  /** What this kernel's tc can install (filled by discover(); handback needs it). */
  kernel?: { release: string; actPedit: boolean; actGact: boolean };
}

function qdiscKind(qdiscs: QdiscJson[], dev: string): QdiscKind {
  for (const q of qdiscs) if (q.dev === dev && (q.kind === 'ingress' || q.kind === 'clsact')) return q.kind;
  return 'none';
}

/** Pure: classifies a snapshot of the enforcer netns. */
export function classifyNode(s: NodeSnapshot, vbr = VBR): Discovery {
  const byName = new Map(s.links.map((l) => [l.ifname, l]));
  const filtersOf = (dev: string) => s.filters[dev] ?? [];
  const unclassified: Unclassified[] = [];
  const pairs: DiscoveredPair[] = [];

  // vbr-neuv: every rule but ours, classified.
  const vbrLink = byName.get(vbr);
  const vbrRules: VbrRule[] = [];
  let vbrNv = 0;
  for (const f of filtersOf(vbr)) {
    if (isOurFilter(f)) continue;
    vbrNv++;
    try {
      vbrRules.push(classifyVbrRule(f));
    } catch (e) {
      if (!(e instanceof RuleError)) throw e;
      unclassified.push({ what: `${vbr} pref ${f.pref}`, why: e.message });
    }
  }
  const usedVbr = new Set<VbrRule>();

  const claimed = new Set<string>();
  const nvPrefs = [NV_PREF_IP, NV_PREF_ALL];
  // Pairs by NeuVector's names (vin<tag>-<port> / vex<tag>-<port>)...
  const candidates: Array<{ vin: LinkJson; vex: LinkJson; byRules?: true }> = [];
  const named = new Set<string>();
  for (const l of s.links) {
    const m = /^vin(.+)$/.exec(l.ifname);
    const ex = m ? byName.get(`vex${m[1]}`) : undefined;
    if (ex) {
      candidates.push({ vin: l, vex: ex });
      named.add(l.ifname).add(ex.ifname);
    }
  }
  // ...and by their rules, for ports named otherwise: each one's catch-all mirrors to the
  // other, and the port whose pref 10001 matches a destination MAC is the vex.
  const catchAllPeer = (dev: string): string | undefined => {
    const fs = filtersOf(dev).filter((f) => f.pref === NV_PREF_ALL && f.kind === 'u32');
    const a = fs.length === 1 ? fs[0]!.actions : [];
    return a.length === 1 && isMirror(a[0]) ? a[0]!.mirred!.dev : undefined;
  };
  const matchesDa = (dev: string): boolean => {
    const f = filtersOf(dev).find((x) => x.pref === NV_PREF_IP && x.kind === 'u32');
    try {
      return f !== undefined && macMatched(matchBytes(f.keys), DA) !== undefined;
    } catch {
      return false;
    }
  };
  for (const dev of Object.keys(s.filters)) {
    if (named.has(dev) || dev === vbr) continue;
    const peer = catchAllPeer(dev);
    if (!peer || named.has(peer) || catchAllPeer(peer) !== dev || !byName.has(dev) || !byName.has(peer)) continue;
    if (!matchesDa(dev) || matchesDa(peer)) continue; // seen from the vex side only, once
    candidates.push({ vin: byName.get(peer)!, vex: byName.get(dev)!, byRules: true });
  }
  const ourKind = (l: LinkJson): AttachKind | 'none' =>
    s.ours[l.ifindex] ?? (filtersOf(l.ifname).some(isOurFilter) ? 'tc' : 'none');

  for (const { vin, vex, byRules } of candidates) {
    const at = (l: LinkJson, pref: number) => filtersOf(l.ifname).filter((f) => f.pref === pref);
    const nv = [vin, vex].flatMap((l) => nvPrefs.flatMap((p) => at(l, p)));
    if (nv.length === 0) continue; // no NeuVector rules: not its state (or adopted already)
    claimed.add(vin.ifname);
    claimed.add(vex.ifname);
    const label = `${vin.ifname}/${vex.ifname}`;
    try {
      const one = (l: LinkJson, pref: number): TcFilter => {
        const fs = at(l, pref);
        if (fs.length === 0) bad(`incomplete: no rule at pref ${pref} on ${l.ifname} (NeuVector was interrupted, or is resetting the pair)`);
        if (fs.length > 1) bad(`${fs.length} filters at pref ${pref} on ${l.ifname} (NeuVector installs one)`);
        return fs[0]!;
      };
      const vinIp = one(vin, NV_PREF_IP);
      const vexIp = one(vex, NV_PREF_IP);
      const vinAll = one(vin, NV_PREF_ALL);
      const vexAll = one(vex, NV_PREF_ALL);
      for (const l of [vin, vex]) {
        if (l.linkinfo?.info_kind !== 'veth') bad(`${l.ifname} is not a veth`);
      }
      const rin = classifyIpRule(vinIp, 'vin', vex.ifname, vbr);
      const rex = classifyIpRule(vexIp, 'vex', vin.ifname, vbr);
      classifyAllRule(vinAll, vex.ifname);
      classifyAllRule(vexAll, vin.ifname);
      if (!rin.mac.equals(rex.mac)) bad(`the vin rule matches SA ${formatMac(rin.mac)}, the vex rule DA ${formatMac(rex.mac)}: not one workload`);
      if (rin.tap !== rex.tap) bad(`the ${rin.tap ? 'vin' : 'vex'} rule is TAP-shaped, the other FWD-shaped (a mode switch in progress?)`);
      if (!!rin.ucmac !== !!rex.ucmac) bad(`only the ${rin.ucmac ? 'vin' : 'vex'} rule has a pedit`);
      if (rin.ucmac && rex.ucmac && !rin.ucmac.equals(rex.ucmac)) {
        bad(`the vin rule rewrites to ${formatMac(rin.ucmac)}, the vex rule to ${formatMac(rex.ucmac)}`);
      }
      const mode: NvMode = rin.tap ? 'tap' : 'fwd';
      const pedit = !!rin.ucmac;
      const notes: string[] = [];
      const derived = ucmacOf(vex.ifindex & 0xffff);

      // The UCMAC: the pedit's, else the vbr-neuv rules that send to these ports, else NeuVector's derivation.
      const byTarget = vbrRules.filter((r) => !usedVbr.has(r) && ((r.dir === 'da' && r.target === vin.ifname) || (r.dir === 'sa' && r.target === vex.ifname)));
      let uc: Buffer;
      let ucmacFrom: DiscoveredPair['ucmacFrom'];
      if (rin.ucmac) {
        uc = rin.ucmac;
        ucmacFrom = 'pedit';
      } else if (byTarget.length) {
        uc = byTarget[0]!.ucmac;
        ucmacFrom = 'vbr-neuv';
      } else {
        uc = derived;
        ucmacFrom = 'derived';
      }
      for (const r of byTarget) {
        if (!r.ucmac.equals(uc)) bad(`${vbr} pref ${r.pref} sends ${formatMac(r.ucmac)} to ${r.target}, but the pair's UCMAC is ${formatMac(uc)}`);
      }
      const mine = vbrRules.filter((r) => !usedVbr.has(r) && r.ucmac.equals(uc));
      for (const r of mine) {
        const want = r.dir === 'da' ? vin.ifname : vex.ifname;
        if (r.target && r.target !== want) bad(`${vbr} pref ${r.pref} sends the frames of UCMAC ${formatMac(uc)} to ${r.target}, not to ${want}`);
        if (r.restore && !r.restore.equals(rin.mac)) bad(`${vbr} pref ${r.pref} restores ${formatMac(r.restore)}, not the workload MAC ${formatMac(rin.mac)}`);
      }
      for (const d of ['da', 'sa'] as const) {
        const rs = mine.filter((r) => r.dir === d);
        if (rs.length > 1) bad(`${rs.length} ${vbr} rules match UCMAC ${formatMac(uc)} as ${d.toUpperCase()} (prefs ${rs.map((r) => r.pref).join(', ')})`);
      }
      let vbrKind: DiscoveredPair['vbrRules'] = 'none';
      if (mine.length) {
        const drops = mine.filter((r) => r.drop).length;
        if (drops && drops !== mine.length) bad(`its ${vbr} rules mix drop and forward`);
        vbrKind = drops ? 'drop' : 'mirred';
        if (mode === 'fwd' && vbrKind === 'drop') bad(`its vin/vex rules are FWD but ${vbr} drops its frames as in TAP (a mode switch in progress?)`);
        if (mode === 'tap' && vbrKind === 'mirred') bad(`its vin/vex rules are TAP but ${vbr} forwards its frames as in FWD (a mode switch in progress?)`);
        if (mine.length < 2) notes.push(`only one ${vbr} rule (pref ${mine[0]!.pref}, ${mine[0]!.dir.toUpperCase()}) for this pair`);
        if (vbrKind === 'mirred' && mine.some((r) => !!r.restore !== pedit)) {
          notes.push(`the ${vbr} rules ${pedit ? 'lack' : 'have'} the pedit the vin/vex rules ${pedit ? 'have' : 'lack'}`);
        }
      }
      if (!pedit) {
        notes.push(
          `no pedit in NeuVector's rules (kernel without act_pedit?): the mode is told by the mirred structure (${mode === 'tap' ? 'a mirror to the other port and one to vbr-neuv: TAP' : 'a mirror to vbr-neuv only: FWD'})` +
            (ucmacFrom === 'vbr-neuv' ? `; the UCMAC is the one the ${vbr} rules match` : ucmacFrom === 'derived' ? `; no rule carries the UCMAC: derived from ${vex.ifname}'s ifindex ${vex.ifindex}, as NeuVector does` : ''),
        );
      }
      if (mode === 'fwd' && !pedit) {
        notes.push("FWD without pedit does not forward: the DP gets the workload's IPv4 unicast with the workload MAC instead of the UCMAC and returns nothing for it; adopt restores forwarding");
      }
      if (mode === 'fwd' && vbrKind === 'none') notes.push(`no ${vbr} rules: what the DP sends back for this pair is not delivered by NeuVector`);
      if (mode === 'tap' && vbrKind === 'none') notes.push(`no ${vbr} drop rules (kernel without act_gact?): frames the DP writes back for this pair die in the enforcer netns stack`);
      const id = (uc[4]! << 8) | uc[5]!;
      if (id !== (vex.ifindex & 0xffff)) notes.push(`the UCMAC's id ${id} is not NeuVector's derivation from ${vex.ifindex} (${vex.ifname}'s ifindex & 0xffff = ${vex.ifindex & 0xffff})`);
      for (const l of [vin, vex]) {
        if (l.link_netnsid === undefined) notes.push(`${l.ifname}'s veth peer is in this netns, not in a container or the host`);
        const others = filtersOf(l.ifname).filter((f) => !nvPrefs.includes(f.pref) && !isOurFilter(f));
        if (others.length) notes.push(`${l.ifname} has other filters, left alone: ${[...new Set(others.map((f) => `pref ${f.pref} ${f.kind}`))].join(', ')}`);
      }
      if (byRules) notes.push(`names do not follow NeuVector's vin<tag>/vex<tag> pattern: paired by their rules (each one's catch-all mirrors to the other)`);
      const ours = { vin: ourKind(vin), vex: ourKind(vex) };
      if (ours.vin !== 'none' || ours.vex !== 'none') notes.push('neuv-bpf hooks are attached already (an interrupted adopt?): adopt completes it');
      const qdisc = { vin: qdiscKind(s.qdiscs, vin.ifname), vex: qdiscKind(s.qdiscs, vex.ifname) };
      for (const r of mine) usedVbr.add(r);
      pairs.push({
        in: vin.ifname,
        ex: vex.ifname,
        vinIfindex: vin.ifindex,
        vexIfindex: vex.ifindex,
        mac: formatMac(rin.mac),
        ucmac: formatMac(uc),
        id,
        ucmacFrom,
        mode,
        pedit,
        vbrRules: vbrKind,
        vbrPrefs: { da: mine.find((r) => r.dir === 'da')?.pref ?? null, sa: mine.find((r) => r.dir === 'sa')?.pref ?? null },
        qdisc,
        filters: [
          { dev: vex.ifname, pref: NV_PREF_IP, protocol: vexIp.protocol },
          { dev: vex.ifname, pref: NV_PREF_ALL, protocol: vexAll.protocol },
          { dev: vin.ifname, pref: NV_PREF_IP, protocol: vinIp.protocol },
          { dev: vin.ifname, pref: NV_PREF_ALL, protocol: vinAll.protocol },
          ...mine.sort((a, b) => (a.dir === b.dir ? 0 : a.dir === 'da' ? -1 : 1)).map((r) => ({ dev: vbr, pref: r.pref, protocol: r.protocol })),
        ],
        ours,
        notes,
      });
    } catch (e) {
      if (!(e instanceof RuleError)) throw e;
      unclassified.push({ what: label, why: e.message });
    }
  }

  // Two pairs with one UCMAC: NeuVector itself cannot tell their frames apart.
  const byId = new Map<number, DiscoveredPair>();
  for (const p of [...pairs]) {
    const o = byId.get(p.id);
    if (!o) {
      byId.set(p.id, p);
      continue;
    }
    pairs.splice(pairs.indexOf(p), 1);
    unclassified.push({ what: `${p.in}/${p.ex}`, why: `its UCMAC ${p.ucmac} is also ${o.in}/${o.ex}'s (vex ifindexes 65536 apart): neither NeuVector nor the DP can tell their frames apart` });
  }

  // NeuVector-like rules left over: on ports that are not half of a pair, and vbr-neuv rules of no pair.
  for (const [dev, fs] of Object.entries(s.filters)) {
    if (dev === vbr || claimed.has(dev)) continue;
    for (const f of fs) {
      if (f.kind === 'u32' && nvPrefs.includes(f.pref)) {
        unclassified.push({ what: `${dev} pref ${f.pref}`, why: `a u32 filter at NeuVector's pref on a port that is not half of a vin<tag>/vex<tag> pair` });
      }
    }
  }
  for (const r of vbrRules) {
    if (usedVbr.has(r)) continue;
    unclassified.push({
      what: `${vbr} pref ${r.pref}`,
      why: `${r.drop ? 'drops' : `sends to ${r.target}`} the frames of UCMAC ${formatMac(r.ucmac)} (as ${r.dir.toUpperCase()}), which belongs to no pair discover could classify`,
    });
  }

  return {
    vbr: {
      present: vbrLink !== undefined,
      ifindex: vbrLink?.ifindex ?? null,
      mtu: vbrLink?.mtu ?? null,
      qdisc: qdiscKind(s.qdiscs, vbr),
      nvRules: vbrNv,
      ours: vbrLink ? (s.ours[vbrLink.ifindex] ?? (filtersOf(vbr).some(isOurFilter) ? 'tc' : 'none')) : 'none',
    },
    pairs,
    unclassified,
  };
}

// ================================================================ reading the kernel

/** A device name that cannot confuse a `tc -batch` line (whitespace, quotes, comments). */
function batchSafe(dev: string): boolean {
  return /^[A-Za-z0-9_.@+=-]{1,15}$/.test(dev);
}

/** Ingress filters of the named devices: one `tc -json -batch`, else one `tc` per device. */
export async function readFilters(devs: string[]): Promise<Record<string, TcFilter[]>> {
  const out: Record<string, TcFilter[]> = {};
  if (devs.length === 0) return out;
  const batch = devs.every(batchSafe)
    ? await run('tc', ['-json', '-batch', '-'], { input: devs.map((d) => `filter show dev ${d} ingress\n`).join(''), allowFail: true })
    : { code: 1, stdout: '' };
  if (batch.code === 0) {
    const vals = parseJsonValues(batch.stdout);
    if (vals.length === devs.length) {
      devs.forEach((d, k) => (out[d] = parseFilterList(d, vals[k])));
      return out;
    }
  }
  // A device went away mid-way (or an old tc): one call per device, a vanished one has no filters.
  for (const d of devs) {
    const r = await run('tc', ['-json', 'filter', 'show', 'dev', d, 'ingress'], { allowFail: true });
    out[d] = r.code === 0 ? parseFilterList(d, parseJsonValues(r.stdout)[0] ?? []) : [];
  }
  return out;
}

export async function readQdiscs(): Promise<QdiscJson[]> {
  const r = await run('tc', ['-json', 'qdisc', 'show']);
  return (parseJsonValues(r.stdout)[0] ?? []) as QdiscJson[];
}

/** Reads the current netns (the CLI enters --netns first). */
export async function snapshot(pinRoot: string): Promise<NodeSnapshot> {
  const links = await linkShow();
  const qdiscs = await readQdiscs();
  const devs = [...new Set(qdiscs.filter((q) => q.kind === 'ingress' || q.kind === 'clsact').map((q) => q.dev))].filter((d) => links.some((l) => l.ifname === d));
  const filters = await readFilters(devs);
  const ours: Record<number, AttachKind> = {};
  for (const l of links) {
    const st = attachState(pinRoot, l.ifindex);
    if (st.kind !== 'none' && !st.defunct) ours[l.ifindex] = st.kind;
  }
  return { links, qdiscs, filters, ours };
}

/** discover: NeuVector's interception state in the current netns. */
export async function discover(pinRoot: string, opts: { kernel?: boolean } = {}): Promise<Discovery> {
  const d = classifyNode(await snapshot(pinRoot));
  if (opts.kernel !== false) {
    const a = await tcActions();
    d.kernel = { release: features().kernel, actPedit: a.pedit, actGact: a.gact };
  }
  log('migrate').debug({ pairs: d.pairs.length, unclassified: d.unclassified.length }, 'discovered');
  return d;
}

// ================================================================ tc actions this kernel has

export interface TcActions {
  /** act_pedit: NeuVector's rewrite to/from the UCMAC. */
  pedit: boolean;
  /** act_gact: NeuVector's `action drop` (TAP's vbr-neuv rules). */
  gact: boolean;
}

let actionsCache: TcActions | undefined;

/** Tries to create the action in a throwaway netns (`unshare --net`), so no real netns is touched. */
async function tryAction(args: string[]): Promise<boolean | undefined> {
  try {
    const r = await run('unshare', ['--net', 'tc', 'actions', 'add', 'action', ...args], { allowFail: true });
    return r.code === 0;
  } catch {
    return undefined; // no unshare
  }
}

function moduleKnown(name: string): boolean {
  if (fs.existsSync(`/sys/module/${name}`)) return true;
  const rel = features().kernel;
  for (const f of [`/lib/modules/${rel}/modules.builtin`, `/lib/modules/${rel}/modules.dep`]) {
    try {
      if (new RegExp(`\\b${name}\\.ko`).test(fs.readFileSync(f, 'utf8'))) return true;
    } catch {
      /* no module tree */
    }
  }
  return false;
}

/** Which of NeuVector's tc actions this kernel can load (pedit also honours NEUV_BPF_FEATURES=act_pedit=0). */
export async function tcActions(): Promise<TcActions> {
  if (actionsCache) return actionsCache;
  const pedit = features().actPedit && ((await tryAction(['pedit', 'munge', 'offset', '0', 'u8', 'set', '0'])) ?? moduleKnown('act_pedit'));
  const gact = (await tryAction(['gact', 'drop'])) ?? moduleKnown('act_gact');
  actionsCache = { pedit, gact };
  log('migrate').debug(actionsCache, 'tc actions');
  return actionsCache;
}

// ================================================================ adopt

export const ADOPT_STEPS = ['seed', 'attach', 'verify', 'remove'] as const;
export type AdoptStep = (typeof ADOPT_STEPS)[number];

function failpoint(step: AdoptStep, vin: string): void {
  const want = process.env.NEUV_BPF_FAIL_AT;
  if (!want) return;
  if (want === `adopt:${step}` || want === `adopt:${step}:${vin}`) {
    throw new NeuvError(`injected failure at adopt step '${step}' of ${vin} (NEUV_BPF_FAIL_AT)`);
  }
}

export interface AdoptOptions {
  pinRoot: string;
  dryRun?: boolean;
  /** A `discover --json` output: adopt only its pairs, each still as it describes (else refused before any change). */
  from?: Discovery;
}

export interface AdoptPlanPair {
  pair: DiscoveredPair;
  /** Human-readable steps. */
  steps: string[];
}

export interface AdoptedPair {
  in: string;
  ex: string;
  id: number;
  ucmac: string;
  mac: string;
  mode: NvMode;
  attach: { vin: AttachKind; vex: AttachKind };
  /** What the probe frame through each pinned program returned (7 = TC_ACT_REDIRECT). */
  probe: { vin: number; vex: number };
  /** NeuVector's filters deleted, as "dev pref N". */
  removed: string[];
  ms: number;
}

export interface AdoptResult {
  dryRun: boolean;
  /** The datapath was not loaded: adopt loaded it (or, with --dry-run, would). */
  load: boolean;
  jumbo: boolean;
  plan: AdoptPlanPair[];
  adopted: AdoptedPair[];
  /** Pairs discover could not classify (left on NeuVector's rules). */
  skipped: Unclassified[];
  /** The pair adopt stopped at. */
  failed?: { in: string; ex: string; step: AdoptStep; error: string; state: string };
  warnings: string[];
}

/** Picks the pairs of a discover --json output out of a fresh discovery; anything stale is refused. */
export function selectPlanned(fresh: Discovery, from: Discovery): DiscoveredPair[] {
  if (!from || !Array.isArray(from.pairs)) throw new UsageError('the plan is not a discover --json output (no "pairs" array)');
  const out: DiscoveredPair[] = [];
  for (const want of from.pairs) {
    const got = fresh.pairs.find((p) => p.in === want.in && p.ex === want.ex);
    if (!got) throw new NotFoundError(`the plan's pair ${want.in}/${want.ex} is not (or no longer) NeuVector's here: run discover again`);
    const differ: string[] = [];
    for (const k of ['mac', 'ucmac', 'id', 'mode', 'vinIfindex', 'vexIfindex'] as const) {
      if (want[k] !== got[k]) differ.push(`${k} ${JSON.stringify(got[k])}, the plan says ${JSON.stringify(want[k])}`);
    }
    if (differ.length) throw new ConflictError(`the plan is stale for ${want.in}/${want.ex}: now ${differ.join('; ')}`);
    out.push(got);
  }
  return out;
}

function planSteps(p: DiscoveredPair, attachKind: string): string[] {
  const nv = p.filters.map((f) => `${f.dev} pref ${f.pref}`);
  return [
    `write the map entries (id ${p.id}, ${p.ucmac}, MAC ${p.mac}, ${p.mode})`,
    `attach neuv_vin to ${p.in} and neuv_vex to ${p.ex} (${attachKind}), ahead of NeuVector's rules`,
    'probe both programs (BPF_PROG_TEST_RUN) and check the hooks run first',
    `delete NeuVector's filters: ${nv.join(', ')}`,
  ];
}

export interface Seeded {
  pair: DiscoveredPair;
  /** The entries this run created (removed again when the pair is rolled back). */
  created: EntryStep[];
}

/** The pinned maps adopt writes (exported with seed/unseed for the seed-order race test). */
export function openMaps(pinRoot: string): Pins {
  return Pins.open(pinRoot, ['ports', 'ids', 'stats']);
}

const MODE_OF: Record<NvMode, ModeValue> = { fwd: Mode.FWD, tap: Mode.TAP };

/** The entries a pair gets: exactly what `pair add` writes for these ports (src/pairs/entries.ts). */
function wantedEntries(p: DiscoveredPair, links: Map<string, LinkJson>): PairWrite {
  const link = (name: string, ifindex: number) => ({ ifindex, peerElsewhere: peerElsewhere(links.get(name)) });
  const e = portEntries({ id: p.id, vin: link(p.in, p.vinIfindex), vex: link(p.ex, p.vexIfindex), mode: MODE_OF[p.mode], mac: parseMac(p.mac), ipv6ToDp: false });
  return { id: p.id, vinIfindex: p.vinIfindex, vexIfindex: p.vexIfindex, ...e };
}

/** Refuses (before any change) pairs whose ids or ports our maps already give to something else. */
function checkMaps(m: PairMaps, pairs: DiscoveredPair[], links: Map<string, LinkJson>): void {
  const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
  for (const [k, v] of m.ids.entries()) ids.set(decodeU32Key(k), decodeId(v));
  for (const p of pairs) {
    const e = ids.get(p.id);
    if (e && (e.vinIfindex !== p.vinIfindex || e.vexIfindex !== p.vexIfindex)) {
      const nm = (i: number) => ifIndexToName(i) ?? `ifindex ${i}`;
      throw new ConflictError(`${p.in}/${p.ex}: its id ${p.id} (${p.ucmac}) is already neuv-bpf's pair ${nm(e.vinIfindex)}/${nm(e.vexIfindex)}`);
    }
    const want = wantedEntries(p, links);
    for (const [role, ifindex] of [['vin', p.vinIfindex], ['vex', p.vexIfindex]] as const) {
      const v = m.ports.lookup(u32Key(ifindex));
      // Flags may differ: an interrupted adopt keeps what it wrote.
      if (v && !samePort(decodePort(v), want[role])) {
        const cur = decodePort(v);
        throw new ConflictError(`${role === 'vin' ? p.in : p.ex} is already in neuv-bpf's pair id ${cur.id} (${cur.role === Role.VIN ? 'vin' : 'vex'}, mode ${cur.mode}): not what NeuVector's rules say (id ${p.id}, ${p.mode})`);
      }
    }
  }
}

/**
 * Writes the pair's entries that are missing (writePairEntries: stats, vex,
 * vin, then the id); returns what it created. neuv_vbr may already be
 * delivering the DP's frames (ours runs ahead of NeuVector's vbr-neuv
 * rules): until the id is there it passes the pair's frames on to
 * NeuVector's rules, afterwards it finds everything. The ports alone change
 * nothing: no hook of ours runs on vin/vex yet.
 */
export function seed(m: PairMaps, p: DiscoveredPair, links: Map<string, LinkJson>): Seeded {
  const undo = new Undo('migrate');
  try {
    const idKey = u32Key(p.id);
    const port = (ifindex: number) => {
      const v = m.ports.lookup(u32Key(ifindex));
      return v ? decodePort(v) : undefined;
    };
    const present = { stats: m.stats.lookup(idKey) !== undefined, ids: m.ids.lookup(idKey) !== undefined, vin: port(p.vinIfindex), vex: port(p.vexIfindex) };
    return { pair: p, created: writePairEntries(m, wantedEntries(p, links), { present, undo }) };
  } catch (e) {
    undo.runSync();
    throw e;
  }
}

/** Removes what seed() created (removePairEntries: the id, an RCU grace period, the ports, the counters). */
export function unseed(m: PairMaps, s: Seeded): void {
  const p = s.pair;
  const ports = (['vex', 'vin'] as const).filter((r) => s.created.includes(r)).map((r) => ({ ifindex: r === 'vin' ? p.vinIfindex : p.vexIfindex }));
  removePairEntries(m, { id: p.id, ids: s.created.includes('ids'), ports, stats: s.created.includes('stats') }, { bestEffort: true });
  s.created = [];
}

const SKB_CTX_SIZE = 192; // sizeof(struct __sk_buff) on 6.x; a longer ctx must have a zero tail, a shorter one is zero-filled
const SKB_CTX_IFINDEX = 40; // offsetof(struct __sk_buff, ifindex)
const TC_ACT_REDIRECT = 7;
const PROBE_ETHERTYPE = 0x88b5; // IEEE 802 local experimental: not IP, so never a copy to the DP
const PROBE_PEER_MAC = Buffer.from([0x02, 0x4e, 0x56, 0x00, 0x00, 0x01]);

/** A non-IP frame from (vin) or to (vex) the workload: the datapath sends it to the other port unchanged in every mode. */
export function probeFrame(role: 'vin' | 'vex', mac: Buffer): Buffer {
  const f = Buffer.alloc(60);
  (role === 'vex' ? mac : PROBE_PEER_MAC).copy(f, 0);
  (role === 'vex' ? PROBE_PEER_MAC : mac).copy(f, 6);
  f.writeUInt16BE(PROBE_ETHERTYPE, 12);
  f.write('neuv-bpf adopt probe', 14, 'ascii');
  return f;
}

function toPeerPackets(stats: MapFd, id: number): [bigint, bigint] {
  const v = stats.lookup(u32Key(id));
  if (!v) return [0n, 0n];
  const s = emptyStats();
  for (const c of stats.perCpuValues(v)) addStats(s, c);
  return [s[Dir.TO_WL]![Verdict.TO_PEER]!.packets, s[Dir.FROM_WL]![Verdict.TO_PEER]!.packets];
}

/**
 * Checks a pair is live on neuv-bpf: the map entries are the ones wanted,
 * the hooks run the pinned programs and (tc) sit ahead of every other filter,
 * and a probe frame through each pinned program, with the port's ifindex as
 * ingress, is redirected unchanged and counted for the pair.
 */
async function verifyPair(pinRoot: string, m: PairMaps, p: DiscoveredPair, links: Map<string, LinkJson>): Promise<{ attach: AdoptedPair['attach']; probe: AdoptedPair['probe'] }> {
  const want = wantedEntries(p, links);
  for (const [role, ifindex] of [['vin', p.vinIfindex], ['vex', p.vexIfindex]] as const) {
    const v = m.ports.lookup(u32Key(ifindex));
    if (!v || !samePort(decodePort(v), want[role])) throw new NeuvError(`the ${role} entry of ${p.in}/${p.ex} is not the one written`);
  }
  const ids = m.ids.lookup(u32Key(p.id));
  const e = ids ? decodeId(ids) : undefined;
  if (!e || e.vinIfindex !== p.vinIfindex || e.vexIfindex !== p.vexIfindex) throw new NeuvError(`the ids entry of id ${p.id} does not name ${p.in}/${p.ex}`);

  const attachKinds = {} as AdoptedPair['attach'];
  const probe = {} as AdoptedPair['probe'];
  const before = toPeerPackets(m.stats, p.id);
  const tcDevs: string[] = [];
  for (const role of ['vin', 'vex'] as const) {
    const dev = role === 'vin' ? p.in : p.ex;
    const ifindex = role === 'vin' ? p.vinIfindex : p.vexIfindex;
    const prog = ProgFd.fromPin(progPinPath(pinRoot, role));
    try {
      const pinned = prog.info().id;
      const st = attachState(pinRoot, ifindex);
      if (st.kind === 'none' || st.defunct || st.progId !== pinned) {
        throw new NeuvError(`${dev} ingress runs ${st.kind === 'none' ? 'no program of ours' : `program id ${st.progId}`}, not the pinned neuv_${role} (id ${pinned})`);
      }
      attachKinds[role] = st.kind;
      if (st.kind === 'tc') tcDevs.push(dev);
      const ctx = Buffer.alloc(SKB_CTX_SIZE);
      ctx.writeUInt32LE(ifindex, SKB_CTX_IFINDEX);
      const frame = probeFrame(role, parseMac(p.mac));
      const r = testRun(prog.fd, frame, { ctxIn: ctx });
      probe[role] = r.retval;
      if (r.retval !== TC_ACT_REDIRECT) {
        throw new NeuvError(`the probe frame through neuv_${role} with ${dev} as ingress returned ${r.retval}, not ${TC_ACT_REDIRECT} (a redirect to ${role === 'vin' ? p.ex : p.in})`);
      }
      if (!r.dataOut.subarray(0, frame.length).equals(frame)) throw new NeuvError(`the probe frame through neuv_${role} came out changed`);
    } finally {
      prog.close();
    }
  }
  if (p.mode === 'fwd') {
    // What the DP sends back for this UCMAC: neuv_vbr rewrites DA to the workload MAC and redirects to vin.
    const prog = ProgFd.fromPin(progPinPath(pinRoot, 'vbr'));
    try {
      const ctx = Buffer.alloc(SKB_CTX_SIZE);
      ctx.writeUInt32LE(ifNameToIndex(VBR), SKB_CTX_IFINDEX);
      const mac = parseMac(p.mac);
      const frame = probeFrame('vex', parseMac(p.ucmac));
      const r = testRun(prog.fd, frame, { ctxIn: ctx });
      const want = Buffer.from(frame);
      mac.copy(want, 0);
      if (r.retval !== TC_ACT_REDIRECT || !r.dataOut.subarray(0, want.length).equals(want)) {
        throw new NeuvError(`a probe frame to ${p.ucmac} through neuv_vbr returned ${r.retval}${r.retval === TC_ACT_REDIRECT ? ' with the wrong destination MAC' : ''}, not a redirect to ${p.in} with DA ${p.mac}`);
      }
    } finally {
      prog.close();
    }
  }
  const after = toPeerPackets(m.stats, p.id);
  if (after[Dir.TO_WL]! <= before[Dir.TO_WL]! || after[Dir.FROM_WL]! <= before[Dir.FROM_WL]!) {
    throw new NeuvError(`the probe frames were not counted for id ${p.id} (to_peer did not move)`);
  }
  if (tcDevs.length) {
    const fl = await readFilters(tcDevs);
    for (const dev of tcDevs) {
      const first = Math.min(...(fl[dev] ?? []).map((f) => f.pref));
      const ours = (fl[dev] ?? []).filter(isOurFilter);
      const ahead = (fl[dev] ?? []).filter((f) => !isOurFilter(f) && f.pref <= TC_PRIORITY);
      if (!ours.length || first !== TC_PRIORITY || ahead.length) throw new NeuvError(`our filter on ${dev} ingress is not the first one (prefs ${(fl[dev] ?? []).map((f) => f.pref).join(', ')})`);
    }
  }
  return { attach: attachKinds, probe };
}

/**
 * Deletes NeuVector's filters (one `tc -batch`, else one `tc` each) and
 * checks none is left; one already gone (a rerun after an interruption) is
 * fine. Returns those deleted.
 */
async function deleteFilters(fl: NvFilterRef[]): Promise<NvFilterRef[]> {
  const line = (f: NvFilterRef) => ['filter', 'del', 'dev', f.dev, 'parent', 'ffff:', 'protocol', f.protocol, 'pref', String(f.pref)];
  const devs = [...new Set(fl.map((f) => f.dev))];
  const present = async () => {
    const now = await readFilters(devs);
    return fl.filter((f) => (now[f.dev] ?? []).some((x) => x.pref === f.pref && !isOurFilter(x)));
  };
  const had = await present();
  if (had.every((f) => batchSafe(f.dev))) {
    await run('tc', ['-force', '-batch', '-'], { input: had.map((f) => line(f).join(' ') + '\n').join(''), allowFail: true });
  }
  let left = await present();
  for (const f of left) {
    const r = await run('tc', line(f), { allowFail: true });
    if (r.code !== 0) throw new NeuvError(`tc ${line(f).join(' ')}: ${(r.stderr || '').trim().split('\n')[0]}`);
  }
  if (left.length) left = await present();
  if (left.length) throw new NeuvError(`still there after deletion: ${left.map((f) => `${f.dev} pref ${f.pref}`).join(', ')}`);
  return had;
}

/** Why neuv_vbr is not the program vbr-neuv runs first (undefined: it is), for a loaded datapath. */
async function vbrProblem(pinRoot: string): Promise<string | undefined> {
  const ifindex = ifNameToIndex(VBR);
  if (!ifindex) return `there is no ${VBR}`;
  const prog = ProgFd.fromPin(progPinPath(pinRoot, 'vbr'));
  let pinned: number;
  try {
    pinned = prog.info().id;
  } finally {
    prog.close();
  }
  const st = attachState(pinRoot, ifindex);
  if (st.kind === 'none' || st.defunct || st.progId !== pinned) {
    return `${VBR} ingress does not run the pinned neuv_vbr (id ${pinned}; ${st.kind === 'none' ? 'nothing of ours is attached' : `it runs id ${st.progId}`}): was ${VBR} recreated since load? run neuv-bpf load`;
  }
  if (st.kind === 'tc') {
    const fl = (await readFilters([VBR]))[VBR] ?? [];
    if (fl.some((f) => !isOurFilter(f) && f.pref <= TC_PRIORITY)) return `another filter sits at pref ${TC_PRIORITY} on ${VBR}, ahead of or beside neuv_vbr`;
  }
  return undefined;
}

/** The order the pairs are adopted in (and reported): by vex ifindex, as NeuVector numbers them. */
function byIfindex(a: DiscoveredPair, b: DiscoveredPair): number {
  return a.vexIfindex - b.vexIfindex;
}

export async function adopt(opts: AdoptOptions): Promise<AdoptResult> {
  const lg = log('migrate');
  const pinRoot = opts.pinRoot;
  const disc = await discover(pinRoot, { kernel: false });
  const pairs = (opts.from ? selectPlanned(disc, opts.from) : disc.pairs).slice().sort(byIfindex);
  const loaded = isLoaded(pinRoot);
  const jumbo = (disc.vbr.mtu ?? 0) > 2048;
  const warnings: string[] = [];
  const attachKind = process.env.NEUV_BPF_ATTACH === 'tcx' ? 'tcx links' : 'tc filter pref 1 on their ingress qdisc';
  const res: AdoptResult = {
    dryRun: opts.dryRun === true,
    load: !loaded && pairs.length > 0,
    jumbo,
    plan: pairs.map((p) => ({ pair: p, steps: planSteps(p, attachKind) })),
    adopted: [],
    skipped: opts.from ? [] : disc.unclassified,
    warnings,
  };
  if (disc.vbr.mtu !== null && disc.vbr.mtu !== 2048 && disc.vbr.mtu !== 9000 && res.load) {
    warnings.push(`vbr-neuv has MTU ${disc.vbr.mtu}; load sets ${jumbo ? 9000 : 2048}`);
  }
  for (const p of pairs) {
    if (p.qdisc.vin === 'clsact' || p.qdisc.vex === 'clsact') warnings.push(`${p.in}/${p.ex}: a clsact qdisc where NeuVector has a legacy ingress one`);
  }
  if (pairs.length === 0) return res;
  const links = new Map((await linkShow()).map((l) => [l.ifname, l]));

  if (loaded) {
    const m = openMaps(pinRoot);
    try {
      checkMaps(m, pairs, links);
    } finally {
      m.close();
    }
    const vp = await vbrProblem(pinRoot);
    if (vp && opts.dryRun) warnings.push(`adopt would refuse: ${vp}`);
    else if (vp) throw new NeuvError(`cannot adopt: ${vp}`);
  }
  if (opts.dryRun) return res;

  if (!loaded) {
    const r = await withLock(pinRoot, () => load({ pinRoot, jumbo }));
    lg.info({ pinRoot, progIds: r.progIds, attach: r.attach }, 'loaded the datapath for adopt');
  }

  // Every pair's entries first: neuv_vbr then delivers what the DP sends back for all of them.
  const seeded: Seeded[] = [];
  await withLock(pinRoot, () => {
    const m = openMaps(pinRoot);
    try {
      checkMaps(m, pairs, links);
      for (const p of pairs) {
        try {
          failpoint('seed', p.in);
          seeded.push(seed(m, p, links));
        } catch (e) {
          res.failed = { in: p.in, ex: p.ex, step: 'seed', error: (e as Error).message, state: "on NeuVector's rules (nothing changed for it)" };
          for (const s of seeded.splice(0).reverse()) unseed(m, s);
          return;
        }
      }
    } finally {
      m.close();
    }
  });
  if (res.failed) return res;
  if (!loaded) {
    // Checked once the entries are in (just after load, so the window where neuv_vbr knows no pair stays short).
    const vp = await vbrProblem(pinRoot);
    if (vp) {
      await withLock(pinRoot, () => {
        const m = openMaps(pinRoot);
        try {
          for (const sd of seeded.splice(0).reverse()) unseed(m, sd);
        } finally {
          m.close();
        }
      });
      throw new NeuvError(`loaded the datapath, but cannot adopt: ${vp}`);
    }
  }

  const dp = Datapath.open(pinRoot);
  try {
    for (let k = 0; k < seeded.length; k++) {
      const s = seeded[k]!;
      const p = s.pair;
      const t0 = Date.now();
      let step: AdoptStep = 'attach';
      const attachedNow: Array<{ ifindex: number; name: string }> = [];
      try {
        failpoint('attach', p.in);
        const r = await dp.addPair({ in: p.in, ex: p.ex, mac: p.mac, mode: p.mode, id: p.id });
        if (r.id !== p.id) throw new NeuvError(`pair add gave id ${r.id}, not ${p.id}`);
        if (r.repaired.includes('vin hook')) attachedNow.push({ ifindex: p.vinIfindex, name: p.in });
        if (r.repaired.includes('vex hook')) attachedNow.push({ ifindex: p.vexIfindex, name: p.ex });
        step = 'verify';
        failpoint('verify', p.in);
        const m = openMaps(pinRoot);
        let v: Awaited<ReturnType<typeof verifyPair>>;
        try {
          v = await verifyPair(pinRoot, m, p, links);
        } finally {
          m.close();
        }
        step = 'remove';
        let removed: string[] = [];
        try {
          failpoint('remove', p.in);
          removed = (await deleteFilters(p.filters)).map((f) => `${f.dev} pref ${f.pref}`);
        } catch (e) {
          const now = await readFilters([...new Set(p.filters.map((f) => f.dev))]).catch(() => ({}) as Record<string, TcFilter[]>);
          const rest = p.filters.filter((f) => (now[f.dev] ?? []).some((x) => x.pref === f.pref && !isOurFilter(x))).map((f) => `${f.dev} pref ${f.pref}`);
          removed = p.filters.map((f) => `${f.dev} pref ${f.pref}`).filter((x) => !rest.includes(x));
          res.adopted.push({ in: p.in, ex: p.ex, id: p.id, ucmac: p.ucmac, mac: p.mac, mode: p.mode, attach: v.attach, probe: v.probe, removed, ms: Date.now() - t0 });
          res.failed = {
            in: p.in,
            ex: p.ex,
            step,
            error: (e as Error).message,
            state: `on neuv-bpf (verified live); NeuVector's filters not deleted, shadowed by our hooks: ${rest.join(', ') || 'none'}; run adopt again`,
          };
          throw e;
        }
        res.adopted.push({ in: p.in, ex: p.ex, id: p.id, ucmac: p.ucmac, mac: p.mac, mode: p.mode, attach: v.attach, probe: v.probe, removed, ms: Date.now() - t0 });
        lg.info({ in: p.in, ex: p.ex, id: p.id, mode: p.mode, ms: Date.now() - t0 }, 'pair adopted');
      } catch (e) {
        if (!res.failed) {
          // Before the deletion: this pair goes back to NeuVector's rules exactly as found.
          for (const h of attachedNow.reverse()) {
            try {
              detach(pinRoot, h.ifindex, h.name, false);
            } catch (de) {
              lg.warn({ dev: h.name, err: (de as Error).message }, 'could not detach while rolling back');
            }
          }
          res.failed = { in: p.in, ex: p.ex, step, error: (e as Error).message, state: "on NeuVector's rules (rolled back)" };
        }
        // This pair's (when not live) and every later pair's seeded entries go.
        await withLock(pinRoot, () => {
          const m = openMaps(pinRoot);
          try {
            for (const later of seeded.slice(step === 'remove' ? k + 1 : k).reverse()) unseed(m, later);
          } finally {
            m.close();
          }
        });
        return res;
      }
    }
  } finally {
    dp.close();
  }
  return res;
}

// ================================================================ handback

export interface HandbackPair {
  in: string;
  ex: string;
  id: number;
  ucmac: string;
  mac: string;
  mode: NvMode;
  inPref: number;
  exPref: number;
  /** The tc argument arrays installed, in order. */
  rules: string[][];
  warnings: string[];
}

export interface HandbackResult {
  dryRun: boolean;
  actions: TcActions;
  pairs: HandbackPair[];
  /** Qdiscs added first (ports attached with tcx have none). */
  qdiscsAdded: string[];
  warnings: string[];
  /** After a real run: pins removed, vbr-neuv detached. */
  unloaded: boolean;
}

function tcUndo(args: string[]): string[] | undefined {
  // filter add dev D pref P parent ffff: protocol X ... -> filter del dev D parent ffff: protocol X pref P
  if (args[0] === 'filter' && args[1] === 'add') {
    const dev = args[args.indexOf('dev') + 1]!;
    const pref = args[args.indexOf('pref') + 1]!;
    const proto = args[args.indexOf('protocol') + 1]!;
    return ['filter', 'del', 'dev', dev, 'parent', 'ffff:', 'protocol', proto, 'pref', pref];
  }
  if (args[0] === 'qdisc' && args[1] === 'add') return ['qdisc', 'del', 'dev', args[3]!, 'ingress'];
  return undefined;
}

function isBpffs(p: string): boolean {
  try {
    return fs.statfsSync(p).type === BPF_FS_MAGIC;
  } catch {
    return false;
  }
}

export async function handback(opts: { pinRoot: string; dryRun?: boolean }): Promise<HandbackResult> {
  const lg = log('migrate');
  const pinRoot = opts.pinRoot;
  if (!isLoaded(pinRoot)) throw new NotFoundError(`neuv-bpf is not loaded here (no maps under ${pinRoot}): nothing to hand back`);
  const acts = await tcActions();
  const kernel = features().kernel;
  const dp = Datapath.open(pinRoot);
  try {
    const shown = await dp.show();
    const snap = await snapshot(pinRoot);
    const qd = (dev: string) => qdiscKind(snap.qdiscs, dev);
    const refusals: string[] = [];
    const warnings: string[] = [];
    const views: Array<{ v: PairView; mode: NvMode; installed?: DiscoveredPair }> = [];
    const nvNow = classifyNode(snap);
    for (const v of shown.pairs) {
      const label = `${v.vin?.name ?? '?'}/${v.vex?.name ?? '?'} (id ${v.id})`;
      if (v.problems.length || !v.vin?.name || !v.vex?.name || !v.mac) {
        refusals.push(`pair ${label} is not consistent (${v.problems[0] ?? 'ports missing'}): see neuv-bpf show`);
        continue;
      }
      if (v.mode !== 'fwd' && v.mode !== 'tap') {
        refusals.push(`pair ${label} is in ${v.mode}, which NeuVector's tc pipe has no rules for (set fwd or tap first)`);
        continue;
      }
      if (v.mode === 'fwd' && !acts.pedit) {
        refusals.push(`pair ${label} is in FWD, and NeuVector's FWD rules need act_pedit, which this kernel (${kernel}) lacks: FWD cannot be handed back here (switch it to tap, or keep neuv-bpf)`);
        continue;
      }
      for (const name of [v.vin.name, v.vex.name]) {
        if (qd(name) === 'clsact') refusals.push(`${name} has a clsact qdisc: NeuVector's rules (parent ffff:) need its legacy ingress qdisc, and swapping the qdisc would drop the hook in between`);
      }
      // NeuVector's rules there already (a handback interrupted after step 1): not installed twice.
      const have = nvNow.pairs.find((x) => x.in === v.vin!.name && x.ex === v.vex!.name);
      if (have && (have.mode !== v.mode || have.mac !== v.mac)) {
        refusals.push(`pair ${label} has NeuVector rules already, for ${have.mode} ${have.mac}, not ${v.mode} ${v.mac}`);
        continue;
      }
      if (!have && [v.vin.name, v.vex.name].some((n) => (snap.filters[n] ?? []).some((f) => f.pref === NV_PREF_IP || f.pref === NV_PREF_ALL))) {
        refusals.push(`pair ${label} has filters at NeuVector's prefs ${NV_PREF_IP}/${NV_PREF_ALL} already that are not NeuVector's full rule set: see neuv-bpf discover`);
        continue;
      }
      views.push({ v, mode: v.mode, installed: have });
    }
    const needVbr = views.some((x) => x.mode === 'fwd' || acts.gact);
    if (needVbr && qd(VBR) === 'clsact') refusals.push(`${VBR} has a clsact qdisc: NeuVector's vbr-neuv rules need a legacy ingress qdisc`);
    if (refusals.length) {
      throw new NeuvError(`cannot hand back: ${refusals[0]}${refusals.length > 1 ? ` (and ${refusals.length - 1} more)` : ''}`, ExitCode.KERNEL);
    }

    const taken = new Set<number>((snap.filters[VBR] ?? []).map((f) => f.pref));
    const qdiscAdds: string[][] = [];
    const qdiscsAdded: string[] = [];
    for (const { v } of views) {
      for (const n of [v.vin!.name!, v.vex!.name!]) {
        if (qd(n) === 'none') {
          qdiscAdds.push(['qdisc', 'add', 'dev', n, 'ingress']);
          qdiscsAdded.push(n);
        }
      }
    }
    if (needVbr && views.length && qd(VBR) === 'none' && ifNameToIndex(VBR)) {
      qdiscAdds.push(['qdisc', 'add', 'dev', VBR, 'ingress']);
      qdiscsAdded.push(VBR);
    }
    const pairs: HandbackPair[] = [];
    for (const { v, mode, installed } of views) {
      if (installed) {
        pairs.push({
          in: installed.in, ex: installed.ex, id: v.id, ucmac: formatMac(ucmacOf(v.id)), mac: v.mac!, mode,
          inPref: installed.vbrPrefs.sa ?? 0, exPref: installed.vbrPrefs.da ?? 0, rules: [], warnings: ["NeuVector's rules are there already: not installed again"],
        });
        warnings.push(`${installed.in}/${installed.ex}: NeuVector's rules are there already (an interrupted handback?): not installed again`);
        continue;
      }
      const inPref = nvPref(v.vin!.ifindex, taken);
      taken.add(inPref);
      const exPref = nvPref(v.vex!.ifindex, taken);
      taken.add(exPref);
      const nv: NvPair = { inPort: v.vin!.name!, exPort: v.vex!.name!, mac: parseMac(v.mac!), ucmac: ucmacOf(v.id), inPref, exPref };
      let rules = nvPairRules(nv, mode, { pedit: acts.pedit });
      const w: string[] = [];
      if (mode === 'tap' && !acts.gact) rules = rules.filter((r) => r[3] !== VBR);
      if (v.id !== (v.vex!.ifindex & 0xffff)) w.push(`id ${v.id} is not NeuVector's derivation (${v.vex!.name}'s ifindex & 0xffff = ${v.vex!.ifindex & 0xffff}): the rules keep ${formatMac(ucmacOf(v.id))}, the UCMAC the DP knows`);
      pairs.push({ in: nv.inPort, ex: nv.exPort, id: v.id, ucmac: formatMac(nv.ucmac), mac: v.mac!, mode, inPref, exPref, rules, warnings: w });
      for (const x of w) warnings.push(`${nv.inPort}/${nv.exPort}: ${x}`);
    }
    const taps = pairs.filter((p) => p.mode === 'tap' && p.rules.length).length;
    if (taps && !acts.pedit) {
      warnings.unshift(`no act_pedit in this kernel (${kernel}): the DP's copies of ${taps} TAP pair(s) carry the workload MAC, not the pair's UCMAC (as with NeuVector's own TAP on this kernel)`);
    }
    if (taps && !acts.gact) {
      warnings.unshift(`no act_gact in this kernel (${kernel}): no ${VBR} drop rules for ${taps} TAP pair(s); frames the DP writes back for them die in the enforcer netns stack instead`);
    }
    const res: HandbackResult = { dryRun: opts.dryRun === true, actions: acts, pairs, qdiscsAdded, warnings, unloaded: false };
    if (opts.dryRun) return res;

    // 1. NeuVector's rules, shadowed while our hooks run first. All or nothing.
    const done: string[][] = [];
    try {
      for (const args of [...qdiscAdds, ...pairs.flatMap((p) => p.rules)]) {
        await run('tc', args);
        done.push(args);
      }
    } catch (e) {
      for (const args of done.reverse()) {
        const u = tcUndo(args);
        if (u) await run('tc', u, { allowFail: true });
      }
      throw e;
    }
    // The rules read back as NeuVector's, for each pair's MAC and mode, before anything is switched.
    try {
      const check = classifyNode(await snapshot(pinRoot));
      for (const p of pairs) {
        const c = check.pairs.find((x) => x.in === p.in && x.ex === p.ex);
        const why = !c
          ? (check.unclassified.find((u) => u.what === `${p.in}/${p.ex}`)?.why ?? 'not found')
          : c.mode !== p.mode || c.mac !== p.mac
            ? `read back as ${c.mode} ${c.mac}`
            : c.ucmacFrom !== 'derived' && c.ucmac !== p.ucmac
              ? `read back with UCMAC ${c.ucmac}`
              : undefined;
        if (why) throw new NeuvError(`the rules installed for ${p.in}/${p.ex} do not read back as NeuVector's ${p.mode} rules for ${p.mac}: ${why}`);
      }
    } catch (e) {
      for (const args of done.reverse()) {
        const u = tcUndo(args);
        if (u) await run('tc', u, { allowFail: true });
      }
      throw e;
    }
    // 2. vbr-neuv: NeuVector's rules take over from neuv_vbr.
    const vbrIndex = ifNameToIndex(VBR);
    if (vbrIndex) detach(pinRoot, vbrIndex, VBR, false);
    // 3. Each pair: hooks first (NeuVector's vin/vex rules take over), then the entries.
    for (const p of pairs) await dp.delPair({ id: p.id });
    // 4. Nothing of ours is attached any more: the pins go, vbr-neuv/vth-neuv stay.
    await withLock(pinRoot, () => {
      if (!isBpffs(pinRoot)) throw new NeuvError(`${pinRoot} is not on a bpffs: refusing to remove it`, ExitCode.USAGE);
      for (const f of fs.readdirSync(pinRoot)) fs.rmSync(path.join(pinRoot, f), { recursive: true, force: true });
      fs.rmdirSync(pinRoot);
    });
    res.unloaded = true;
    lg.info({ pairs: pairs.length }, 'handed back to NeuVector');
    return res;
  } finally {
    dp.close();
  }
}
