/** discover: what the enforcer netns holds (links, qdiscs, filters), classified into NeuVector's pairs; which tc actions this kernel has. */
import * as fs from 'node:fs';
import { AttachKind, attachState } from '../attach';
import { features } from '../features';
import { LinkJson, VBR, linkShow, run } from '../link';
import { log } from '../log';
import { formatMac, ucmac as ucmacOf } from '../mac';
import { NvMode } from './nvtc';

import { DA, NV_PREF_ALL, NV_PREF_IP, RuleError, TcFilter, VbrRule, bad, classifyAllRule, classifyIpRule, classifyVbrRule, isMirror, isOurFilter, macMatched, matchBytes, parseFilterList } from './rules';
import { parseJsonValues } from './tcjson';

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

/** What adopt and handback report of each pair they move. */
export type MigratedPair = Pick<DiscoveredPair, 'in' | 'ex' | 'id' | 'ucmac' | 'mac' | 'mode'>;

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

export function qdiscKind(qdiscs: QdiscJson[], dev: string): QdiscKind {
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
export function batchSafe(dev: string): boolean {
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

