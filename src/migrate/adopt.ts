/** adopt: every discovered pair taken over without a gap (see index.ts for the steps). */
import { MapFd, ifIndexToName, ifNameToIndex, testRun } from '../bpf';
import { isLoaded, Pins, withProg } from '../pins';
import { EntryStep, PairMaps, PairWrite, peerElsewhere, portEntries, removePairEntries, samePort, writePairEntries } from '../pairs/entries';
import { Undo } from '../undo';
import { AttachKind, TC_PRIORITY, attachState, detach } from '../attach';
import { ConflictError, NeuvError, NotFoundError, UsageError } from '../errors';
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
} from '../layout';
import { LinkJson, VBR, linkShow, run } from '../link';
import { load } from '../loader';
import { faultPoint } from '../faults';
import { withLock } from '../lock';
import { log } from '../log';
import { parseMac } from '../mac';
import { NvMode } from './nvtc';
import { Datapath } from '../pairs';
import { MapState, checkLoops, linkInfos, readState } from '../pairs/state';

import { DiscoveredPair, Discovery, MigratedPair, NvFilterRef, Unclassified, batchSafe, discover, readFilters } from './discover';
import { TcFilter, isOurFilter } from './rules';

// ================================================================ adopt

export const ADOPT_STEPS = ['seed', 'attach', 'verify', 'remove'] as const;
export type AdoptStep = (typeof ADOPT_STEPS)[number];


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

export interface AdoptedPair extends MigratedPair {
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

/** Removes what seed() created (removePairEntries: the id, an RCU grace period, the counters, the ports). */
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
    withProg(pinRoot, role, (prog) => {
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
    });
  }
  if (p.mode === 'fwd') {
    // What the DP sends back for this UCMAC: neuv_vbr rewrites DA to the workload MAC and redirects to vin.
    withProg(pinRoot, 'vbr', (prog) => {
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
    });
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
  const pinned = withProg(pinRoot, 'vbr', (p) => p.info().id);
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
  const raw = await linkShow();
  const links = new Map(raw.map((l) => [l.ifname, l]));
  // Ports that would loop a frame (veth peers of each other, of another pair's port, of vbr-neuv/vth-neuv) are
  // refused before anything is written or loaded, as pair add refuses them (its check would come after the seed).
  const loopCheck = (st: Pick<MapState, 'ports' | 'ids'>) => checkLoops(pairs.map((p) => ({ in: p.in, ex: p.ex })), linkInfos(raw), st);

  if (!loaded) loopCheck({ ports: new Map(), ids: new Map() });
  else {
    const m = openMaps(pinRoot);
    try {
      checkMaps(m, pairs, links);
      loopCheck(readState(m));
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
      loopCheck(readState(m));
      for (const p of pairs) {
        try {
          faultPoint('adopt:seed', p.in);
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
        faultPoint('adopt:attach', p.in);
        const r = await dp.addPair({ in: p.in, ex: p.ex, mac: p.mac, mode: p.mode, id: p.id });
        if (r.id !== p.id) throw new NeuvError(`pair add gave id ${r.id}, not ${p.id}`);
        if (r.repaired.includes('vin hook')) attachedNow.push({ ifindex: p.vinIfindex, name: p.in });
        if (r.repaired.includes('vex hook')) attachedNow.push({ ifindex: p.vexIfindex, name: p.ex });
        step = 'verify';
        faultPoint('adopt:verify', p.in);
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
          faultPoint('adopt:remove', p.in);
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

