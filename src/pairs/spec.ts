/** A pair's public types and the pure parts: spec validation, `pair add --file` lines, id allocation, counters by name. */
import { AttachKind } from '../attach';
import { ConflictError, UsageError } from '../errors';
import { DIR_COUNT, DIR_NAMES, MAX_IDS, MODE_NAMES, Mode, ModeValue, REASON_COUNT, REASON_NAMES, Stats, VERDICT_COUNT, VERDICT_NAMES } from '../layout';
import { VBR, VTH, validateIfName } from '../link';
import { formatMac, isUcmac, parseMac } from '../mac';
import { parsePortId } from '../numbers';

export { parsePortId };

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
  /** A fail-open watcher put this port in BYPASS (the WATCH_BYPASS mark of its entry; src/dp/watch.ts). */
  watchBypass: boolean;
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
  /** As in show: the mode of its port entries ('mixed' when they disagree; null without any). */
  mode: ModeName | 'none' | 'mixed' | null;
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
export function labelled<T>(label: string | undefined, fn: () => T): T {
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
 * One pair spec as parsed JSON (a line of `pair add --file`, an element of
 * the service's POST /v1/pairs): an object with the fields in, ex, mac,
 * mode?, id?, ipv6ToDp? and no other, each valid (validateSpec). Errors are
 * UsageErrors prefixed with `label`.
 */
export function parsePairObject(v: unknown, label: string): PairSpec {
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
  return spec;
}

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
      // Our words, not the parser's (whose message quotes the input): where it stopped, if it says.
      const at = /position (\d+)/.exec((e as Error).message);
      throw new UsageError(`${label}: not valid JSON${at ? ` (at column ${Number(at[1]) + 1})` : ''}`);
    }
    specs.push(parsePairObject(v, label));
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

export function namedGlobal(g: bigint[]): Record<(typeof REASON_NAMES)[number], bigint> {
  const out = {} as Record<(typeof REASON_NAMES)[number], bigint>;
  for (let r = 0; r < REASON_COUNT; r++) out[REASON_NAMES[r]!] = g[r] ?? 0n;
  return out;
}

/** Frames delivered in a direction: to the peer unchanged, returned by the DP, or sent on by an offloaded flow (fast). */
export function delivered(c: CounterSet): { packets: bigint; bytes: bigint } {
  return {
    packets: c.to_peer.packets + c.from_dp.packets + c.fast.packets,
    bytes: c.to_peer.bytes + c.from_dp.bytes + c.fast.bytes,
  };
}

