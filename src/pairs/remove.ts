/**
 * Removing pairs (Datapath.delPairs, under the pin root's lock, in its
 * netns, with the maps open): every selector resolved before the first
 * change, then the hooks of every pair (tc filters and the clsacts we
 * created over one netlink socket: detachMany; a tcx port by itself), then
 * the entries a step at a time (removePairsEntries), every step's undo
 * registered so a failure leaves the kernel as it was; last the flow entries
 * of the pairs gone.
 */
import * as fs from 'node:fs';
import { ProgFd, ifIndexToName } from '../bpf';
import { Undo } from '../undo';
import { DetachResult, attach, attachMany, attachStates, detachMany, detachPort, linkPinPath } from '../attach';
import { KernelError } from '../errors';
import { PortEntry, PortFlag, decodeId, u32Key } from '../layout';
import { log } from '../log';
import { faultPoint } from '../faults';
import { clearPairsFlows } from '../flows';
import { removePairsEntries } from './entries';
import { PairDeleted, PairSelector } from './spec';
import { Maps, MapState, readState, resolve, lookupForSelector } from './state';

/** Removes the pairs `sels` names (or all), all or nothing; one result per pair, in the order named. */
export function deletePairs(pinRoot: string, m: Maps, sels: PairSelector[] | 'all'): PairDeleted[] {
  // A few by name or id: looked up; many, or all: the maps read whole (one batch each).
  let st: Pick<MapState, 'ports' | 'ids'>;
  if (sels === 'all' || sels.length > 8) st = readState(m);
  else {
    st = { ports: new Map(), ids: new Map() };
    for (const s of sels) {
      const one = lookupForSelector(m, s);
      for (const [k, v] of one.ports) st.ports.set(k, v);
      for (const [k, v] of one.ids) st.ids.set(k, v);
    }
  }
  const named: PairSelector[] = sels === 'all' ? [...st.ids.keys()].sort((a, b) => a - b).map((id) => ({ id })) : sels;
  const byId = new Map<number, { sel: PairSelector; r: ReturnType<typeof resolve> }>();
  for (const sel of named) {
    const r = resolve(sel, st);
    if (!byId.has(r.id)) byId.set(r.id, { sel, r });
  }
  const targets = [...byId.values()];
  if (!targets.length) return [];
  const undo = new Undo('pairs');
  const progs = new Map<number, ProgFd>();
  const detached = targets.map((): string[] => []);
  const qdiscsRemoved = targets.map((): string[] => []);
  try {
    // Hooks first: from then on frames of the pairs take the normal path.
    const hooked: Array<{ t: number; ifindex: number; name: string; ours: boolean }> = [];
    const gone: number[] = [];
    targets.forEach(({ r }, t) => {
      for (const ifindex of [r.vin, r.vex]) {
        if (ifindex === undefined) continue;
        const e = st.ports.get(ifindex);
        if (e && e.id !== r.id) continue; // the port belongs to another pair now: not ours to detach
        const name = ifIndexToName(ifindex);
        if (!name) gone.push(ifindex);
        else hooked.push({ t, ifindex, name, ours: e !== undefined && (e.flags & PortFlag.QDISC_OURS) !== 0 });
      }
    });
    const cur = attachStates(pinRoot, [...gone, ...hooked.map((h) => h.ifindex)]);
    // A port gone: only its entries and maybe a defunct tcx link pin are left.
    for (const i of gone) if (cur.get(i)!.kind === 'tcx') fs.rmSync(linkPinPath(pinRoot, i), { force: true });
    const progOf = (id: number) => {
      let p = progs.get(id);
      if (!p) progs.set(id, (p = ProgFd.fromId(id)));
      return p;
    };
    const done = (h: (typeof hooked)[number], d: DetachResult) => {
      if (d.detached) detached[h.t]!.push(h.name);
      if (d.qdiscRemoved) qdiscsRemoved[h.t]!.push(h.name);
    };
    // The programs attached now, held for an undo before their hooks go.
    for (const h of hooked) {
      const c = cur.get(h.ifindex)!;
      if (c.kind !== 'none' && !c.defunct) progOf(c.progId);
    }
    // A tcx port by itself (its link pinned), the tc ports together.
    const tc = hooked.filter((h) => cur.get(h.ifindex)!.kind !== 'tcx');
    for (const h of hooked) {
      const c = cur.get(h.ifindex)!;
      if (c.kind !== 'tcx') continue;
      done(h, detachPort(pinRoot, h.ifindex, h.name, h.ours));
      if (!c.defunct) undo.push(`reattach ${h.name}`, () => attach(pinRoot, h.ifindex, h.name, progOf(c.progId).fd, 'tcx'));
    }
    // Undone together as they were attached (attachMany: their qdiscs, one grace period, their filters).
    const live = tc.filter((h) => cur.get(h.ifindex)!.kind === 'tc');
    if (live.length) {
      undo.push(`reattach ${live.length} hooks`, () =>
        attachMany(
          live.map((h) => {
            const p = progOf(cur.get(h.ifindex)!.progId);
            const i = p.info();
            return { ifindex: h.ifindex, name: h.name, progFd: p.fd, progName: `${i.name}:[${i.id}]` };
          }),
        ),
      );
    }
    const ds = detachMany(tc.map((h) => ({ ifindex: h.ifindex, name: h.name, qdiscOurs: h.ours })));
    tc.forEach((h, k) => done(h, ds[k]!));
    const bad = ds.findIndex((d) => d.errno !== undefined);
    if (bad >= 0) throw new KernelError(`detach ${tc[bad]!.name} ingress`, ds[bad]!.errno!);
    for (let k = 0; k < hooked.length; k++) faultPoint('pair-del:after-detach');
    // Only the ids entry of this very pair (by id always; by name only if it points here).
    removePairsEntries(
      m,
      targets.map(({ sel, r }) => {
        const idv = st.ids.has(r.id) ? undefined : m.ids.lookup(u32Key(r.id)); // a selector by name looks up no ids entry
        const idNow = st.ids.get(r.id) ?? (idv ? decodeId(idv) : undefined);
        const ports: Array<{ ifindex: number; old: PortEntry }> = [];
        for (const ifindex of [r.vex, r.vin]) {
          const e = ifindex === undefined ? undefined : st.ports.get(ifindex);
          if (e && e.id === r.id) ports.push({ ifindex: ifindex!, old: e });
        }
        return { id: r.id, ids: idNow !== undefined && ('id' in sel || idNow.vinIfindex === r.vin || idNow.vexIfindex === r.vex), ports, stats: 'unless-id' as const };
      }),
      { undo, onStep: (_, step) => (step === 'ids' ? faultPoint('pair-del:after-ids') : step === 'port' ? faultPoint('pair-del:after-port') : undefined) },
    );
  } catch (e) {
    undo.runSync();
    throw e;
  } finally {
    for (const p of progs.values()) p.close();
  }
  // Last (nothing to undo after it): the flow entries and flow counters of the pairs whose id is gone.
  const idless = new Set(targets.filter(({ r }) => m.ids.lookup(u32Key(r.id)) === undefined).map(({ r }) => r.id));
  const flows = clearPairsFlows(pinRoot, idless);
  for (const id of idless) m.flowStats?.delete(u32Key(id));
  const out = targets.map(({ r }, t): PairDeleted => {
    const res: PairDeleted = {
      id: r.id,
      in: r.vin !== undefined ? (ifIndexToName(r.vin) ?? null) : null,
      ex: r.vex !== undefined ? (ifIndexToName(r.vex) ?? null) : null,
      vinIfindex: r.vin ?? null,
      vexIfindex: r.vex ?? null,
      detached: detached[t]!,
      qdiscsRemoved: qdiscsRemoved[t]!,
    };
    if (flows.get(r.id)) res.flowsCleared = flows.get(r.id);
    return res;
  });
  if (out.length === 1) log('pairs').info(out[0], 'pair deleted');
  else log('pairs').info({ pairs: out.length, flowsCleared: [...flows.values()].reduce((a, b) => a + b, 0) }, 'pairs deleted');
  return out;
}
