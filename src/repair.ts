/**
 * State checks and repair: what `show --check` reports and `neuv-bpf repair`
 * fixes when the maps, the hooks and the interfaces disagree, whether a
 * neuv-bpf run was killed half way or someone changed the kernel behind our
 * back (`ip link del` of a port, `tc qdisc del` of a hook, `rm` of a pin).
 *
 * The per-pair checks are Datapath.show()'s (src/pairs/show.ts); this module adds
 * the datapath-wide ones show does not make: program pins, vbr-neuv and its
 * hook, neuv_config's dp_ifindex, pins left by a killed load, and the modes
 * of the pin directory and pins.
 *
 * Repair goes through the same idempotent operations the commands use, so
 * it cannot invent a state no command would write:
 *  - a pair whose entries are intact but that lost a hook, runs a stale
 *    program, or lost its ids/stats/port entry: `pair add` of its own spec
 *    (read back from the surviving entries), which re-attaches and rewrites
 *    what is missing;
 *  - a pair left with mixed modes (a `pair mode` killed between its two
 *    updates): `pair mode` to the vex entry's mode, the one written first;
 *  - a pair one of whose ports vanished, or an ids entry without port entries
 *    (an add killed before its port entries): `pair del --id`;
 *  - counters without a pair, tcx link pins without a pair, `prog_*_new` pins:
 *    removed; vbr-neuv's hook re-attached from the pinned program;
 *    dp_ifindex rewritten; pin modes set back to 0700/0600.
 * What needs the object file (no program pins, no vbr-neuv) is left, naming
 * `neuv-bpf load` as the fix.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ProgFd, tcQuery } from './bpf';
import { TC_HANDLE, TC_PRIORITY, attach, attachState, detach, preferredKind } from './attach';
import { NeuvError, ExitCode } from './errors';
import { Role, VBR_IFINDEX, decodeConfig, decodeId, decodePort, decodeU32Key, u32Key } from './layout';
import { updateConfig } from './config';
import { VBR, VTH, ifindexIfExists, ifname, linkShow } from './link';
import { PROGS, Pins, ProgRole, isLoaded, notLoaded, pinnedProgId, progPinPath, withProg } from './pins';
import { withLock } from './lock';
import { checkHome } from './home';
import { log } from './log';
import { journalProblems, recoverAll } from './intercept/journal';
import { lostProblems, recoverAllLost } from './intercept/salvage';
import { formatMac } from './mac';
import { Datapath, PairView, ShowResult } from './pairs';
import { isLoopProblem } from './pairs/loops';

const progRoles = (): ProgRole[] => Object.keys(PROGS) as ProgRole[];

function modeOf(p: string): number {
  return fs.statSync(p).mode & 0o777;
}

/**
 * Datapath-wide problems (not tied to a pair), in the current netns. Each
 * string names the problem and, where repair cannot fix it, the command that does.
 */
export async function datapathProblems(pinRoot: string): Promise<string[]> {
  const out: string[] = [...journalProblems(pinRoot), ...(await lostProblems(pinRoot))];
  if (!isLoaded(pinRoot)) return [...out, `the datapath is not loaded (no maps under ${pinRoot}): run neuv-bpf load`];
  const missing = progRoles().filter((r) => !fs.existsSync(progPinPath(pinRoot, r)));
  if (missing.length) out.push(`program pin${missing.length > 1 ? 's' : ''} ${missing.map((r) => `prog_${r}`).join(', ')} missing under ${pinRoot} (a load was killed?): run neuv-bpf load`);
  for (const f of fs.readdirSync(pinRoot)) {
    if (/^prog_[a-z]+_new$/.test(f)) out.push(`${f} is a leftover of a killed load`);
  }
  const vbr = ifindexIfExists(VBR);
  if (!vbr) out.push(`${VBR} does not exist in this network namespace: run neuv-bpf load (or use --netns)`);
  else {
    if (!ifindexIfExists(VTH)) out.push(`${VTH} (the DP's end of ${VBR}) is missing: run neuv-bpf load`);
    const att = attachState(pinRoot, vbr);
    const want = pinnedProgId(pinRoot, 'vbr');
    if (att.kind === 'none' || att.defunct) out.push(`the ${VBR} hook is not attached (frames from the DP are not delivered)`);
    else if (want && att.progId !== want) out.push(`the ${VBR} hook runs program id ${att.progId}, not the pinned vbr program (id ${want})`);
    try {
      const v = Pins.with(pinRoot, ['config'], (m) => m.config.lookup(u32Key(0)));
      const c = v ? decodeConfig(v) : undefined;
      if (!c || c.dpIfindex !== vbr) out.push(`neuv_config says the DP port is ifindex ${c?.dpIfindex ?? 'none'}, but ${VBR} is ifindex ${vbr}`);
    } catch (e) {
      out.push(`cannot read neuv_config: ${(e as Error).message}`);
    }
  }
  for (const h of await strayHooks(pinRoot)) {
    out.push(`${h.name} (ifindex ${h.ifindex}) runs our ${h.prog} program but is in no pair (a pair add or del cut short?)`);
  }
  if (modeOf(pinRoot) !== 0o700) out.push(`pin directory ${pinRoot} has mode ${modeOf(pinRoot).toString(8)}, not 700`);
  for (const f of fs.readdirSync(pinRoot)) {
    const m = modeOf(path.join(pinRoot, f));
    if (m !== 0o600) out.push(`pin ${f} has mode ${m.toString(8)}, not 600`);
  }
  return out;
}

/**
 * Ports in this netns with our tc filter (handle 0x4e56, pref 1, running one
 * of our port programs) that no map entry names (no neuv_ports entry of their
 * own, no entry pointing at them, no neuv_ids entry): what a pair add killed
 * after its hooks leaves. (A tcx link pin without a pair is one of show's own
 * problems.)
 */
export async function strayHooks(pinRoot: string): Promise<Array<{ ifindex: number; name: string; prog: string }>> {
  // Ports some entry still names (a pair missing one port entry) are the per-pair repair's.
  const raw = readRaw(pinRoot);
  const named = new Set<number>();
  for (const [ifindex, e] of raw.ports) named.add(ifindex).add(e.peerIfindex);
  for (const e of raw.ids.values()) named.add(e.vinIfindex).add(e.vexIfindex);
  const out: Array<{ ifindex: number; name: string; prog: string }> = [];
  {
    for (const l of await linkShow()) {
      if (l.ifname === VBR || l.ifname === VTH || named.has(l.ifindex)) continue;
      const id = tcQuery(l.ifindex, TC_HANDLE, TC_PRIORITY);
      if (!id) continue;
      let name = '';
      try {
        const p = ProgFd.fromId(id);
        try {
          name = p.info().name;
        } finally {
          p.close();
        }
      } catch {
        continue;
      }
      if (name === PROGS.vin || name === PROGS.vex) out.push({ ifindex: l.ifindex, name: l.ifname, prog: name });
    }
  }
  return out;
}

export interface CheckResult {
  show: ShowResult;
  /** Every problem, one line each: datapath-wide first, then "pair id N: ...", then show's own. */
  problems: string[];
  consistent: boolean;
}

/** show() plus the datapath-wide checks, flattened into one list. */
export async function check(dp: Datapath, pinRoot: string): Promise<CheckResult> {
  const show = await dp.show();
  const wide = await withLock(pinRoot, () => datapathProblems(pinRoot));
  const problems = [
    ...wide,
    ...show.pairs.flatMap((p) => p.problems.map((x) => `pair id ${p.id}${pairName(p)}: ${x}`)),
    ...show.problems,
  ];
  return { show, problems, consistent: problems.length === 0 };
}

function pairName(p: PairView): string {
  const n = [p.vin?.name, p.vex?.name];
  return n[0] || n[1] ? ` (${n[0] ?? '?'}/${n[1] ?? '?'})` : '';
}

/** Adds the datapath-wide problems to a ShowResult (for `show --check`). */
export function withDatapathProblems(r: ShowResult, pinRoot: string): Promise<ShowResult> {
  return withLock(pinRoot, async () => {
    const wide = await datapathProblems(pinRoot);
    return { ...r, problems: [...wide, ...r.problems], consistent: r.consistent && wide.length === 0 };
  });
}

/** The one line `show --check` fails with. */
export function checkFailure(r: ShowResult): NeuvError {
  const all = [...r.problems, ...r.pairs.flatMap((p) => p.problems.map((x) => `pair id ${p.id}${pairName(p)}: ${x}`))];
  const more = all.length > 1 ? ` (and ${all.length - 1} more; neuv-bpf repair fixes what it can)` : ' (neuv-bpf repair fixes what it can)';
  return new NeuvError(`inconsistent: ${all[0] ?? 'unknown problem'}${more}`, ExitCode.FAILURE);
}

// ================================================================ repair

export interface RepairResult {
  pinRoot: string;
  /** What was done (or, with dryRun, would be done), one line each. */
  actions: string[];
  /** Problems still there afterwards (with dryRun: every problem found). */
  left: string[];
  consistent: boolean;
  dryRun: boolean;
}

interface RawState {
  ports: Map<number, ReturnType<typeof decodePort>>;
  ids: Map<number, { vinIfindex: number; vexIfindex: number }>;
}

function readRaw(pinRoot: string): RawState {
  const ports = new Map<number, ReturnType<typeof decodePort>>();
  const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
  Pins.with(pinRoot, ['ports', 'ids'], (m) => {
    for (const [k, v] of m.ports.entries()) ports.set(decodeU32Key(k), decodePort(v));
    for (const [k, v] of m.ids.entries()) ids.set(decodeU32Key(k), decodeId(v));
  });
  return { ports, ids };
}

type PairPlan =
  | { kind: 'del'; id: number; why: string }
  | { kind: 'mode'; id: number; mode: 'fwd' | 'tap' | 'bypass' | 'drop'; why: string }
  | { kind: 'add'; id: number; spec: { in: string; ex: string; mac: string; id: number; ipv6ToDp: boolean }; why: string }
  | { kind: 'left'; id: number; why: string };

/** Decides what to do about one pair with problems (pure apart from name lookups). */
function planPair(p: PairView, raw: RawState): PairPlan {
  const first = p.problems[0] ?? '';
  const vanished = [p.vin, p.vex].find((v) => v && v.name === null);
  if (vanished) return { kind: 'del', id: p.id, why: `its ${vanished.role} (ifindex ${vanished.ifindex}) vanished` };
  const ein = p.vin ? raw.ports.get(p.vin.ifindex) : undefined;
  const eex = p.vex ? raw.ports.get(p.vex.ifindex) : undefined;
  if (!ein && !eex) return { kind: 'del', id: p.id, why: 'its ids entry has no port entries (an add killed half way, or entries deleted behind our back)' };
  // Entries that contradict each other: not ours to guess.
  const odd = p.problems.find((x) => /claims to be|has role|carries id|points at ifindex|disagree on the MAC|disagree on ipv6ToDp|unknown role/.test(x));
  if (odd) return { kind: 'left', id: p.id, why: `${odd}: remove it with neuv-bpf pair del --id ${p.id} and add it again` };
  if (ein && eex && ein.mode !== eex.mode) {
    const m = ({ 1: 'fwd', 2: 'tap', 3: 'bypass', 4: 'drop' } as const)[eex.mode as 1 | 2 | 3 | 4];
    if (!m) return { kind: 'left', id: p.id, why: `the vex entry has an unknown mode ${eex.mode}` };
    return { kind: 'mode', id: p.id, mode: m, why: `vin and vex disagree on the mode (a mode switch was cut short); the vex's ${m} was written first` };
  }
  // One side's entry may be missing: find both ports from what survives.
  const e = (ein ?? eex)!;
  const vinIf = p.vin?.ifindex ?? (ein ? undefined : e.role === Role.VEX ? e.peerIfindex : undefined);
  const vexIf = p.vex?.ifindex ?? (eex ? undefined : e.role === Role.VIN ? e.peerIfindex : undefined);
  const vinName = vinIf !== undefined ? ifname(vinIf) : undefined;
  const vexName = vexIf !== undefined ? ifname(vexIf) : undefined;
  if (!vinName || !vexName) return { kind: 'del', id: p.id, why: `a port of the pair is gone (${!vinName ? 'vin' : 'vex'})` };
  return {
    kind: 'add',
    id: p.id,
    spec: { in: vinName, ex: vexName, mac: formatMac(e.mac), id: p.id, ipv6ToDp: p.ipv6ToDp },
    why: first,
  };
}

/**
 * Removes the pairs that make a forwarding loop (src/pairs/loops.ts), one at
 * a time, lowest id first, looking again after each: when two pairs loop
 * through each other, removing one is enough and the other stays. Returns
 * the ids removed (with dryRun: every pair with a loop, none removed).
 */
async function removeLoopPairs(dp: Datapath, shown: ShowResult, act: (line: string, fn: () => unknown) => unknown): Promise<Set<number>> {
  const out = new Set<number>();
  const loopOf = (p: PairView) => p.problems.find(isLoopProblem);
  for (let pairs = shown.pairs; ; pairs = (await dp.show()).pairs) {
    const p = pairs.find((x) => !out.has(x.id) && loopOf(x));
    if (!p) return out;
    out.add(p.id);
    await act(`removed pair id ${p.id}${pairName(p)}: ${loopOf(p)}`, () => dp.delPair({ id: p.id }));
  }
}

/**
 * Fixes what can be fixed (see the file comment); with dryRun only says
 * what it would do. The caller has entered the right netns (the CLI's --netns).
 */
export async function repair(pinRoot: string, opts: { dryRun?: boolean } = {}): Promise<RepairResult> {
  const lg = log('repair');
  const dryRun = opts.dryRun === true;
  checkHome(pinRoot); // pairs name ifindexes: only in the netns the datapath lives in
  // Half-done intercepts and releases first (the journal): they change pairs and ports.
  const journal = await recoverAll({ pinRoot, dryRun });
  const lost = await recoverAllLost(pinRoot, dryRun); // records lost or unreadable: from the kernel's markers
  journal.actions.push(...lost.actions);
  journal.left.push(...lost.left);
  for (const a of journal.actions) lg.info({ action: a, dryRun }, dryRun ? 'would repair' : 'repairing');
  if (!isLoaded(pinRoot)) throw notLoaded(pinRoot);
  const dp = Datapath.open(pinRoot);
  const actions: string[] = [...journal.actions];
  const act = (line: string, fn: () => unknown): unknown => {
    actions.push(line);
    lg.info({ action: line, dryRun }, dryRun ? 'would repair' : 'repairing');
    return dryRun ? undefined : fn();
  };
  try {
    const before = await check(dp, pinRoot);
    if (before.consistent) return { pinRoot, actions, left: [], consistent: true, dryRun };

    // ---- datapath-wide, under the lock (direct map and pin changes)
    await withLock(pinRoot, async () => {
      for (const h of await strayHooks(pinRoot)) {
        act(`detached ${h.prog} from ${h.name}, which is in no pair (its clsact qdisc stays: who created it is not recorded)`, () => detach(pinRoot, h.ifindex, h.name, false));
      }
      for (const f of fs.readdirSync(pinRoot)) {
        if (/^prog_[a-z]+_new$/.test(f)) act(`removed ${f} (left by a killed load)`, () => fs.rmSync(path.join(pinRoot, f), { force: true }));
      }
      const vbr = ifindexIfExists(VBR);
      if (vbr && fs.existsSync(progPinPath(pinRoot, 'vbr'))) {
        const att = attachState(pinRoot, vbr);
        const want = pinnedProgId(pinRoot, 'vbr');
        if (att.kind === 'none' || att.defunct || att.progId !== want) {
          act(`attached the pinned vbr program (id ${want}) to ${VBR} ingress`, () => {
            withProg(pinRoot, 'vbr', (p) => attach(pinRoot, vbr, VBR, p.fd, att.kind === 'none' || att.defunct ? preferredKind() : att.kind));
          });
        }
        Pins.with(pinRoot, ['config'], ({ config: cfg }) => {
          const v = cfg.lookup(u32Key(0));
          const was = v ? decodeConfig(v).dpIfindex : 0;
          if (was !== vbr) act(`set neuv_config dp_ifindex to ${vbr} (${VBR}), was ${was}`, () => updateConfig(pinRoot, cfg, (c) => ({ ...c, dpIfindex: vbr })));
        });
      }
      // Stray counters and tcx link pins (show's global problems).
      const raw = readRaw(pinRoot);
      const pairIds = new Set<number>([...raw.ids.keys(), ...[...raw.ports.values()].map((e) => e.id)]);
      Pins.with(pinRoot, ['stats'], ({ stats }) => {
        for (const k of stats.keys()) {
          const id = decodeU32Key(k);
          if (!pairIds.has(id)) act(`removed the counters of id ${id}, which has no pair`, () => stats.delete(k));
        }
      });
      for (const f of fs.readdirSync(pinRoot)) {
        const m = /^link_(\d+)$/.exec(f);
        if (!m) continue;
        const ifindex = Number(m[1]);
        if (ifindex === VBR_IFINDEX || raw.ports.has(ifindex)) continue;
        const nm = ifname(ifindex);
        act(`detached and unpinned tcx link ${f} (${nm ?? 'no interface'}), which is in no pair`, () => detach(pinRoot, ifindex, nm ?? `ifindex ${ifindex}`, false));
      }
    });

    // ---- pairs, through the Datapath API (each call takes the lock itself): forwarding loops first
    const looped = await removeLoopPairs(dp, before.show, act);
    const pairsNow = looped.size && !dryRun ? (await dp.show()).pairs : before.show.pairs;
    const raw = await withLock(pinRoot, () => readRaw(pinRoot));
    for (const p of pairsNow) {
      if (!p.problems.length || looped.has(p.id)) continue;
      const plan = planPair(p, raw);
      switch (plan.kind) {
        case 'del':
          await act(`removed pair id ${p.id}${pairName(p)}: ${plan.why}`, () => dp.delPair({ id: p.id }));
          break;
        case 'mode':
          await act(`set pair id ${p.id}${pairName(p)} to ${plan.mode}: ${plan.why}`, () => dp.setMode({ id: p.id }, plan.mode));
          break;
        case 'add':
          await act(`re-added pair id ${p.id} (${plan.spec.in}/${plan.spec.ex}, MAC ${plan.spec.mac}) to restore it: ${plan.why}`, async () => {
            const r = await dp.addPair(plan.spec);
            if (r.repaired.length) actions[actions.length - 1] += ` (repaired: ${r.repaired.join(', ')})`;
          });
          break;
        case 'left':
          break;
      }
    }

    // ---- pin modes last (re-added pins included)
    await withLock(pinRoot, () => {
      if (modeOf(pinRoot) !== 0o700) act(`set ${pinRoot} to mode 700`, () => fs.chmodSync(pinRoot, 0o700));
      for (const f of fs.readdirSync(pinRoot)) {
        const p = path.join(pinRoot, f);
        if (modeOf(p) !== 0o600) act(`set pin ${f} to mode 600`, () => fs.chmodSync(p, 0o600));
      }
    });

    const after = dryRun ? before : await check(dp, pinRoot);
    // A record that could not be recovered is also one of the problems: say why once.
    const left = [...journal.left, ...after.problems.filter((x) => !journal.left.some((l) => l.startsWith(x)))];
    return { pinRoot, actions, left, consistent: after.consistent, dryRun };
  } finally {
    dp.close();
  }
}
