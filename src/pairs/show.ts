/** show: every pair with its entries, hooks and counters, flagging every inconsistency; the counters as named sets. */
import * as fs from 'node:fs';
import { ifIndexToName as ifIndexToNameNow } from '../bpf';
import { AttachKind, attachStates } from '../attach';
import { PortFlag, REASON_NAMES, Role, VBR_IFINDEX, addFlowStats, addGlobal, addStats, decodeU32Key, emptyStats, u32Key } from '../layout';
import { pinnedProgId } from '../pins';
import { bcmac, formatMac, ucmac } from '../mac';

import { PairCounters, PortView, PairView, ShowResult, modeName, namedCounters, namedGlobal } from './spec';
import { LinkInfo, Maps, pairPorts, readState } from './state';
import { loopProblem } from './loops';

/** neuv_stats[id], plus neuv_flow_stats[id] (FAST, FLOW_DROP) when that map is open; null without a neuv_stats entry. */
export function readStats(m: Pick<Maps, 'stats'> & Partial<Pick<Maps, 'flowStats'>>, id: number): PairCounters | null {
  return countersOf(m, m.stats.lookup(u32Key(id)), m.flowStats?.lookup(u32Key(id)));
}

/** A pair's counters from its neuv_stats and neuv_flow_stats values (per-CPU, summed); null without the first. */
function countersOf(m: Pick<Maps, 'stats'> & Partial<Pick<Maps, 'flowStats'>>, v: Buffer | undefined, f: Buffer | undefined): PairCounters | null {
  if (!v) return null;
  const s = emptyStats();
  for (const cpu of m.stats.perCpuValues(v)) addStats(s, cpu);
  if (f) for (const cpu of m.flowStats!.perCpuValues(f)) addFlowStats(s, cpu);
  return namedCounters(s);
}

/** Every counter of neuv_stats and neuv_flow_stats, id -> counters, each map read in one batch (MapFd.entries). */
export function readAllStats(m: Pick<Maps, 'stats'> & Partial<Pick<Maps, 'flowStats'>>): Map<number, PairCounters> {
  const flows = new Map((m.flowStats?.entries() ?? []).map(([k, v]) => [decodeU32Key(k), v]));
  const out = new Map<number, PairCounters>();
  for (const [k, v] of m.stats.entries()) {
    const id = decodeU32Key(k);
    out.set(id, countersOf(m, v, flows.get(id))!);
  }
  return out;
}

export function readGlobal(m: Pick<Maps, 'global'>): Record<(typeof REASON_NAMES)[number], bigint> {
  const g: bigint[] = [];
  const v = m.global.lookup(u32Key(0));
  if (v) for (const cpu of m.global.perCpuValues(v)) addGlobal(g, cpu);
  return namedGlobal(g);
}

/** `links`: this netns's links by ifindex (Datapath.show reads them), for the forwarding-loop check. */
export function showPairs(pinRoot: string, m: Maps, links?: Map<number, LinkInfo>): ShowResult {
  const st = readState(m);
  const progIds = { vin: pinnedProgId(pinRoot, 'vin'), vex: pinnedProgId(pinRoot, 'vex') };
  // Read once for every pair: names (from the caller's link dump when there is one), hooks, counters, the ports of all pairs.
  const ifIndexToName = links ? (i: number) => links.get(i)?.name : ifIndexToNameNow;
  const stats = readAllStats(m);
  const hooks = attachStates(pinRoot, [...new Set([...st.ports.keys(), ...[...st.ids.values()].flatMap((e) => [e.vinIfindex, e.vexIfindex])])]);
  const allPorts = links ? pairPorts(st, (i) => links.get(i)?.name ?? `ifindex ${i}`) : undefined;
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
      const att = hooks.get(ifindex)!;
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
        watchBypass: e ? (e.flags & PortFlag.WATCH_BYPASS) !== 0 : false,
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
    const loop = links && allPorts && g.vin !== undefined && g.vex !== undefined ? pairLoop(allPorts, links, g.vin, g.vex) : undefined;
    if (loop) pp.push(loop);
    const counters = stats.get(id) ?? null;
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
  for (const f of fs.readdirSync(pinRoot)) {
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
  return { pinRoot: pinRoot, pairs, global: readGlobal(m), problems, consistent };
}


/** A pair's forwarding loop (loops.ts), judged against every port in neuv_ports (`ports`: pairPorts). */
function pairLoop(ports: Map<number, string>, links: Map<number, LinkInfo>, vinIf: number, vexIf: number): string | undefined {
  const [vin, vex] = [links.get(vinIf), links.get(vexIf)];
  if (!vin || !vex) return undefined; // a vanished port is its own problem
  const name = (i: number) => links.get(i)?.name ?? `ifindex ${i}`;
  return loopProblem(vin, vex, ports, name)?.line;
}
