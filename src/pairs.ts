/**
 * Port pairs (NeuVector's AttachPortPair / FwdPortPair / TapPortPair /
 * ResetPortPair / DetachPortPair / GetPortPairRules): the typed API the CLI
 * is a thin shell over, for an enforcer agent to embed.
 *
 * A pair is two entries in neuv_ports (vin and vex, pointing at each other),
 * one in neuv_ids (id -> both ifindexes) and one in neuv_stats (zeros at add),
 * plus our tc filter on the ingress hook of both ports. Everything is read
 * back from the pinned maps and the kernel: there is no side state file, so
 * a restarted agent sees exactly what the datapath does.
 *
 * Every change runs under the pin root's lock; every step that changes the
 * kernel registers its undo, and a failure runs them in reverse so the kernel
 * is left byte for byte as it was found.
 *
 * The pure parts (spec validation, JSON-lines parsing, id allocation) are
 * exported separately for unit tests.
 */
import { Undo } from './undo';
import * as fs from 'node:fs';
import { BPF_EXIST, ProgFd, ifIndexToName, ifNameToIndex } from './bpf';
import { NetnsScope } from './netns';
import { MapName, Pins } from './pins';
import { keepQdiscFlag, peerElsewhere, portEntries, redirectPeerAllowed, removePairEntries, writePairEntries } from './pairs/entries';
import { AttachKind, attach, attachState, detach, detachPort, linkPinPath, preferredKind } from './attach';
import { ConflictError, NeuvError, NotFoundError, UsageError } from './errors';
import {
  DIR_COUNT,
  DIR_NAMES,
  MAX_IDS,
  MODE_NAMES,
  Mode,
  ModeValue,
  PortEntry,
  PortFlag,
  REASON_COUNT,
  REASON_NAMES,
  Role,
  Stats,
  VBR_IFINDEX,
  VERDICT_COUNT,
  VERDICT_NAMES,
  VTH_IFINDEX,
  addFlowStats,
  addGlobal,
  addStats,
  decodeId,
  decodePort,
  decodeU32Key,
  emptyStats,
  encodePort,
  PORT_UPDATE,
  u32Key,
} from './layout';
import { LinkJson, VBR, VTH, linkShow, validateIfName } from './link';
import { DEFAULT_PIN_ROOT, isLoaded, progPinPath } from './loader';
import { withLock } from './lock';
import { log } from './log';
import { crashPoint } from './crash';
import { bcmac, formatMac, isUcmac, parseMac, ucmac } from './mac';
import { clearPairFlows } from './flows';

// ================================================================ public types

/** Modes a pair can be added in. */
export const ADD_MODES = ['fwd', 'tap', 'bypass'] as const;
/** Modes a pair can be switched to. */
export const MODES = ['fwd', 'tap', 'bypass', 'drop'] as const;
export type AddModeName = (typeof ADD_MODES)[number];
export type ModeName = (typeof MODES)[number];
/** The mode of a new pair when the spec names none: traffic flows as before, the DP is skipped. */
export const DEFAULT_ADD_MODE: AddModeName = 'bypass';

/** What `pair add` takes (the fields of a JSON line of `pair add --file`). */
export interface PairSpec {
  /** vin: the port whose veth peer is the workload's eth0. */
  in: string;
  /** vex: the workload's original port (veth peer on the host side). */
  ex: string;
  /** The workload MAC M, "aa:bb:cc:dd:ee:ff". */
  mac: string;
  /** Default bypass. When re-adding an existing pair, omitted means "whatever it is now". */
  mode?: AddModeName;
  /** Pin the port id (0..65535); default: exPort ifindex & 0xffff if free, else the lowest free id. */
  id?: number;
  /** IPv6 unicast of the workload goes through the DP too (default: bypasses it, as NeuVector's tc mode). */
  ipv6ToDp?: boolean;
}

/** Which pair: by its vin name, its vex name or its id. */
export type PairSelector = { in: string } | { ex: string } | { id: number };

export interface PairAdded {
  id: number;
  ucmac: string;
  bcmac: string;
  in: string;
  ex: string;
  vinIfindex: number;
  vexIfindex: number;
  mac: string;
  mode: ModeName;
  ipv6ToDp: boolean;
  /** Per port: the "to peer" redirect uses bpf_redirect_peer. */
  redirectPeer: { vin: boolean; vex: boolean };
  /** false: the pair already existed with this spec (idempotent re-add). */
  created: boolean;
  /** Where the id came from. */
  idSource: 'pinned' | 'derived' | 'allocated' | 'existing';
  /** Set when the derived id was taken and another was allocated. */
  warning?: string;
  /** What this call repaired on an existing pair ("vin hook", "ids entry", ...). */
  repaired: string[];
}

export interface ModeChange {
  id: number;
  in: string | null;
  ex: string | null;
  from: ModeName | 'none' | 'mixed';
  to: ModeName;
  /** Flow offload entries of the pair the switch deleted; absent when none. */
  flowsCleared?: number;
}

export interface PairDeleted {
  id: number;
  in: string | null;
  ex: string | null;
  vinIfindex: number | null;
  vexIfindex: number | null;
  detached: string[];
  qdiscsRemoved: string[];
  /** Flow offload entries of the pair deleted with it; absent when none. */
  flowsCleared?: number;
}

export type CounterSet = Record<(typeof VERDICT_NAMES)[number], { packets: bigint; bytes: bigint }>;
export type PairCounters = Record<(typeof DIR_NAMES)[number], CounterSet>;

export interface PortView {
  role: 'vin' | 'vex';
  ifindex: number;
  /** The interface's name in this netns, null if none has that ifindex. */
  name: string | null;
  /** The neuv_ports entry exists. */
  entry: boolean;
  mode: ModeName | 'none' | null;
  redirectPeer: boolean;
  qdiscOurs: boolean;
  /** Our program is attached to the ingress hook (a tcx link pinned by us, or our tc filter). */
  attached: boolean;
  /** How: tcx link, tc filter (handle 0x4e56 pref 1), or none. */
  attach: AttachKind | 'none';
  /** The program id the hook runs (null when not attached). */
  progId: number | null;
}

export interface PairView {
  id: number;
  ucmac: string;
  bcmac: string;
  mac: string | null;
  mode: ModeName | 'none' | 'mixed' | null;
  ipv6ToDp: boolean;
  vin: PortView | null;
  vex: PortView | null;
  /** null when the pair has no neuv_stats entry. */
  counters: PairCounters | null;
  /** Inconsistencies found for this pair; empty when all is well. */
  problems: string[];
}

export interface ShowResult {
  pinRoot: string;
  pairs: PairView[];
  /** Reason counters of neuv_global, summed over CPUs. */
  global: Record<(typeof REASON_NAMES)[number], bigint>;
  /** Inconsistencies not tied to one pair (stray entries, wrong netns). */
  problems: string[];
  /** No problem anywhere. */
  consistent: boolean;
}

export interface PairStats {
  id: number;
  in: string | null;
  ex: string | null;
  vinIfindex: number | null;
  vexIfindex: number | null;
  counters: PairCounters;
}

export interface StatsSnapshot {
  /** Milliseconds since the epoch when read. */
  time: number;
  pairs: PairStats[];
  global: Record<(typeof REASON_NAMES)[number], bigint>;
}

export interface DatapathOptions {
  /**
   * Run every operation inside this network namespace (a name under
   * /var/run/netns or a path), switching this thread in and back out around
   * each kernel call. Omit to use the current one (the CLI enters --netns
   * once for the whole process).
   */
  netns?: string;
}

// ================================================================ pure parts

export interface ValidSpec {
  in: string;
  ex: string;
  mac: Buffer;
  /** undefined: not given (bypass for a new pair, any for an existing one). */
  mode: ModeValue | undefined;
  id: number | undefined;
  ipv6ToDp: boolean;
}

/** Prefixes a NeuvError's message with a label ("pairs.jsonl line 3") and rethrows it. */
function labelled<T>(label: string | undefined, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (label && e instanceof Error) e.message = `${label}: ${e.message}`;
    throw e;
  }
}

export function modeName(m: number): ModeName | 'none' {
  const n = MODE_NAMES[m];
  return (n && n !== 'none' ? n : 'none') as ModeName | 'none';
}

/** "fwd" -> Mode.FWD; anything not in `allowed` is a UsageError. */
export function parseModeName(s: unknown, allowed: readonly string[] = MODES): ModeValue {
  if (typeof s !== 'string' || !allowed.includes(s.toLowerCase())) {
    const list = allowed.length > 1 ? `${allowed.slice(0, -1).join(', ')} or ${allowed[allowed.length - 1]}` : allowed[0];
    throw new UsageError(`unknown mode ${JSON.stringify(s)} (expected ${list})`);
  }
  return Mode[s.toUpperCase() as keyof typeof Mode];
}

/** A port id: an integer 0..65535, as a number or a decimal string. */
export function parsePortId(v: unknown): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^[0-9]+$/.test(v.trim())) n = Number(v.trim());
  else throw new UsageError(`port id ${JSON.stringify(v)} is not an integer (expected 0..65535)`);
  if (!Number.isInteger(n)) throw new UsageError(`port id ${n} is not an integer (expected 0..65535)`);
  if (n < 0 || n > 0xffff) throw new UsageError(`port id ${n} is out of range (expected 0..65535)`);
  return n;
}

/** A workload MAC: well formed, unicast, not all zeros, not a UCMAC ("NeuV" prefix). */
export function parseWorkloadMac(s: unknown): Buffer {
  let m: Buffer;
  try {
    m = parseMac(s as string);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const t = formatMac(m);
  if (m.every((b) => b === 0)) throw new UsageError(`MAC ${t} is all zeros: not a workload MAC`);
  if (m.every((b) => b === 0xff)) throw new UsageError(`MAC ${t} is the broadcast address: a workload MAC must be unicast`);
  if (m[0]! & 1) throw new UsageError(`MAC ${t} is a multicast address: a workload MAC must be unicast`);
  if (isUcmac(m)) throw new UsageError(`MAC ${t} starts with 4e:65:75:56 ("NeuV"), the prefix of the datapath's own UCMACs`);
  return m;
}

/** Checks one spec (types, names, MAC, mode, id); throws a UsageError prefixed with `label`. */
export function validateSpec(spec: PairSpec, label?: string): ValidSpec {
  return labelled(label, () => {
    if (typeof spec !== 'object' || spec === null) throw new UsageError('a pair spec must be an object');
    const name = (v: unknown, what: string): string => {
      if (typeof v !== 'string') throw new UsageError(`${what} must be a string`);
      return validateIfName(v, what);
    };
    const vin = name(spec.in, 'in (vin interface name)');
    const vex = name(spec.ex, 'ex (vex interface name)');
    if (vin === vex) throw new UsageError(`in and ex are the same interface (${vin})`);
    for (const n of [vin, vex]) {
      if (n === VBR || n === VTH) throw new UsageError(`${n} is the DP port pair of the datapath, not a workload port`);
    }
    const mac = parseWorkloadMac(spec.mac);
    const mode = spec.mode === undefined ? undefined : parseModeName(spec.mode, ADD_MODES);
    const id = spec.id === undefined ? undefined : parsePortId(spec.id);
    if (spec.ipv6ToDp !== undefined && typeof spec.ipv6ToDp !== 'boolean') {
      throw new UsageError(`ipv6ToDp must be true or false, not ${JSON.stringify(spec.ipv6ToDp)}`);
    }
    return { in: vin, ex: vex, mac, mode, id, ipv6ToDp: spec.ipv6ToDp === true };
  });
}

const SPEC_FIELDS = ['in', 'ex', 'mac', 'mode', 'id', 'ipv6ToDp'] as const;
const REQUIRED_FIELDS = ['in', 'ex', 'mac'] as const;

/**
 * Parses `pair add --file` input: one JSON object per line with the fields
 * in, ex, mac, mode?, id?, ipv6ToDp?. Blank lines are skipped. Any error
 * (bad JSON, unknown or missing field, bad value, an interface or id used
 * twice) is a UsageError/ConflictError naming `source` and the line number.
 */
export function parsePairLines(text: string, source: string): { specs: PairSpec[]; labels: string[] } {
  const specs: PairSpec[] = [];
  const labels: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!.replace(/\r$/, '');
    if (raw.trim() === '') continue;
    const label = `${source} line ${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(raw);
    } catch (e) {
      throw new UsageError(`${label}: not valid JSON (${(e as Error).message})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      throw new UsageError(`${label}: expected a JSON object like {"in":"vin1","ex":"vex1","mac":"02:00:00:00:00:01"}`);
    }
    const o = v as Record<string, unknown>;
    const unknown = Object.keys(o).filter((k) => !(SPEC_FIELDS as readonly string[]).includes(k));
    if (unknown.length) {
      throw new UsageError(`${label}: unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `'${k}'`).join(', ')} (expected ${SPEC_FIELDS.join(', ')})`);
    }
    const missing = REQUIRED_FIELDS.filter((k) => o[k] === undefined);
    if (missing.length) throw new UsageError(`${label}: missing field${missing.length > 1 ? 's' : ''} ${missing.map((k) => `'${k}'`).join(', ')}`);
    const spec = o as unknown as PairSpec;
    validateSpec(spec, label);
    specs.push(spec);
    labels.push(label);
  }
  if (specs.length === 0) throw new UsageError(`${source}: no pairs (expected one JSON object per line)`);
  checkBatch(specs.map((s, i) => validateSpec(s, labels[i])), labels);
  return { specs, labels };
}

/** Within one batch: no interface in two specs, no pinned id twice. */
export function checkBatch(specs: ValidSpec[], labels: string[]): void {
  const byName = new Map<string, number>();
  const byId = new Map<number, number>();
  specs.forEach((s, i) => {
    for (const n of [s.in, s.ex]) {
      const j = byName.get(n);
      if (j !== undefined) throw new ConflictError(`${labels[i]}: interface ${n} is also in ${labels[j]}`);
      byName.set(n, i);
    }
    if (s.id !== undefined) {
      const j = byId.get(s.id);
      if (j !== undefined) throw new ConflictError(`${labels[i]}: port id ${s.id} is also pinned by ${labels[j]}`);
      byId.set(s.id, i);
    }
  });
}

export interface IdRequest {
  /** --id / "id": must be free. */
  pinned?: number;
  /** NeuVector's derivation: exPort ifindex & 0xffff. */
  derived: number;
  label: string;
}
export interface IdGrant {
  id: number;
  source: 'pinned' | 'derived' | 'allocated';
  /** For 'allocated': the derived id that was taken. */
  taken?: number;
}

/**
 * Gives every request an id no other pair has: pinned ids first (a taken one
 * is a ConflictError), then derived ids where free (so a later fallback never
 * steals a pair's own derived id), then the lowest free id for the rest.
 * `used` maps the ids already in use to a description of their owner.
 */
export function allocateIds(reqs: IdRequest[], used: ReadonlyMap<number, string>): IdGrant[] {
  const taken = new Map(used);
  const out: Array<IdGrant | undefined> = new Array(reqs.length);
  reqs.forEach((r, i) => {
    if (r.pinned === undefined) return;
    const owner = taken.get(r.pinned);
    if (owner !== undefined) throw new ConflictError(`${r.label}: port id ${r.pinned} is already used by ${owner}`);
    taken.set(r.pinned, r.label);
    out[i] = { id: r.pinned, source: 'pinned' };
  });
  reqs.forEach((r, i) => {
    if (out[i] || taken.has(r.derived)) return;
    taken.set(r.derived, r.label);
    out[i] = { id: r.derived, source: 'derived' };
  });
  let next = 0;
  reqs.forEach((r, i) => {
    if (out[i]) return;
    while (next < MAX_IDS && taken.has(next)) next++;
    if (next >= MAX_IDS) throw new ConflictError(`${r.label}: no free port id left (all ${MAX_IDS} in use)`);
    taken.set(next, r.label);
    out[i] = { id: next, source: 'allocated', taken: r.derived };
  });
  return out as IdGrant[];
}

/** Sums one per-CPU neuv_stats value into named counters. */
export function namedCounters(s: Stats): PairCounters {
  const out = {} as PairCounters;
  for (let d = 0; d < DIR_COUNT; d++) {
    const set = {} as CounterSet;
    for (let v = 0; v < VERDICT_COUNT; v++) set[VERDICT_NAMES[v]!] = { packets: s[d]![v]!.packets, bytes: s[d]![v]!.bytes };
    out[DIR_NAMES[d]!] = set;
  }
  return out;
}

function namedGlobal(g: bigint[]): Record<(typeof REASON_NAMES)[number], bigint> {
  const out = {} as Record<(typeof REASON_NAMES)[number], bigint>;
  for (let r = 0; r < REASON_COUNT; r++) out[REASON_NAMES[r]!] = g[r] ?? 0n;
  return out;
}

// ================================================================ the datapath

type Maps = Pins;

/** What the maps hold, read in one go. */
interface MapState {
  ports: Map<number, PortEntry>;
  ids: Map<number, { vinIfindex: number; vexIfindex: number }>;
  statsKeys: Set<number>;
}

interface LinkInfo {
  ifindex: number;
  name: string;
  kind: string | undefined;
  /** The veth's peer lives in another netns. */
  peerElsewhere: boolean;
}

/** A pair of the batch, resolved against the kernel. */
interface Plan {
  label: string;
  spec: ValidSpec;
  vin: LinkInfo;
  vex: LinkInfo;
  /** Existing pair (idempotent re-add) or a new one. */
  existing: boolean;
  id: number;
  idSource: PairAdded['idSource'];
  warning?: string;
  mode: ModeValue;
  ipv6ToDp: boolean;
}

function describePair(st: MapState, id: number, name: (i: number) => string): string {
  const e = st.ids.get(id);
  return e ? `pair ${name(e.vinIfindex)}/${name(e.vexIfindex)} (id ${id})` : `port entries of id ${id}`;
}

/**
 * How vin/vex hooks are attached: tc (clsact + our cls_bpf filter) unless
 * NEUV_BPF_ATTACH forces a kind. Not tcx by default: on the kernels we
 * measured, every tcx attach waits for an RCU grace period while holding
 * RTNL (~15 ms on 6.18), so 1,000 pairs (2,000 hooks) took ~27 s, against
 * well under a second with tc. vbr-neuv (one hook) keeps the loader's choice.
 */
export function portAttachKind(env: NodeJS.ProcessEnv = process.env): AttachKind {
  return env.NEUV_BPF_ATTACH ? preferredKind(env) : 'tc';
}

/**
 * The port-pair API. `Datapath.open(pinRoot)` needs a loaded datapath
 * (`neuv-bpf load`); each operation opens the pinned maps afresh under the
 * pin root's lock, so a reload or another process's changes are always seen.
 */
export class Datapath {
  readonly pinRoot: string;
  private readonly ns: NetnsScope;
  private closed = false;

  private constructor(pinRoot: string, ns: NetnsScope) {
    this.pinRoot = pinRoot;
    this.ns = ns;
  }

  static open(pinRoot: string = DEFAULT_PIN_ROOT, opts: DatapathOptions = {}): Datapath {
    if (!isLoaded(pinRoot)) {
      throw new NotFoundError(`the datapath is not loaded (no maps under ${pinRoot}): run neuv-bpf load first`);
    }
    return new Datapath(pinRoot, new NetnsScope(opts.netns));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ns.close();
  }

  // ---------------------------------------------------------------- helpers

  private check(): void {
    if (this.closed) throw new NeuvError('Datapath is closed');
  }

  /** Opens the named pinned maps, runs fn, closes them (the flow offload maps are optional: see Pins). */
  private withMaps<T>(names: MapName[], fn: (m: Maps) => T): T {
    return Pins.with(this.pinRoot, names, fn);
  }

  private readState(m: Pick<Maps, 'ports' | 'ids' | 'stats'>): MapState {
    const ports = new Map<number, PortEntry>();
    for (const [k, v] of m.ports.entries()) ports.set(decodeU32Key(k), decodePort(v));
    const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
    for (const [k, v] of m.ids.entries()) ids.set(decodeU32Key(k), decodeId(v));
    const statsKeys = new Set(m.stats.keys().map(decodeU32Key));
    return { ports, ids, statsKeys };
  }

  /** `ip -d -j link show` once (in our netns): name -> link. */
  private async links(): Promise<Map<string, LinkInfo>> {
    const raw: LinkJson[] = await this.ns.run(() => linkShow());
    const out = new Map<string, LinkInfo>();
    for (const l of raw) {
      out.set(l.ifname, {
        ifindex: l.ifindex,
        name: l.ifname,
        kind: l.linkinfo?.info_kind,
        peerElsewhere: peerElsewhere(l),
      });
    }
    return out;
  }

  /** Resolves a selector to the pair's ifindexes and id, from the maps (names in this netns). */
  private resolve(sel: PairSelector, st: Pick<MapState, 'ports' | 'ids'>): { id: number; vin?: number; vex?: number } {
    if ('id' in sel) {
      const id = parsePortId(sel.id);
      const e = st.ids.get(id);
      if (e) return { id, vin: e.vinIfindex, vex: e.vexIfindex };
      // No ids entry: port entries that still carry the id (an inconsistent leftover).
      let vin: number | undefined;
      let vex: number | undefined;
      for (const [ifindex, p] of st.ports) {
        if (p.id !== id) continue;
        if (p.role === Role.VIN) vin = ifindex;
        else vex = ifindex;
      }
      if (vin === undefined && vex === undefined) throw new NotFoundError(`no pair with port id ${id}`);
      return { id, vin, vex };
    }
    const role = 'in' in sel ? Role.VIN : Role.VEX;
    const nm = validateIfName('in' in sel ? sel.in : sel.ex, 'in' in sel ? 'vin interface name' : 'vex interface name');
    const ifindex = ifNameToIndex(nm);
    if (!ifindex) throw new NotFoundError(`interface ${nm} not found in this network namespace`);
    const p = st.ports.get(ifindex);
    if (!p) throw new NotFoundError(`${nm} is not in any pair`);
    if (p.role !== role) throw new NotFoundError(`${nm} is the ${p.role === Role.VIN ? 'vin' : 'vex'} of pair id ${p.id}, not a ${role === Role.VIN ? 'vin' : 'vex'}`);
    return role === Role.VIN ? { id: p.id, vin: ifindex, vex: p.peerIfindex } : { id: p.id, vin: p.peerIfindex, vex: ifindex };
  }

  /** Ports and ids only, looked up (no full scan) for selectors by name; by id falls back to a scan. */
  private lookupForSelector(m: Pick<Maps, 'ports' | 'ids'>, sel: PairSelector): Pick<MapState, 'ports' | 'ids'> {
    if ('id' in sel) {
      const id = parsePortId(sel.id);
      const v = m.ids.lookup(u32Key(id));
      if (v) {
        const e = decodeId(v);
        const ports = new Map<number, PortEntry>();
        for (const i of [e.vinIfindex, e.vexIfindex]) {
          const p = m.ports.lookup(u32Key(i));
          if (p) ports.set(i, decodePort(p));
        }
        return { ports, ids: new Map([[id, e]]) };
      }
      const ports = new Map<number, PortEntry>();
      for (const [k, pv] of m.ports.entries()) ports.set(decodeU32Key(k), decodePort(pv));
      return { ports, ids: new Map() };
    }
    const nm = validateIfName('in' in sel ? sel.in : sel.ex);
    const ifindex = ifNameToIndex(nm);
    const ports = new Map<number, PortEntry>();
    if (ifindex) {
      const p = m.ports.lookup(u32Key(ifindex));
      if (p) {
        const e = decodePort(p);
        ports.set(ifindex, e);
        const q = m.ports.lookup(u32Key(e.peerIfindex));
        if (q) ports.set(e.peerIfindex, decodePort(q));
      }
    }
    return { ports, ids: new Map() };
  }

  // ---------------------------------------------------------------- add

  /** Adds one pair (or confirms an identical existing one, re-attaching missing hooks). */
  async addPair(spec: PairSpec): Promise<PairAdded> {
    const [r] = await this.addPairs([spec], { labels: [''] });
    return r!;
  }

  /**
   * Adds many pairs in one go: everything is validated and resolved before
   * the first change, one `ip link show` for the whole batch, then only
   * libbpf calls. All or nothing: a failure undoes every change of the batch.
   * `labels` name the specs in error messages (default "pair N").
   */
  async addPairs(specs: PairSpec[], opts: { labels?: string[] } = {}): Promise<PairAdded[]> {
    this.check();
    const labels = specs.map((_, i) => opts.labels?.[i] ?? `pair ${i + 1}`);
    const valid = specs.map((s, i) => validateSpec(s, labels[i] || undefined));
    checkBatch(valid, labels.map((l, i) => l || `pair ${i + 1}`));
    if (valid.length === 0) return [];
    return withLock(this.pinRoot, async () => {
      const links = await this.links();
      return this.ns.run(() =>
        this.withMaps(['ports', 'ids', 'stats'], (m) => {
          const st = this.readState(m);
          const plans = this.plan(valid, labels, links, st);
          crashPoint('pair-add:planned');
          return this.apply(plans, st, m);
        }),
      );
    });
  }

  /** Resolves every spec against the links and maps; throws before any change. */
  private plan(valid: ValidSpec[], labels: string[], links: Map<string, LinkInfo>, st: MapState): Plan[] {
    const byIndex = new Map<number, LinkInfo>();
    for (const l of links.values()) byIndex.set(l.ifindex, l);
    const name = (i: number) => byIndex.get(i)?.name ?? `ifindex ${i}`;
    // Which ifindexes the ids map references (a leftover ids entry must not be silently reused).
    const idRefs = new Map<number, number>();
    for (const [id, e] of st.ids) {
      idRefs.set(e.vinIfindex, id);
      idRefs.set(e.vexIfindex, id);
    }
    const peerRefs = new Map<number, number>();
    for (const [ifindex, e] of st.ports) peerRefs.set(e.peerIfindex, ifindex);
    const plans: Array<Plan | undefined> = [];
    const newReqs: Array<{ i: number; req: IdRequest }> = [];

    valid.forEach((s, i) => {
      const label = labels[i] || undefined;
      labelled(label, () => {
        const link = (n: string, role: string): LinkInfo => {
          const l = links.get(n);
          if (!l) throw new NotFoundError(`interface ${n} not found in this network namespace`);
          if (l.kind !== 'veth') throw new UsageError(`${n} is not a veth (it is ${l.kind ? `a ${l.kind}` : 'a device without a link kind'}): a ${role} must be one end of a veth pair`);
          if (l.ifindex === VBR_IFINDEX || l.ifindex === VTH_IFINDEX) throw new UsageError(`${n} is the DP port pair of the datapath, not a workload port`);
          return l;
        };
        const vin = link(s.in, 'vin');
        const vex = link(s.ex, 'vex');
        const eIn = st.ports.get(vin.ifindex);
        const eEx = st.ports.get(vex.ifindex);
        const macText = formatMac(s.mac);
        if (!eIn && !eEx) {
          for (const l of [vin, vex]) {
            const ref = idRefs.get(l.ifindex);
            if (ref !== undefined) {
              throw new ConflictError(`${l.name} (ifindex ${l.ifindex}) is still named by the neuv_ids entry of port id ${ref} without a port entry (a leftover: neuv-bpf pair del --id ${ref})`);
            }
            const from = peerRefs.get(l.ifindex);
            if (from !== undefined) {
              const e = st.ports.get(from)!;
              throw new ConflictError(`${l.name} (ifindex ${l.ifindex}) is still the peer of the port entry of ${name(from)} (id ${e.id}), a leftover: neuv-bpf pair del --id ${e.id}`);
            }
          }
          plans[i] = {
            label: labels[i] ?? '', spec: s, vin, vex, existing: false, id: -1, idSource: 'derived',
            mode: s.mode ?? Mode.BYPASS, ipv6ToDp: s.ipv6ToDp,
          };
          newReqs.push({ i, req: { pinned: s.id, derived: vex.ifindex & 0xffff, label: labels[i] || `${s.in}/${s.ex}` } });
          return;
        }
        // Some entry exists: it must be this very pair, with this spec.
        const check = (e: PortEntry | undefined, l: LinkInfo, role: RoleValueT, other: LinkInfo) => {
          if (!e) return;
          const rn = role === Role.VIN ? 'vin' : 'vex';
          const en = e.role === Role.VIN ? 'vin' : 'vex';
          if (e.role !== role || e.peerIfindex !== other.ifindex) {
            throw new ConflictError(`${l.name} is already the ${en} of ${describePair(st, e.id, name)}${e.role === role ? `, paired with ${name(e.peerIfindex)}` : ''}: not usable as ${rn} of ${s.in}/${s.ex}`);
          }
        };
        check(eIn, vin, Role.VIN, vex);
        check(eEx, vex, Role.VEX, vin);
        if (eIn && eEx && eIn.id !== eEx.id) {
          throw new ConflictError(`pair ${s.in}/${s.ex} is inconsistent (vin says id ${eIn.id}, vex says id ${eEx.id}): neuv-bpf pair del --in ${s.in} first`);
        }
        const e = (eIn ?? eEx)!;
        const differ: string[] = [];
        if (!e.mac.equals(s.mac)) differ.push(`MAC ${formatMac(e.mac)}, not ${macText}`);
        if (s.id !== undefined && e.id !== s.id) differ.push(`id ${e.id}, not ${s.id}`);
        if (s.mode !== undefined && e.mode !== s.mode) differ.push(`mode ${modeName(e.mode)}, not ${modeName(s.mode)} (use neuv-bpf pair mode)`);
        const e6 = (e.flags & PortFlag.IPV6_TO_DP) !== 0;
        if (e6 !== s.ipv6ToDp) differ.push(`ipv6ToDp ${e6}, not ${s.ipv6ToDp}`);
        if (differ.length) throw new ConflictError(`pair ${s.in}/${s.ex} already exists with ${differ.join(', ')}`);
        const idE = st.ids.get(e.id);
        if (idE && (idE.vinIfindex !== vin.ifindex || idE.vexIfindex !== vex.ifindex)) {
          throw new ConflictError(`pair ${s.in}/${s.ex} has id ${e.id}, but that id belongs to ${describePair(st, e.id, name)}`);
        }
        plans[i] = {
          label: labels[i] ?? '', spec: s, vin, vex, existing: true, id: e.id, idSource: 'existing', mode: e.mode as ModeValue, ipv6ToDp: e6,
        };
      });
    });

    if (newReqs.length) {
      const used = new Map<number, string>();
      for (const id of st.ids.keys()) used.set(id, describePair(st, id, name));
      for (const p of st.ports.values()) if (!used.has(p.id)) used.set(p.id, describePair(st, p.id, name));
      const grants = allocateIds(newReqs.map((r) => r.req), used);
      grants.forEach((g, k) => {
        const p = plans[newReqs[k]!.i]!;
        p.id = g.id;
        p.idSource = g.source;
        if (g.source === 'allocated') {
          p.warning = `port id ${g.taken} (${p.vex.name}'s ifindex ${p.vex.ifindex} & 0xffff) is taken by ${used.get(g.taken!) ?? 'another pair of this batch'}; using id ${g.id}`;
        }
      });
    }
    return plans as Plan[];
  }

  /** Makes the changes of a plan; all or nothing. */
  private apply(plans: Plan[], st: MapState, m: Maps): PairAdded[] {
    const lg = log('pairs');
    const undo = new Undo('pairs');
    const progs: Partial<Record<'vin' | 'vex', { fd: ProgFd; id: number }>> = {};
    const held: ProgFd[] = [];
    const prog = (role: 'vin' | 'vex'): { fd: ProgFd; id: number } => {
      const have = progs[role];
      if (have) return have;
      const p = progPinPath(this.pinRoot, role);
      if (!fs.existsSync(p)) throw new NotFoundError(`program ${p} is not pinned: run neuv-bpf load first`);
      const fd = ProgFd.fromPin(p);
      held.push(fd);
      return (progs[role] = { fd, id: fd.info().id });
    };
    const rp = redirectPeerAllowed();
    const kind = portAttachKind();
    const out: PairAdded[] = [];
    try {
      for (const p of plans) {
        labelled(p.label || undefined, () => {
          const repaired: string[] = [];
          // Hooks: qdisc (remember if we created it), then our filter where missing.
          const hook = (l: LinkInfo, role: 'vin' | 'vex'): { qdiscOurs: boolean; attached: boolean } => {
            const pg = prog(role);
            const cur = attachState(this.pinRoot, l.ifindex);
            const live = cur.kind !== 'none' && !cur.defunct;
            if (live && cur.progId === pg.id) return { qdiscOurs: false, attached: false };
            // Attached, but another program (a stale or wrong-role one): swapped in place below.
            const old = live ? ProgFd.fromId(cur.progId) : undefined;
            if (old) held.push(old);
            let r: ReturnType<typeof attach>;
            try {
              r = attach(this.pinRoot, l.ifindex, l.name, pg.fd.fd, kind);
            } catch (e) {
              if (e instanceof Error && !e.message.includes(l.name)) e.message = `attach ${l.name} (${role}): ${e.message}`;
              throw e;
            }
            if (r.replaced && old) undo.push(`restore ${l.name}`, () => attach(this.pinRoot, l.ifindex, l.name, old.fd, r.kind));
            else undo.push(`detach ${l.name}`, () => detach(this.pinRoot, l.ifindex, l.name, r.qdiscCreated));
            return { qdiscOurs: r.qdiscCreated, attached: true };
          };
          const hin = hook(p.vin, 'vin');
          crashPoint('pair-add:after-vin-hook');
          const hex = hook(p.vex, 'vex');
          crashPoint('pair-add:after-hooks');
          if (p.existing) {
            if (hin.attached) repaired.push('vin hook');
            if (hex.attached) repaired.push('vex hook');
          }
          // The entries (src/pairs/entries.ts): an existing entry is rewritten where it differs from what
          // this topology asks (a repair), keeping the QDISC_OURS it recorded.
          const fresh = portEntries({ id: p.id, vin: p.vin, vex: p.vex, mode: p.mode, mac: p.spec.mac, ipv6ToDp: p.ipv6ToDp }, rp);
          const oldIn = st.ports.get(p.vin.ifindex);
          const oldEx = st.ports.get(p.vex.ifindex);
          const w = {
            id: p.id, vinIfindex: p.vin.ifindex, vexIfindex: p.vex.ifindex,
            vin: keepQdiscFlag(fresh.vin, oldIn, hin.qdiscOurs), vex: keepQdiscFlag(fresh.vex, oldEx, hex.qdiscOurs),
          };
          writePairEntries(m, w, {
            present: { stats: st.statsKeys.has(p.id), ids: st.ids.has(p.id), vin: oldIn, vex: oldEx },
            resetStats: !p.existing,
            replacePorts: true,
            undo,
            onStep: (step, wrote) => {
              if (step === 'stats') {
                if (wrote && p.existing) repaired.push('stats entry');
                crashPoint('pair-add:after-stats');
              } else if (step === 'ids') {
                if (wrote && p.existing) repaired.push('ids entry');
                crashPoint('pair-add:after-ids');
              } else if (wrote) {
                crashPoint(`pair-add:after-${step}-entry`);
                if (p.existing) repaired.push(wrote === 'replaced' ? `${step} entry flags` : `${step} entry`);
              }
            },
          });
          st.statsKeys.add(p.id);
          st.ports.set(p.vin.ifindex, w.vin);
          st.ports.set(p.vex.ifindex, w.vex);
          st.ids.set(p.id, { vinIfindex: p.vin.ifindex, vexIfindex: p.vex.ifindex });
          const vinE = st.ports.get(p.vin.ifindex)!;
          const vexE = st.ports.get(p.vex.ifindex)!;
          const r: PairAdded = {
            id: p.id,
            ucmac: formatMac(ucmac(p.id)),
            bcmac: formatMac(bcmac(p.id)),
            in: p.vin.name,
            ex: p.vex.name,
            vinIfindex: p.vin.ifindex,
            vexIfindex: p.vex.ifindex,
            mac: formatMac(p.spec.mac),
            mode: modeName(p.mode) as ModeName,
            ipv6ToDp: p.ipv6ToDp,
            redirectPeer: { vin: (vinE.flags & PortFlag.REDIRECT_PEER) !== 0, vex: (vexE.flags & PortFlag.REDIRECT_PEER) !== 0 },
            created: !p.existing,
            idSource: p.idSource,
            repaired,
          };
          if (p.warning) {
            r.warning = p.warning;
            lg.warn({ in: r.in, ex: r.ex, id: r.id }, p.warning);
          }
          out.push(r);
        });
      }
    } catch (e) {
      undo.runSync();
      throw e;
    } finally {
      for (const fd of held) fd.close();
    }
    const created = out.filter((r) => r.created).length;
    lg.info({ pairs: out.length, created, existing: out.length - created }, out.length === 1 ? (created ? 'pair added' : 'pair exists') : 'pairs added');
    return out;
  }

  // ---------------------------------------------------------------- mode

  /**
   * Switches a pair's mode: one map update per port (BPF_EXIST), vex's entry
   * then vin's. Each update replaces the whole entry atomically, so every
   * frame sees the old or the new mode and none is dropped by the switch.
   */
  async setMode(sel: PairSelector, mode: ModeName | ModeValue): Promise<ModeChange> {
    this.check();
    const to = typeof mode === 'number' ? mode : parseModeName(mode, MODES);
    if (!(MODES as readonly string[]).includes(modeName(to))) throw new UsageError(`unknown mode ${mode}`);
    return withLock(this.pinRoot, () =>
      this.ns.run(() =>
        this.withMaps(['ports', 'ids'], (m) => {
          const st = this.lookupForSelector(m, sel);
          const r = this.resolve(sel, st);
          const vinE = r.vin !== undefined ? st.ports.get(r.vin) : undefined;
          const vexE = r.vex !== undefined ? st.ports.get(r.vex) : undefined;
          if (!vinE || !vexE) {
            throw new NotFoundError(`pair id ${r.id} is incomplete (${!vinE ? 'no vin entry' : 'no vex entry'}): see neuv-bpf show; pair del removes it`);
          }
          if (vinE.id !== r.id || vexE.id !== r.id || vinE.peerIfindex !== r.vex || vexE.peerIfindex !== r.vin) {
            throw new ConflictError(`pair id ${r.id} is inconsistent (its port entries disagree on id or peer): see neuv-bpf show`);
          }
          const from: ModeChange['from'] = vinE.mode === vexE.mode ? modeName(vinE.mode) : 'mixed';
          const undo = new Undo('pairs');
          let switched = false;
          try {
            for (const [ifindex, e] of [[r.vex!, vexE], [r.vin!, vinE]] as const) {
              if (e.mode === to) continue;
              switched = true;
              const key = u32Key(ifindex);
              m.ports.update(key, encodePort({ ...e, mode: to }), PORT_UPDATE | BPF_EXIST);
              undo.push(`mode of ifindex ${ifindex}`, () => m.ports.update(key, encodePort(e), PORT_UPDATE | BPF_EXIST));
              crashPoint(ifindex === r.vex ? 'pair-mode:after-vex' : 'pair-mode:after-vin');
            }
          } catch (e) {
            undo.runSync();
            throw e;
          }
          // After the switch (the new mode is in force): the DP's flow decisions belong to the old mode.
          const flowsCleared = switched ? clearPairFlows(this.pinRoot, r.id) : 0;
          const res: ModeChange = { id: r.id, in: ifIndexToName(r.vin!) ?? null, ex: ifIndexToName(r.vex!) ?? null, from, to: modeName(to) as ModeName };
          if (flowsCleared) res.flowsCleared = flowsCleared;
          log('pairs').debug(res, 'mode switched');
          return res;
        }),
      ),
    );
  }

  // ---------------------------------------------------------------- del

  /** Removes a pair: detaches vin/vex (and their clsact if we created it), deletes its entries. */
  async delPair(sel: PairSelector): Promise<PairDeleted> {
    this.check();
    return withLock(this.pinRoot, () =>
      this.ns.run(() =>
        this.withMaps(['ports', 'ids', 'stats', 'flowStats'], (m) => {
          const st = this.lookupForSelector(m, sel);
          const r = this.resolve(sel, st);
          const undo = new Undo('pairs');
          const detached: string[] = [];
          const qdiscsRemoved: string[] = [];
          const progs: ProgFd[] = [];
          try {
            // Hooks first: from then on frames of the pair take the normal path.
            for (const ifindex of [r.vin, r.vex]) {
              if (ifindex === undefined) continue;
              const nm = ifIndexToName(ifindex);
              const e = st.ports.get(ifindex);
              if (e && e.id !== r.id) continue; // the port belongs to another pair now: not ours to detach
              const cur = attachState(this.pinRoot, ifindex);
              if (!nm) {
                // The port is gone: only its entries and maybe a defunct tcx link pin are left.
                if (cur.kind === 'tcx') fs.rmSync(linkPinPath(this.pinRoot, ifindex), { force: true });
                continue;
              }
              const ours = e !== undefined && (e.flags & PortFlag.QDISC_OURS) !== 0 && e.id === r.id;
              const old = cur.kind !== 'none' && !cur.defunct ? ProgFd.fromId(cur.progId) : undefined;
              if (old) progs.push(old);
              const was = cur.kind;
              const d = detachPort(this.pinRoot, ifindex, nm, ours);
              if (d.detached) detached.push(nm);
              if (d.qdiscRemoved) qdiscsRemoved.push(nm);
              if (old && was !== 'none') undo.push(`reattach ${nm}`, () => attach(this.pinRoot, ifindex, nm, old.fd, was));
              crashPoint('pair-del:after-detach');
            }
            // Only the ids entry of this very pair (by id always; by name only if it points here).
            const idOld = m.ids.lookup(u32Key(r.id));
            const cur = idOld ? decodeId(idOld) : undefined;
            const ports: Array<{ ifindex: number; old: PortEntry }> = [];
            for (const ifindex of [r.vex, r.vin]) {
              const e = ifindex === undefined ? undefined : st.ports.get(ifindex);
              if (e && e.id === r.id) ports.push({ ifindex: ifindex!, old: e });
            }
            removePairEntries(
              m,
              { id: r.id, ids: cur !== undefined && ('id' in sel || cur.vinIfindex === r.vin || cur.vexIfindex === r.vex), ports, stats: 'unless-id' },
              { undo, onStep: (step) => (step === 'ids' ? crashPoint('pair-del:after-ids') : step === 'port' ? crashPoint('pair-del:after-port') : undefined) },
            );
          } catch (e) {
            undo.runSync();
            throw e;
          } finally {
            for (const p of progs) p.close();
          }
          // Last (nothing to undo after it): the pair's flow entries and flow counters.
          let flowsCleared = 0;
          if (m.ids.lookup(u32Key(r.id)) === undefined) {
            flowsCleared = clearPairFlows(this.pinRoot, r.id);
            m.flowStats?.delete(u32Key(r.id));
          }
          const res: PairDeleted = {
            id: r.id,
            in: r.vin !== undefined ? (ifIndexToName(r.vin) ?? null) : null,
            ex: r.vex !== undefined ? (ifIndexToName(r.vex) ?? null) : null,
            vinIfindex: r.vin ?? null,
            vexIfindex: r.vex ?? null,
            detached,
            qdiscsRemoved,
          };
          if (flowsCleared) res.flowsCleared = flowsCleared;
          log('pairs').info(res, 'pair deleted');
          return res;
        }),
      ),
    );
  }

  // ---------------------------------------------------------------- show / stats

  /** neuv_stats[id], plus neuv_flow_stats[id] (FAST, FLOW_DROP) when that map is open; null without a neuv_stats entry. */
  private readStats(m: Pick<Maps, 'stats'> & Partial<Pick<Maps, 'flowStats'>>, id: number): PairCounters | null {
    const v = m.stats.lookup(u32Key(id));
    if (!v) return null;
    const s = emptyStats();
    for (const cpu of m.stats.perCpuValues(v)) addStats(s, cpu);
    const f = m.flowStats?.lookup(u32Key(id));
    if (f) for (const cpu of m.flowStats!.perCpuValues(f)) addFlowStats(s, cpu);
    return namedCounters(s);
  }

  private readGlobal(m: Pick<Maps, 'global'>): Record<(typeof REASON_NAMES)[number], bigint> {
    const g: bigint[] = [];
    const v = m.global.lookup(u32Key(0));
    if (v) for (const cpu of m.global.perCpuValues(v)) addGlobal(g, cpu);
    return namedGlobal(g);
  }

  /**
   * Every pair with names, ifindexes, MACs, id, mode, hook state and
   * counters, from the pinned maps and the kernel, flagging every
   * inconsistency found.
   */
  async show(): Promise<ShowResult> {
    this.check();
    return withLock(this.pinRoot, () => this.ns.run(() => this.withMaps(['ports', 'ids', 'stats', 'global', 'flowStats'], (m) => this.showLocked(m))));
  }

  private showLocked(m: Maps): ShowResult {
    const st = this.readState(m);
    const pinnedProg = (role: 'vin' | 'vex'): number => {
      try {
        const p = ProgFd.fromPin(progPinPath(this.pinRoot, role));
        try {
          return p.info().id;
        } finally {
          p.close();
        }
      } catch {
        return 0;
      }
    };
    const progIds = { vin: pinnedProg('vin'), vex: pinnedProg('vex') };
    const problems: string[] = [];
    // Group by id: the ids entry names the ports; port entries carry the id.
    const groups = new Map<number, { vin?: number; vex?: number; fromIds: boolean }>();
    for (const [id, e] of st.ids) groups.set(id, { vin: e.vinIfindex, vex: e.vexIfindex, fromIds: true });
    for (const [ifindex, p] of st.ports) {
      let g = groups.get(p.id);
      if (!g) groups.set(p.id, (g = { fromIds: false }));
      const slot = p.role === Role.VIN ? 'vin' : p.role === Role.VEX ? 'vex' : undefined;
      if (!slot) {
        problems.push(`port entry of ifindex ${ifindex} (${ifIndexToName(ifindex) ?? 'no interface'}) has an unknown role ${p.role}`);
        continue;
      }
      if (g[slot] === undefined) g[slot] = ifindex;
      else if (g[slot] !== ifindex) {
        problems.push(`port entry of ifindex ${ifindex} (${ifIndexToName(ifindex) ?? 'no interface'}) claims to be the ${slot} of id ${p.id}, whose ${slot} is ifindex ${g[slot]}`);
      }
    }
    let present = 0;
    let total = 0;
    const pairs: PairView[] = [];
    for (const id of [...groups.keys()].sort((a, b) => a - b)) {
      const g = groups.get(id)!;
      const pp: string[] = [];
      if (!g.fromIds) pp.push('no neuv_ids entry: frames from the DP for this id are not delivered');
      const port = (role: 'vin' | 'vex', ifindex: number | undefined, other: number | undefined): PortView | null => {
        if (ifindex === undefined) {
          pp.push(`no ${role} port entry`);
          return null;
        }
        total++;
        const e = st.ports.get(ifindex);
        const name = ifIndexToName(ifindex) ?? null;
        if (name) present++;
        const att = attachState(this.pinRoot, ifindex);
        const progId = name && !att.defunct ? att.progId : 0;
        if (!e) pp.push(`no neuv_ports entry for the ${role} (ifindex ${ifindex}${name ? `, ${name}` : ''})`);
        else {
          const want = role === 'vin' ? Role.VIN : Role.VEX;
          if (e.role !== want) pp.push(`the ${role} entry (ifindex ${ifindex}) has role ${e.role === Role.VIN ? 'vin' : e.role === Role.VEX ? 'vex' : e.role}`);
          if (other !== undefined && e.peerIfindex !== other) pp.push(`the ${role} entry points at ifindex ${e.peerIfindex}, not at the pair's other port ${other}`);
          if (e.id !== id) pp.push(`the ${role} entry carries id ${e.id}`);
        }
        if (!name) pp.push(`the ${role} (ifindex ${ifindex}) has no interface in this network namespace (port vanished)`);
        else if (!progId) pp.push(`the ${role} hook is not attached (${name} ingress)`);
        else if (progIds[role] && progId !== progIds[role]) pp.push(`the ${role} hook runs program id ${progId}, not the pinned ${role} program (id ${progIds[role]}): run neuv-bpf load`);
        return {
          role,
          ifindex,
          name,
          entry: e !== undefined,
          mode: e ? modeName(e.mode) : null,
          redirectPeer: e ? (e.flags & PortFlag.REDIRECT_PEER) !== 0 : false,
          qdiscOurs: e ? (e.flags & PortFlag.QDISC_OURS) !== 0 : false,
          attached: progId !== 0,
          attach: progId ? (att.kind as AttachKind) : 'none',
          progId: progId || null,
        };
      };
      const vin = port('vin', g.vin, g.vex);
      const vex = port('vex', g.vex, g.vin);
      const ein = g.vin !== undefined ? st.ports.get(g.vin) : undefined;
      const eex = g.vex !== undefined ? st.ports.get(g.vex) : undefined;
      const e = ein ?? eex;
      if (ein && eex) {
        if (!ein.mac.equals(eex.mac)) pp.push(`vin and vex entries disagree on the MAC (${formatMac(ein.mac)} vs ${formatMac(eex.mac)})`);
        if (ein.mode !== eex.mode) pp.push(`vin and vex entries disagree on the mode (${modeName(ein.mode)} vs ${modeName(eex.mode)})`);
        if ((ein.flags ^ eex.flags) & PortFlag.IPV6_TO_DP) pp.push('vin and vex entries disagree on ipv6ToDp');
      }
      const counters = this.readStats(m, id);
      if (!counters && (ein || eex)) pp.push('no neuv_stats entry: the pair is not counted');
      const mode: PairView['mode'] = !e ? null : ein && eex && ein.mode !== eex.mode ? 'mixed' : modeName(e.mode);
      pairs.push({
        id,
        ucmac: formatMac(ucmac(id)),
        bcmac: formatMac(bcmac(id)),
        mac: e ? formatMac(e.mac) : null,
        mode,
        ipv6ToDp: e ? (e.flags & PortFlag.IPV6_TO_DP) !== 0 : false,
        vin,
        vex,
        counters,
        problems: pp,
      });
    }
    for (const id of st.statsKeys) {
      if (!groups.has(id)) problems.push(`neuv_stats has an entry for id ${id}, which has no pair`);
    }
    // tcx links we pinned for ports that are in no pair (vbr-neuv's is the loader's).
    for (const f of fs.readdirSync(this.pinRoot)) {
      const mm = /^link_(\d+)$/.exec(f);
      if (!mm) continue;
      const ifindex = Number(mm[1]);
      if (ifindex === VBR_IFINDEX || st.ports.has(ifindex)) continue;
      problems.push(`tcx link ${f} is pinned for ifindex ${ifindex} (${ifIndexToName(ifindex) ?? 'no interface'}), which is in no pair`);
    }
    if (total > 0 && present === 0) {
      problems.push(`no port of any pair exists in this network namespace: wrong netns? (use --netns)`);
    }
    const consistent = problems.length === 0 && pairs.every((p) => p.problems.length === 0);
    return { pinRoot: this.pinRoot, pairs, global: this.readGlobal(m), problems, consistent };
  }

  /** Counters per pair and direction (per-CPU values summed) and the global reason counters. */
  async stats(): Promise<StatsSnapshot> {
    this.check();
    return this.ns.run(() =>
      this.withMaps(['ids', 'stats', 'global', 'flowStats'], (m) => {
        const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
        for (const [k, v] of m.ids.entries()) ids.set(decodeU32Key(k), decodeId(v));
        const keys = m.stats.keys().map(decodeU32Key).sort((a, b) => a - b);
        const pairs: PairStats[] = [];
        for (const id of keys) {
          const c = this.readStats(m, id);
          if (!c) continue;
          const e = ids.get(id);
          pairs.push({
            id,
            in: e ? (ifIndexToName(e.vinIfindex) ?? null) : null,
            ex: e ? (ifIndexToName(e.vexIfindex) ?? null) : null,
            vinIfindex: e?.vinIfindex ?? null,
            vexIfindex: e?.vexIfindex ?? null,
            counters: c,
          });
        }
        return { time: Date.now(), pairs, global: this.readGlobal(m) };
      }),
    );
  }
}

type RoleValueT = (typeof Role)[keyof typeof Role];

/** Frames delivered in a direction: to the peer unchanged, returned by the DP, or sent on by an offloaded flow (fast). */
export function delivered(c: CounterSet): { packets: bigint; bytes: bigint } {
  return {
    packets: c.to_peer.packets + c.from_dp.packets + c.fast.packets,
    bytes: c.to_peer.bytes + c.from_dp.bytes + c.fast.bytes,
  };
}
