/** What the maps say about pairs (read in one go or per selector), and `pair add`'s plan: every spec resolved against the links and maps before any change. */
import { ifNameToIndex } from '../bpf';
import { Pins } from '../pins';
import { AttachKind, preferredKind } from '../attach';
import { ConflictError, NotFoundError, UsageError } from '../errors';
import { Mode, ModeValue, PortEntry, PortFlag, Role, VBR_IFINDEX, VTH_IFINDEX, decodeId, decodePort, decodeU32Key, u32Key } from '../layout';
import { LinkJson, validateIfName } from '../link';
import { formatMac } from '../mac';
import { peerElsewhere } from './entries';
import { loopProblem, peerHere, peerThere } from './loops';

import { PairSelector, PairAdded, ValidSpec, labelled, modeName, parsePortId, IdRequest, allocateIds } from './spec';

// ================================================================ reading the maps

// ================================================================ the datapath

export type Maps = Pins;

/** What the maps hold, read in one go. */
export interface MapState {
  ports: Map<number, PortEntry>;
  ids: Map<number, { vinIfindex: number; vexIfindex: number }>;
  statsKeys: Set<number>;
}

export interface LinkInfo {
  ifindex: number;
  name: string;
  kind: string | undefined;
  /** The veth's peer lives in another netns. */
  peerElsewhere: boolean;
  /** The veth's peer's ifindex, when it is in this netns (loops.ts). */
  peerIfindex?: number;
  /** Its peer in another netns: that netns's id here and the peer's ifindex there (loops.ts). */
  peerNetnsid?: number;
  peerIndex?: number;
}

/** A pair of the batch, resolved against the kernel. */
export interface Plan {
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

export function describePair(st: Pick<MapState, 'ids'>, id: number, name: (i: number) => string): string {
  const e = st.ids.get(id);
  return e ? `pair ${name(e.vinIfindex)}/${name(e.vexIfindex)} (id ${id})` : `port entries of id ${id}`;
}

/** Every port neuv_ports names: ifindex -> "the vin of pair a/b (id 7)" (the ports a peer must not be: loops.ts). */
export function pairPorts(st: Pick<MapState, 'ports' | 'ids'>, name: (i: number) => string): Map<number, string> {
  const out = new Map<number, string>();
  for (const [ifindex, e] of st.ports) out.set(ifindex, `the ${e.role === Role.VIN ? 'vin' : 'vex'} of ${describePair(st, e.id, name)}`);
  return out;
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

export type RoleValueT = (typeof Role)[keyof typeof Role];

export function readState(m: Pick<Maps, 'ports' | 'ids' | 'stats'>): MapState {
  const ports = new Map<number, PortEntry>();
  for (const [k, v] of m.ports.entries()) ports.set(decodeU32Key(k), decodePort(v));
  const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
  for (const [k, v] of m.ids.entries()) ids.set(decodeU32Key(k), decodeId(v));
  const statsKeys = new Set(m.stats.keys().map(decodeU32Key));
  return { ports, ids, statsKeys };
}

/** Resolves a selector to the pair's ifindexes and id, from the maps (names in this netns). */
export function resolve(sel: PairSelector, st: Pick<MapState, 'ports' | 'ids'>): { id: number; vin?: number; vex?: number } {
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
export function lookupForSelector(m: Pick<Maps, 'ports' | 'ids'>, sel: PairSelector): Pick<MapState, 'ports' | 'ids'> {
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

/** This netns's links by name, from `ip -d -j link show`, as planPairs and checkLoops need them. */
export function linkInfos(raw: LinkJson[]): Map<string, LinkInfo> {
  const byName = new Map(raw.map((l) => [l.ifname, l]));
  return new Map(
    raw.map((l) => [l.ifname, { ifindex: l.ifindex, name: l.ifname, kind: l.linkinfo?.info_kind, peerElsewhere: peerElsewhere(l), peerIfindex: peerHere(l, byName), ...peerThere(l) }]),
  );
}

/**
 * Refuses (before any change) a batch of pairs whose ports would forward a
 * frame back into our programs (loops.ts), judged against every port in the
 * maps and of the batch: pair add, intercept and adopt. A port not found is
 * left to the caller's own checks.
 */
export function checkLoops(batch: Array<{ in: string; ex: string; label?: string }>, links: Map<string, LinkInfo>, st: Pick<MapState, 'ports' | 'ids'>): void {
  const byIndex = new Map<number, LinkInfo>();
  for (const l of links.values()) byIndex.set(l.ifindex, l);
  const name = (i: number) => byIndex.get(i)?.name ?? `ifindex ${i}`;
  // Every port that runs (or, with this batch, will run) our programs: a peer of a pair's port must be none.
  const ports = pairPorts(st, name);
  for (const b of batch) {
    for (const [role, n] of [['vin', b.in], ['vex', b.ex]] as const) {
      const l = links.get(n);
      if (l && !ports.has(l.ifindex)) ports.set(l.ifindex, `the ${role} of ${b.label || `${b.in}/${b.ex}`}`);
    }
  }
  for (const b of batch) {
    const vin = links.get(b.in);
    const vex = links.get(b.ex);
    if (!vin || !vex) continue;
    labelled(b.label, () => {
      const loop = loopProblem(vin, vex, ports, name);
      if (loop) throw new (loop.otherPair ? ConflictError : UsageError)(`${b.in}/${b.ex}: ${loop.line}`);
    });
  }
}

/** Resolves every spec against the links and maps; throws before any change. */
export function planPairs(valid: ValidSpec[], labels: string[], links: Map<string, LinkInfo>, st: MapState): Plan[] {
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

  // After every spec's own checks (a port already in a pair is said as such first, whichever line it is on).
  checkLoops(valid.map((s, i) => ({ in: s.in, ex: s.ex, label: labels[i] || undefined })), links, st);
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

