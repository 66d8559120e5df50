/** handback: NeuVector's rules back for every pair, then neuv-bpf removed (see index.ts). */
import { ifNameToIndex } from '../bpf';
import { detach } from '../attach';
import { ExitCode, NeuvError, NotFoundError } from '../errors';
import { features } from '../features';
import { VBR, run } from '../link';
import { isLoaded, removePinRoot } from '../pins';
import { withLock } from '../lock';
import { log } from '../log';
import { formatMac, parseMac, ucmac as ucmacOf } from '../mac';
import { NvMode, NvPair, nvPairRules, nvPref } from './nvtc';
import { Datapath, PairView } from '../pairs';

import { DiscoveredPair, MigratedPair, TcActions, classifyNode, qdiscKind, snapshot, tcActions } from './discover';
import { NV_PREF_ALL, NV_PREF_IP } from './rules';

// ================================================================ handback

export interface HandbackPair extends MigratedPair {
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
    await withLock(pinRoot, () => removePinRoot(pinRoot));
    res.unloaded = true;
    lg.info({ pairs: pairs.length }, 'handed back to NeuVector');
    return res;
  } finally {
    dp.close();
  }
}

