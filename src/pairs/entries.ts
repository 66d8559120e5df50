/**
 * A pair's map entries, in one place: what they hold, the order they are
 * written in and the order they are removed in. pair add/del (datapath.ts),
 * adopt's seed/unseed (src/migrate/adopt.ts) and, through the Datapath API, repair
 * all go through here, so a pair adopted from NeuVector's rules gets the very
 * bytes `pair add` writes for the same ports.
 *
 * A pair is:
 *   neuv_stats[id]        zeros at add (per-CPU counters);
 *   neuv_ports[vex], [vin] each pointing at the other port (peer_ifindex),
 *                         with id, role, mode, workload MAC and flags;
 *   neuv_ids[id]          both ifindexes (what neuv_vbr delivers the DP's
 *                         frames of the pair's UCMAC by).
 *
 * Written stats, vex, vin, then ids: neuv_vbr looks up the id, then the port
 * it names, so it never finds an id without its ports (that drops the DP's
 * frame: drop_no_peer), and a rerun after a crash before the ids entry finds
 * the pair by its port entries. Removed the other way round: the id first,
 * then an RCU grace period (a neuv_vbr run that found the id just before is
 * over: rcuGraceAfterDeletes in src/bpf/map.ts), then the ports (vex, vin), then the
 * counters. Port entries are always written with BPF_F_LOCK (PORT_UPDATE).
 */
import { BPF_ANY, BPF_NOEXIST, MapFd, rcuGraceAfterDeletes } from '../bpf';
import { features } from '../features';
import { ModeValue, PORT_UPDATE, PortEntry, PortFlag, Role, emptyStats, encodeId, encodePort, encodeStats, u32Key } from '../layout';
import { LinkJson } from '../link';
import { log } from '../log';
import { Undo } from '../undo';

/** The maps a pair's entries live in (a Pins opened with them). */
export interface PairMaps {
  ports: MapFd;
  ids: MapFd;
  stats: MapFd;
}

/** bpf_redirect_peer may be used: the kernel has it and NEUV_BPF_NO_REDIRECT_PEER=1 does not forbid it. */
export function redirectPeerAllowed(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.NEUV_BPF_NO_REDIRECT_PEER !== '1' && features().redirectPeer;
}

/** A veth whose peer lives in another netns (`ip -d -j link`: link_netnsid is set). */
export function peerElsewhere(l: LinkJson | undefined): boolean {
  return l?.linkinfo?.info_kind === 'veth' && l.link_netnsid !== undefined;
}

/** One port of a pair, as its entry needs it. */
export interface PortLink {
  ifindex: number;
  /** Its veth peer is in another netns (bpf_redirect_peer can reach it). */
  peerElsewhere: boolean;
}

/** Everything a pair's entries are made of. */
export interface PairTopology {
  id: number;
  vin: PortLink;
  vex: PortLink;
  mode: ModeValue;
  /** The workload MAC (6 bytes). */
  mac: Buffer;
  ipv6ToDp: boolean;
}

/**
 * The flags of a port's entry: IPV6_TO_DP as asked; REDIRECT_PEER when the
 * other port's peer is in another netns (this port's "to peer" redirect);
 * SELF_PEER when this port's own peer is (what the DP sends back to this
 * port, neuv_vbr's redirect); both only where bpf_redirect_peer is allowed.
 * QDISC_OURS is not the topology's: the hook records it (keepQdiscFlag).
 */
export function portFlags(self: PortLink, other: PortLink, ipv6ToDp: boolean, rp: boolean = redirectPeerAllowed()): number {
  return (ipv6ToDp ? PortFlag.IPV6_TO_DP : 0) | (rp && other.peerElsewhere ? PortFlag.REDIRECT_PEER : 0) | (rp && self.peerElsewhere ? PortFlag.SELF_PEER : 0);
}

/** The pair's two port entries, as the topology asks. */
export function portEntries(t: PairTopology, rp: boolean = redirectPeerAllowed()): { vin: PortEntry; vex: PortEntry } {
  return {
    vin: { peerIfindex: t.vex.ifindex, flags: portFlags(t.vin, t.vex, t.ipv6ToDp, rp), id: t.id, role: Role.VIN, mode: t.mode, mac: Buffer.from(t.mac) },
    vex: { peerIfindex: t.vin.ifindex, flags: portFlags(t.vex, t.vin, t.ipv6ToDp, rp), id: t.id, role: Role.VEX, mode: t.mode, mac: Buffer.from(t.mac) },
  };
}

/** An entry with the QDISC_OURS flag of the entry it replaces, and set when the hook just created the qdisc. */
export function keepQdiscFlag(e: PortEntry, old: PortEntry | undefined, qdiscCreated: boolean): PortEntry {
  const ours = ((old?.flags ?? 0) & PortFlag.QDISC_OURS) !== 0 || qdiscCreated;
  return { ...e, flags: ours ? e.flags | PortFlag.QDISC_OURS : e.flags & ~PortFlag.QDISC_OURS };
}

/** Same pair, MAC, id, role and mode (flags aside). */
export function samePort(a: PortEntry, b: PortEntry): boolean {
  return a.peerIfindex === b.peerIfindex && a.id === b.id && a.role === b.role && a.mode === b.mode && a.mac.equals(b.mac);
}

/** The steps of writing a pair, in order. */
export const WRITE_ORDER = ['stats', 'vex', 'vin', 'ids'] as const;
export type EntryStep = (typeof WRITE_ORDER)[number];

/** What to write: the two port entries (portEntries, maybe keepQdiscFlag'ed) and where. */
export interface PairWrite {
  id: number;
  vinIfindex: number;
  vexIfindex: number;
  vin: PortEntry;
  vex: PortEntry;
}

/** What is there before the write (read by the caller under the pin root's lock). */
export interface PairPresent {
  stats: boolean;
  ids: boolean;
  vin?: PortEntry;
  vex?: PortEntry;
}

export interface WriteOptions {
  present: PairPresent;
  /** Zero the counters even when there is an entry (a new pair: a stale entry's counts are not its). */
  resetStats?: boolean;
  /** A present port entry whose bytes differ is replaced (pair add); otherwise it stays as it is (adopt). */
  replacePorts?: boolean;
  /** Each step that changes a map registers how to take it back here (run in reverse: the id, a grace period, the ports, the counters). */
  undo?: Undo;
  /** Called after each step, `wrote` saying whether it changed a map (crash points, what was repaired). */
  onStep?: (step: EntryStep, wrote: 'created' | 'replaced' | undefined) => void;
}

/** Writes a pair's entries in WRITE_ORDER; returns the steps that created an entry. */
export function writePairEntries(m: PairMaps, w: PairWrite, opts: WriteOptions): EntryStep[] {
  const { present, onStep, ...rest } = opts;
  return writePairsEntries(m, [{ w, present }], { ...rest, onStep: onStep && ((_, step, wrote) => onStep(step, wrote)) })[0]!;
}

export interface WriteManyOptions extends Omit<WriteOptions, 'present' | 'onStep'> {
  /** resetStats is also per pair (the item's wins). Called for each pair (its index) after each step: */
  onStep?: (i: number, step: EntryStep, wrote: 'created' | 'replaced' | undefined) => void;
}

/**
 * Writes the entries of many pairs, step by step in WRITE_ORDER (every
 * pair's counters, then every vex entry, every vin entry, every id), each
 * step one BPF_MAP_UPDATE_BATCH per map and kind of write (create or
 * replace), so a pair's id is still written after its ports. A batch
 * update writes each element as BPF_ANY (the kernel takes no BPF_NOEXIST
 * there): which keys exist is what `present` says, read by the caller under
 * the pin root's lock, which every writer of these maps takes (the programs
 * only update counters in place). The undo of a step takes back all of it. Returns, per pair, the steps that created an
 * entry. writePairEntries is this for one pair.
 */
export function writePairsEntries(m: PairMaps, items: Array<{ w: PairWrite; present: PairPresent; resetStats?: boolean }>, opts: WriteManyOptions): EntryStep[][] {
  const created: EntryStep[][] = items.map(() => []);
  const undo = opts.undo;
  const wrote: Array<'created' | 'replaced' | undefined> = items.map(() => undefined);
  const step = (name: EntryStep) => {
    items.forEach((_, i) => opts.onStep?.(i, name, wrote[i]));
    wrote.fill(undefined);
  };
  /** Writes `keys`/`vals` in one batch; registers the undo of what was written (before a refusal throws). */
  const batch = (map: MapFd, what: string, idx: number[], keys: Buffer[], vals: Buffer[], flags: number, takeBack: (k: number) => void, kind: 'created' | 'replaced') => {
    if (!idx.length) return;
    const r = map.updateBatch(keys, vals, flags);
    if (r.done) {
      const n = r.done;
      undo?.push(`${what} (${n})`, () => {
        for (let k = 0; k < n; k++) takeBack(k);
      });
    }
    for (let k = 0; k < r.done; k++) wrote[idx[k]!] = kind;
    if (r.error) throw r.error;
  };
  // stats: zeros, created where there is none (the caller read that under the lock), reset where asked
  {
    const fresh: number[] = [];
    for (const [i, { present, resetStats }] of items.entries()) {
      if (present.stats && !(resetStats ?? opts.resetStats)) continue;
      if (!present.stats) {
        fresh.push(i);
        continue;
      }
      const key = u32Key(items[i]!.w.id);
      const old = m.stats.lookup(key);
      m.stats.update(key, encodeStats(emptyStats()), old ? BPF_ANY : BPF_NOEXIST);
      undo?.push(`stats ${items[i]!.w.id}`, () => (old ? m.stats.update(key, old) : m.stats.delete(key)));
      wrote[i] = old ? 'replaced' : 'created';
      if (!old) created[i]!.push('stats');
    }
    const keys = fresh.map((i) => u32Key(items[i]!.w.id));
    const zero = encodeStats(emptyStats());
    batch(m.stats, 'stats', fresh, keys, keys.map(() => zero), BPF_ANY, (k) => m.stats.delete(keys[k]!), 'created');
    for (const i of fresh) created[i]!.push('stats');
    step('stats');
  }
  // ports, vex then vin
  for (const role of ['vex', 'vin'] as const) {
    const make: number[] = [];
    const replace: number[] = [];
    for (const [i, { w, present }] of items.entries()) {
      const old = present[role];
      if (!old) make.push(i);
      else if (opts.replacePorts && !encodePort(old).equals(encodePort(w[role]))) replace.push(i);
    }
    const key = (i: number) => u32Key(role === 'vin' ? items[i]!.w.vinIfindex : items[i]!.w.vexIfindex);
    const mk = make.map(key);
    batch(m.ports, `${role} entries`, make, mk, make.map((i) => encodePort(items[i]!.w[role])), PORT_UPDATE, (k) => m.ports.delete(mk[k]!), 'created');
    for (const i of make) created[i]!.push(role);
    const rk = replace.map(key);
    batch(m.ports, `${role} entries`, replace, rk, replace.map((i) => encodePort(items[i]!.w[role])), PORT_UPDATE, (k) => m.ports.update(rk[k]!, encodePort(items[replace[k]!]!.present[role]!), PORT_UPDATE), 'replaced');
    step(role);
  }
  // ids, last
  {
    const fresh = [...items.keys()].filter((i) => !items[i]!.present.ids);
    // Taken back before the ports, with a grace period between (the undos run in reverse).
    if (fresh.length) undo?.push('RCU grace period', () => rcuGraceAfterDeletes());
    const keys = fresh.map((i) => u32Key(items[i]!.w.id));
    const vals = fresh.map((i) => encodeId({ vinIfindex: items[i]!.w.vinIfindex, vexIfindex: items[i]!.w.vexIfindex }));
    batch(m.ids, 'ids', fresh, keys, vals, BPF_ANY, (k) => m.ids.delete(keys[k]!), 'created');
    for (const i of fresh) created[i]!.push('ids');
    step('ids');
  }
  return created;
}

/** What to remove of a pair. */
export interface PairRemoval {
  id: number;
  /** Remove neuv_ids[id] (the caller checked it names this pair). */
  ids: boolean;
  /** The port entries to remove (ifindex and the entry read, for an undo), vex first. */
  ports: Array<{ ifindex: number; old?: PortEntry }>;
  /** Remove the counters: always, or only when no ids entry is left for the id. */
  stats: boolean | 'unless-id';
}

export interface RemoveOptions {
  undo?: Undo;
  /** A failed delete is logged and the rest still goes (rolling back: nothing better to do). */
  bestEffort?: boolean;
  onStep?: (step: 'ids' | 'port' | 'stats') => void;
}

/** Removes a pair's entries: the id, an RCU grace period, the counters, the ports (removePairsEntries for one). */
export function removePairEntries(m: PairMaps, r: PairRemoval, opts: RemoveOptions = {}): void {
  const { onStep, ...rest } = opts;
  removePairsEntries(m, [r], { ...rest, onStep: onStep && ((_, step) => onStep(step)) });
}

export interface RemoveManyOptions extends Omit<RemoveOptions, 'onStep'> {
  /** Called for each pair (its index) after each entry of it removed: */
  onStep?: (i: number, step: 'ids' | 'port' | 'stats') => void;
}

/**
 * Removes the entries of many pairs, a step at a time: every id, one RCU
 * grace period, every counter entry, every port (vex, vin); each step one
 * BPF_MAP_DELETE_BATCH per map (a key found absent is skipped). The undo of
 * each removal is registered on opts.undo (the old values, read first).
 */
export function removePairsEntries(m: PairMaps, rs: PairRemoval[], opts: RemoveManyOptions = {}): void {
  const lg = log('entries');
  /**
   * Deletes `keys` (batches, skipping absent keys), calling `took` for each
   * deleted (its undo) before anything can throw; returns the indexes
   * deleted. A refusal throws (logged and skipped when bestEffort).
   */
  const del = (map: MapFd, what: string, keys: Buffer[], took: (k: number) => void): number[] => {
    const gone: number[] = [];
    for (let at = 0; at < keys.length; ) {
      const r = map.deleteBatch(keys.slice(at));
      for (let k = 0; k < r.done; k++) {
        gone.push(at + k);
        took(at + k);
      }
      at += r.done;
      if (!r.error) break;
      if (r.error.errno !== 2 /* ENOENT: absent */) {
        if (!opts.bestEffort) throw r.error;
        lg.warn({ entry: `${what} ${keys[at]!.readUInt32LE(0)}`, err: r.error.message }, 'could not remove an entry');
      }
      at++;
    }
    return gone;
  };
  // ids (the old value kept for an undo)
  const idRs = rs.map((r, i) => ({ r, i, old: r.ids ? m.ids.lookup(u32Key(r.id)) : undefined })).filter((x) => x.old);
  const idKeys = idRs.map((x) => u32Key(x.r.id));
  for (const k of del(m.ids, 'ids', idKeys, (k) => opts.undo?.push(`ids ${idRs[k]!.r.id}`, () => m.ids.update(idKeys[k]!, idRs[k]!.old!, BPF_NOEXIST)))) {
    opts.onStep?.(idRs[k]!.i, 'ids');
  }
  // A neuv_vbr run that found an id just before is over before the ports go (no drop_no_peer).
  if (rs.some((r) => r.ids)) rcuGraceAfterDeletes();
  // The counters before the ports: killed between the two, the ports left still name the pair, so
  // rerunning pair del finishes it (the other way round, a counters entry no selector reaches was left).
  const statRs = rs
    .map((r, i) => ({ r, i }))
    .filter(({ r }) => r.stats === true || (r.stats === 'unless-id' && m.ids.lookup(u32Key(r.id)) === undefined))
    .map((x) => ({ ...x, old: m.stats.lookup(u32Key(x.r.id)) }))
    .filter((x) => x.old);
  const statKeys = statRs.map((x) => u32Key(x.r.id));
  for (const k of del(m.stats, 'stats', statKeys, (k) => opts.undo?.push(`stats ${statRs[k]!.r.id}`, () => m.stats.update(statKeys[k]!, statRs[k]!.old!, BPF_NOEXIST)))) {
    opts.onStep?.(statRs[k]!.i, 'stats');
  }
  const portRs = rs.flatMap((r, i) => r.ports.map((p) => ({ i, p })));
  const portKeys = portRs.map((x) => u32Key(x.p.ifindex));
  const portBack = (k: number) => {
    const { p } = portRs[k]!;
    const old = p.old;
    if (old) opts.undo?.push(`port ${p.ifindex}`, () => m.ports.update(portKeys[k]!, encodePort(old), PORT_UPDATE | BPF_NOEXIST));
  };
  for (const k of del(m.ports, 'port', portKeys, portBack)) opts.onStep?.(portRs[k]!.i, 'port');
}
