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
 * The pure parts (spec validation, JSON-lines parsing, id allocation) are in
 * spec.ts, the map reading and add's plan in state.ts, show in show.ts,
 * removal in remove.ts, the entries themselves in entries.ts.
 */
import { Undo } from '../undo';
import * as fs from 'node:fs';
import { BPF_EXIST, ProgFd, ifIndexToName } from '../bpf';
import { NetnsScope } from '../netns';
import { DEFAULT_PIN_ROOT, isLoaded, MapName, notLoaded, openProg, Pins } from '../pins';
import { keepQdiscFlag, portEntries, redirectPeerAllowed, writePairsEntries } from './entries';
import { attach, attachMany, attachState, detach, detachMany } from '../attach';
import { ConflictError, NeuvError, NotFoundError, UsageError } from '../errors';
import { Mode, ModeValue, PortEntry, PortFlag, decodeId, decodePort, decodeU32Key, encodePort, PORT_UPDATE, u32Key } from '../layout';
import { linkDump } from '../link';
import { withLock } from '../lock';
import { checkHome } from '../home';
import { log } from '../log';
import { faultPoint } from '../faults';
import { bcmac, formatMac, ucmac } from '../mac';
import { clearPairFlows } from '../flows';

import { MODES, ModeName, PairSpec, PairSelector, PairAdded, ModeChange, PairDeleted, ShowResult, PairStats, StatsSnapshot, DatapathOptions, labelled, modeName, parseModeName, validateSpec, checkBatch } from './spec';
import { Maps, MapState, LinkInfo, Plan, linkInfos, portAttachKind, readState, resolve, lookupForSelector, planPairs } from './state';
import { readAllStats, readGlobal, showPairs } from './show';
import { deletePairs } from './remove';

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
    if (!isLoaded(pinRoot)) throw notLoaded(pinRoot);
    const ns = new NetnsScope(opts.netns);
    try {
      ns.run(() => checkHome(pinRoot)); // bound to its enforcer netns (src/home.ts)
    } catch (e) {
      ns.close();
      throw e;
    }
    return new Datapath(pinRoot, ns);
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

  /**
   * Opens the named pinned maps, runs fn, closes them (the flow offload maps
   * are optional: see Pins). Called in our netns: checks again that the
   * datapath lives there (a reload elsewhere after unload).
   */
  private withMaps<T>(names: MapName[], fn: (m: Maps) => T): T {
    checkHome(this.pinRoot);
    return Pins.with(this.pinRoot, names, fn);
  }

  /** Every link of our netns, one in-process dump (linkDump): name -> link. */
  private async links(): Promise<Map<string, LinkInfo>> {
    return linkInfos(this.ns.run(() => linkDump()));
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
      const t0 = performance.now();
      const links = await this.links();
      return this.ns.run(() =>
        this.withMaps(['ports', 'ids', 'stats'], (m) => {
          const ms: Record<string, number> = { links: performance.now() - t0 };
          const st = readState(m);
          const plans = planPairs(valid, labels, links, st);
          ms.plan = performance.now() - t0 - ms.links!;
          faultPoint('pair-add:planned');
          return this.apply(plans, st, m, ms);
        }),
      );
    });
  }

  /**
   * Makes the changes of a plan; all or nothing. The hooks of every pair
   * first (hookAll: a batch has its tc filters attached together), then
   * the entries of every pair (writePairsEntries: a map update batch per
   * step), then the answers. A failure undoes it all.
   */
  private apply(plans: Plan[], st: MapState, m: Maps, ms: Record<string, number> = {}): PairAdded[] {
    const lg = log('pairs');
    const undo = new Undo('pairs');
    const held: ProgFd[] = [];
    const rp = redirectPeerAllowed();
    const out: PairAdded[] = [];
    let t = performance.now();
    const lap = (what: string) => {
      const now = performance.now();
      ms[what] = now - t;
      t = now;
    };
    try {
      const hooks = this.hookAll(plans, undo, held, ms);
      lap('hooks');
      const repaired: string[][] = plans.map((p, i) => (p.existing ? [...(hooks[i]!.vin.attached ? ['vin hook'] : []), ...(hooks[i]!.vex.attached ? ['vex hook'] : [])] : []));
      // The entries (src/pairs/entries.ts): an existing entry is rewritten where it differs from what
      // this topology asks (a repair), keeping the QDISC_OURS it recorded.
      const items = plans.map((p, i) => {
        const fresh = portEntries({ id: p.id, vin: p.vin, vex: p.vex, mode: p.mode, mac: p.spec.mac, ipv6ToDp: p.ipv6ToDp }, rp);
        const oldIn = st.ports.get(p.vin.ifindex);
        const oldEx = st.ports.get(p.vex.ifindex);
        return {
          w: { id: p.id, vinIfindex: p.vin.ifindex, vexIfindex: p.vex.ifindex, vin: keepQdiscFlag(fresh.vin, oldIn, hooks[i]!.vin.qdiscOurs), vex: keepQdiscFlag(fresh.vex, oldEx, hooks[i]!.vex.qdiscOurs) },
          present: { stats: st.statsKeys.has(p.id), ids: st.ids.has(p.id), vin: oldIn, vex: oldEx },
          resetStats: !p.existing,
        };
      });
      writePairsEntries(m, items, {
        replacePorts: true,
        undo,
        onStep: (i, step, wrote) => {
          if (i === 0) ms[`entries.${step}`] = -t + (t = performance.now()); // each step's batch, for the log
          const existing = plans[i]!.existing;
          if (step === 'stats') {
            if (wrote && existing) repaired[i]!.push('stats entry');
            faultPoint('pair-add:after-stats');
          } else if (step === 'ids') {
            if (wrote && existing) repaired[i]!.push('ids entry');
            faultPoint('pair-add:after-ids');
          } else if (wrote) {
            faultPoint(`pair-add:after-${step}-entry`);
            if (existing) repaired[i]!.push(wrote === 'replaced' ? `${step} entry flags` : `${step} entry`);
          }
        },
      });
      ms.entries = Object.entries(ms).filter(([k]) => k.startsWith('entries.')).reduce((a, [, v]) => a + v, 0) + (performance.now() - t);
      t = performance.now();
      plans.forEach((p, i) => {
        const { w } = items[i]!;
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
          redirectPeer: { vin: (w.vin.flags & PortFlag.REDIRECT_PEER) !== 0, vex: (w.vex.flags & PortFlag.REDIRECT_PEER) !== 0 },
          created: !p.existing,
          idSource: p.idSource,
          repaired: repaired[i]!,
        };
        if (p.warning) {
          r.warning = p.warning;
          lg.warn({ in: r.in, ex: r.ex, id: r.id }, p.warning);
        }
        out.push(r);
      });
    } catch (e) {
      undo.runSync();
      throw e;
    } finally {
      for (const fd of held) fd.close();
    }
    const created = out.filter((r) => r.created).length;
    const phasesMs = Object.fromEntries(Object.entries(ms).map(([k, v]) => [k, Math.round(v * 10) / 10]));
    lg.info({ pairs: out.length, created, existing: out.length - created, phasesMs }, out.length === 1 ? (created ? 'pair added' : 'pair exists') : 'pairs added');
    return out;
  }

  /**
   * Our program on the ingress of every port of the plans, where it is not
   * yet. With tc (the default for pairs) the ports without a pinned tcx link
   * go together (attachMany: their qdiscs, one grace period, their filters,
   * a few system calls in all); a port whose place is taken (a stale filter
   * of ours, another program), or a tcx port, goes one by one through
   * attach(), which swaps in place. Per plan: whether each hook was attached
   * now and whether we created its qdisc. Undos registered on `undo`.
   */
  private hookAll(plans: Plan[], undo: Undo, held: ProgFd[], ms: Record<string, number> = {}): Array<Record<'vin' | 'vex', { qdiscOurs: boolean; attached: boolean }>> {
    const progs: Partial<Record<'vin' | 'vex', { fd: ProgFd; id: number; name: string }>> = {};
    const prog = (role: 'vin' | 'vex'): { fd: ProgFd; id: number; name: string } => {
      const have = progs[role];
      if (have) return have;
      const fd = openProg(this.pinRoot, role);
      held.push(fd);
      const info = fd.info();
      return (progs[role] = { fd, id: info.id, name: `${info.name}:[${info.id}]` });
    };
    const kind = portAttachKind();
    const res = plans.map(() => ({ vin: { qdiscOurs: false, attached: false }, vex: { qdiscOurs: false, attached: false } }));
    const ports = plans.flatMap((p, i) => (['vin', 'vex'] as const).map((role) => ({ i, role, l: role === 'vin' ? p.vin : p.vex })));
    // Together: tc, no tcx link pinned for the port (one look at the pin root for all).
    const tcxPinned = new Set(fs.readdirSync(this.pinRoot).filter((f) => f.startsWith('link_')).map((f) => Number(f.slice(5))));
    const together = kind === 'tc' ? ports.filter((x) => !tcxPinned.has(x.l.ifindex)) : [];
    const reqs = together.map((x) => ({ ifindex: x.l.ifindex, name: x.l.name, progFd: prog(x.role).fd.fd, progName: prog(x.role).name }));
    let many: ReturnType<typeof attachMany>;
    try {
      many = attachMany(reqs);
    } catch (e) {
      // Named by its pair's label ("stdin line 3: attach vex3 ingress: ..."), as one by one.
      const at = (e as { request?: number }).request;
      labelled(at === undefined ? undefined : plans[together[at]!.i]!.label || undefined, () => {
        throw e;
      });
      throw e;
    }
    for (const [k, v] of Object.entries(many.ms ?? {})) ms[`hooks.${k}`] = v;
    const undone = together.map((x, k) => ({ ifindex: x.l.ifindex, name: x.l.name, qdiscOurs: many.qdiscCreated[k]!, attached: many.attached[k]! })).filter((d) => d.attached || d.qdiscOurs);
    if (undone.length) undo.push(`detach ${undone.length} hooks`, () => void detachMany(undone));
    const oneByOne = new Set(ports);
    together.forEach((x, k) => {
      res[x.i]![x.role] = { qdiscOurs: many.qdiscCreated[k]!, attached: many.attached[k]! };
      if (many.attached[k]) oneByOne.delete(x);
    });
    // One by one: qdisc (remember if we created it), then our filter where missing, swapped in place where another is.
    for (const x of oneByOne) {
      labelled(plans[x.i]!.label || undefined, () => {
        const { l, role } = x;
        const pg = prog(role);
        const cur = attachState(this.pinRoot, l.ifindex);
        const live = cur.kind !== 'none' && !cur.defunct;
        if (live && cur.progId === pg.id) return;
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
        res[x.i]![role] = { qdiscOurs: r.qdiscCreated || res[x.i]![role].qdiscOurs, attached: true };
      });
    }
    for (const p of plans) {
      labelled(p.label || undefined, () => {
        faultPoint('pair-add:after-vin-hook');
        faultPoint('pair-add:after-hooks');
      });
    }
    return res;
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
          const st = lookupForSelector(m, sel);
          const r = resolve(sel, st);
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
              // A pair a fail-open watcher holds is the operator's from now on: the watcher's mark goes.
              if (e.mode === to && !(e.flags & PortFlag.WATCH_BYPASS)) continue;
              switched ||= e.mode !== to;
              const key = u32Key(ifindex);
              m.ports.update(key, encodePort({ ...e, mode: to, flags: e.flags & ~PortFlag.WATCH_BYPASS }), PORT_UPDATE | BPF_EXIST);
              undo.push(`mode of ifindex ${ifindex}`, () => m.ports.update(key, encodePort(e), PORT_UPDATE | BPF_EXIST));
              faultPoint(ifindex === r.vex ? 'pair-mode:after-vex' : 'pair-mode:after-vin');
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

  /**
   * Each pair's id, workload MAC and mode (its vin entry's), from neuv_ids
   * and neuv_ports alone: what a fail-open switch needs, without show's
   * hook and counter reads. Pairs without both entries are left out.
   */
  /**
   * Fail-open's switch (src/dp/watch.ts), synchronous, on the ports and ids
   * maps the caller holds open and under the pin root's lock it holds: every
   * pair in FWD to BYPASS, its port entries marked WATCH_BYPASS in the same
   * write (the switch is its own record: a watcher killed before it writes
   * its state file leaves pairs that `show` and the next watcher still know);
   * back (`to` FWD): every pair in BYPASS with that mark, the mark cleared.
   * No netns switch, lock wait or pin lookup: a few map calls a pair. vex
   * first, then vin, as setMode. The DP's flow decisions of the switched
   * pairs are the caller's to clear (clearPairFlows), after.
   */
  static switchWatched(m: Pick<Maps, 'ports' | 'ids'>, to: typeof Mode.BYPASS | typeof Mode.FWD): Array<{ id: number; mac: string }> {
    const from = to === Mode.BYPASS ? Mode.FWD : Mode.BYPASS;
    const out: Array<{ id: number; mac: string }> = [];
    for (const [k, v] of m.ids.entries()) {
      const ids = decodeId(v);
      const ports = ([ids.vexIfindex, ids.vinIfindex] as const).map((i) => {
        const e = m.ports.lookup(u32Key(i));
        return e ? ([i, decodePort(e)] as const) : undefined;
      });
      if (!ports.every((p) => p && p[1].mode === from && (to === Mode.BYPASS || p[1].flags & PortFlag.WATCH_BYPASS))) continue;
      try {
        for (const [i, e] of ports as Array<readonly [number, PortEntry]>) {
          const flags = to === Mode.BYPASS ? e.flags | PortFlag.WATCH_BYPASS : e.flags & ~PortFlag.WATCH_BYPASS;
          m.ports.update(u32Key(i), encodePort({ ...e, mode: to, flags }), PORT_UPDATE | BPF_EXIST);
        }
      } catch (e) {
        log('pairs').warn({ id: decodeU32Key(k), err: (e as Error).message }, 'a pair changed under the watcher\'s switch (left as it is)');
        continue;
      }
      out.push({ id: decodeU32Key(k), mac: formatMac(ports[1]![1].mac) });
    }
    return out;
  }

  /** The pairs in BYPASS whose port entries carry a watcher's mark (WATCH_BYPASS): id and workload MAC. */
  static heldInMaps(m: Pick<Maps, 'ports' | 'ids'>): Array<{ id: number; mac: string }> {
    const out: Array<{ id: number; mac: string }> = [];
    for (const [k, v] of m.ids.entries()) {
      const ids = decodeId(v);
      const es = [ids.vinIfindex, ids.vexIfindex].map((i) => m.ports.lookup(u32Key(i))).map((e) => (e ? decodePort(e) : undefined));
      if (es.every((e) => e && e.mode === Mode.BYPASS && e.flags & PortFlag.WATCH_BYPASS)) out.push({ id: decodeU32Key(k), mac: formatMac(es[0]!.mac) });
    }
    return out;
  }

  async modes(): Promise<Array<{ id: number; mac: string; mode: ModeName | 'mixed' }>> {
    this.check();
    return withLock(this.pinRoot, () =>
      this.ns.run(() =>
        this.withMaps(['ports', 'ids'], (m) => {
          const out: Array<{ id: number; mac: string; mode: ModeName | 'mixed' }> = [];
          for (const [k, v] of m.ids.entries()) {
            const e = decodeId(v);
            const vin = m.ports.lookup(u32Key(e.vinIfindex));
            const vex = m.ports.lookup(u32Key(e.vexIfindex));
            if (!vin || !vex) continue;
            const a = decodePort(vin);
            const b = decodePort(vex);
            out.push({ id: decodeU32Key(k), mac: formatMac(a.mac), mode: a.mode === b.mode ? (modeName(a.mode) as ModeName) : 'mixed' });
          }
          return out.sort((x, y) => x.id - y.id);
        }),
      ),
    );
  }

  // ---------------------------------------------------------------- del

  /** Removes a pair: detaches vin/vex (and their clsact if we created it), deletes its entries. */
  async delPair(sel: PairSelector): Promise<PairDeleted> {
    const [r] = await this.delPairs([sel]);
    return r!;
  }

  /**
   * Removes many pairs in one go ('all': every pair neuv_ids names), all or
   * nothing: every selector is resolved before the first change (one not
   * found: nothing changes, NotFoundError), then the hooks of every pair
   * (the tc filters and the clsacts we created over one netlink socket:
   * detachMany; a tcx port by itself), then the entries a step at a time
   * (every id, one RCU grace period, every counter, every port: a batch
   * each, removePairsEntries). A failure undoes it all. Last, the flow
   * entries of the pairs gone. One result per pair (a pair named twice is
   * removed once), in the order named.
   */
  async delPairs(sels: PairSelector[] | 'all'): Promise<PairDeleted[]> {
    this.check();
    return withLock(this.pinRoot, () =>
      this.ns.run(() =>
        this.withMaps(['ports', 'ids', 'stats', 'flowStats'], (m) => deletePairs(this.pinRoot, m, sels)),
      ),
    );
  }

  // ---------------------------------------------------------------- show / stats

  /**
   * Every pair with names, ifindexes, MACs, id, mode, hook state and
   * counters, from the pinned maps and the kernel, flagging every
   * inconsistency found.
   */
  async show(): Promise<ShowResult> {
    this.check();
    return withLock(this.pinRoot, async () => {
      const links = new Map([...(await this.links()).values()].map((l) => [l.ifindex, l]));
      return this.ns.run(() => this.withMaps(['ports', 'ids', 'stats', 'global', 'flowStats'], (m) => showPairs(this.pinRoot, m, links)));
    });
  }

  /** Counters per pair and direction (per-CPU values summed) and the global reason counters. */
  async stats(): Promise<StatsSnapshot> {
    this.check();
    return this.ns.run(() =>
      this.withMaps(['ids', 'ports', 'stats', 'global', 'flowStats'], (m) => {
        const { ports, ids } = readState(m);
        const all = readAllStats(m);
        const pairs: PairStats[] = [];
        for (const id of [...all.keys()].sort((a, b) => a - b)) {
          const c = all.get(id)!;
          const e = ids.get(id);
          const port = (ifindex: number | undefined) => (ifindex === undefined ? undefined : ports.get(ifindex));
          const [vinE, vexE] = [port(e?.vinIfindex), port(e?.vexIfindex)];
          const pe = vinE ?? vexE;
          pairs.push({
            id,
            in: e ? (ifIndexToName(e.vinIfindex) ?? null) : null,
            ex: e ? (ifIndexToName(e.vexIfindex) ?? null) : null,
            vinIfindex: e?.vinIfindex ?? null,
            vexIfindex: e?.vexIfindex ?? null,
            mode: !pe ? null : vinE && vexE && vinE.mode !== vexE.mode ? 'mixed' : modeName(pe.mode),
            counters: c,
          });
        }
        return { time: Date.now(), pairs, global: readGlobal(m) };
      }),
    );
  }
}
