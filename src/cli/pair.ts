/**
 * Commands `pair add / mode / del`, `show` and `stats`: a thin shell over
 * Datapath (src/pairs/). Parsing and printing only; every decision lives
 * in the API.
 */
import { Option } from 'commander';
import { CommandRegistrar, Ctx, printJson, throughService, warnIfNoDp, withDatapath } from './context';
import { UsageError } from '../errors';
import { CLEAR_SCREEN, perSecond, si, table } from '../format';
import { DIR_NAMES, REASON_NAMES, VERDICT_NAMES } from '../layout';
import {
  ADD_MODES,
  Datapath,
  MODES,
  PairAdded,
  PairCounters,
  PairDeleted,
  PairSelector,
  PairSpec,
  PairView,
  ShowResult,
  StatsSnapshot,
  delivered,
  parsePairLines,
  parsePortId,
} from '../pairs';
import { checkFailure, withDatapathProblems } from '../repair';
import { heldByWatch } from '../dp/watch-state';
import { readInputFile } from '../input';
import { PORT_ID, WATCH_INTERVAL } from '../numbers';
import { integerOption, secondsOption } from './options';
import { onStopSignal } from '../signals';

interface SelOpts {
  in?: string;
  ex?: string;
  id?: number | string;
}

/** Exactly one of --in, --ex, --id. */
export function selectorFrom(o: SelOpts): PairSelector {
  const given = (['in', 'ex', 'id'] as const).filter((k) => o[k] !== undefined);
  if (given.length !== 1) throw new UsageError('name the pair with exactly one of --in VIN, --ex VEX or --id N');
  if (o.in !== undefined) return { in: o.in };
  if (o.ex !== undefined) return { ex: o.ex };
  return { id: parsePortId(o.id, '--id') };
}

function addedLine(r: PairAdded): string {
  const head = r.created ? 'added' : 'exists';
  const extra = r.repaired.length ? ` (repaired: ${r.repaired.join(', ')})` : '';
  return `${head} ${r.in}/${r.ex}: id ${r.id} ucmac ${r.ucmac} bcmac ${r.bcmac} mode ${r.mode}${extra}`;
}



// ---------------------------------------------------------------- show

function hooks(p: PairView): string {
  const a = [p.vin?.attached ? 'vin' : '', p.vex?.attached ? 'vex' : ''].filter(Boolean);
  const kinds = [...new Set([p.vin?.attach, p.vex?.attach].filter((k) => k && k !== 'none'))].join('+');
  return a.length === 2 ? `both ${kinds}` : a.length === 1 ? `${a[0]} only ${kinds}` : 'none';
}

function flags(p: PairView & { heldByWatch?: string }): string {
  const f: string[] = [];
  if (p.heldByWatch) f.push('watch');
  const rp = [p.vin?.redirectPeer ? 'vin' : '', p.vex?.redirectPeer ? 'vex' : ''].filter(Boolean);
  if (rp.length) f.push(`peer:${rp.join('+')}`);
  if (p.ipv6ToDp) f.push('ipv6');
  const q = [p.vin?.qdiscOurs ? 'vin' : '', p.vex?.qdiscOurs ? 'vex' : ''].filter(Boolean);
  if (q.length) f.push(`qdisc:${q.join('+')}`);
  return f.join(',') || '-';
}

function portCell(v: PairView['vin']): string {
  if (!v) return '-';
  return `${v.name ?? '?'} (${v.ifindex})`;
}

/**
 * show's result, each pair a fail-open watcher holds in BYPASS marked with since when: from the watch state
 * file, or, for a pair whose entries carry the watcher's mark but that the file lacks (a watcher killed
 * between its switch and its write), 'unknown (not recorded)'.
 */
function markHeld(r: ShowResult, pinRoot: string): ShowResult {
  const held = heldByWatch(pinRoot, r.pairs);
  for (const p of r.pairs) {
    if (!held.has(p.id) && p.mode === 'bypass' && p.vin?.watchBypass && p.vex?.watchBypass) held.set(p.id, 'unknown (not recorded)');
  }
  if (!held.size) return r;
  return { ...r, pairs: r.pairs.map((p) => (held.has(p.id) ? { ...p, heldByWatch: held.get(p.id)! } : p)) };
}

export function formatShow(r: ShowResult): string[] {
  const out: string[] = [];
  out.push(`pin root ${r.pinRoot}: ${r.pairs.length} pair${r.pairs.length === 1 ? '' : 's'}${r.consistent ? '' : ', INCONSISTENT (see !)'}`);
  if (r.pairs.length) {
    const rows: string[][] = [];
    const notes = new Map<number, string[]>();
    r.pairs.forEach((p, i) => {
      const c = p.counters;
      rows.push([
        String(p.id),
        portCell(p.vin),
        portCell(p.vex),
        p.mac ?? '-',
        p.ucmac,
        p.bcmac,
        p.mode ?? '-',
        hooks(p),
        flags(p),
        c ? si(delivered(c.to_wl).packets) : '-',
        c ? si(delivered(c.from_wl).packets) : '-',
        c ? si(c.to_wl.drop.packets + c.from_wl.drop.packets) : '-',
      ]);
      const since = (p as { heldByWatch?: string }).heldByWatch;
      const held = since ? [`  held in BYPASS by neuv-bpf watch since ${since} (fail-open: the DP is down; FWD again when it is back)`] : [];
      if (p.problems.length || held.length) notes.set(i, [...held, ...p.problems.map((n) => `  ! ${n}`)]);
    });
    const lines = table(
      ['ID', 'VIN (ifindex)', 'VEX (ifindex)', 'MAC', 'UCMAC', 'BCMAC', 'MODE', 'HOOKS', 'FLAGS', 'TO_WL', 'FROM_WL', 'DROP'],
      rows,
      ['r', 'l', 'l', 'l', 'l', 'l', 'l', 'l', 'l', 'r', 'r', 'r'],
    );
    out.push(lines[0]!);
    lines.slice(1).forEach((l, i) => {
      out.push(l);
      for (const n of notes.get(i) ?? []) out.push(n);
    });
  }
  for (const n of r.problems) out.push(`! ${n}`);
  out.push(globalLine(r.global));
  return out;
}

function globalLine(g: Record<string, bigint>, rates?: Record<string, number>): string {
  const parts = REASON_NAMES.filter((n) => n !== 'none').map((n) => `${n} ${si(g[n] ?? 0n)}${rates ? ` (${si(rates[n] ?? 0)}/s)` : ''}`);
  return `global: ${parts.join(', ')}`;
}

// ---------------------------------------------------------------- stats

type Rates = Record<(typeof DIR_NAMES)[number], Record<(typeof VERDICT_NAMES)[number], { packets: number; bytes: number }>>;

function ratesOf(now: PairCounters, before: PairCounters | undefined, seconds: number): Rates {
  const out = {} as Rates;
  for (const d of DIR_NAMES) {
    out[d] = {} as Rates[typeof d];
    for (const v of VERDICT_NAMES) {
      const b = before?.[d][v];
      out[d][v] = {
        packets: b ? perSecond(now[d][v].packets - b.packets, seconds) : 0,
        bytes: b ? perSecond(now[d][v].bytes - b.bytes, seconds) : 0,
      };
    }
  }
  return out;
}

export function formatStats(s: StatsSnapshot, prev?: StatsSnapshot): string[] {
  const seconds = prev ? (s.time - prev.time) / 1000 : 0;
  const before = new Map(prev?.pairs.map((p) => [p.id, p.counters]));
  const rows: string[][] = [];
  for (const p of s.pairs) {
    const name = p.in || p.ex ? `${p.in ?? '?'}/${p.ex ?? '?'}` : '(no pair)';
    const r = prev ? ratesOf(p.counters, before.get(p.id), seconds) : undefined;
    for (const d of DIR_NAMES) {
      const c = p.counters[d];
      const cells = VERDICT_NAMES.map((v) => si(c[v].packets) + (r ? ` ${si(r[d][v].packets)}/s` : ''));
      const del = delivered(c);
      const bits = r ? ` ${si((r[d].to_peer.bytes + r[d].from_dp.bytes + r[d].fast.bytes) * 8, 'bit')}/s` : '';
      rows.push([String(p.id), name, d, ...cells, si(del.bytes, 'B') + bits]);
    }
  }
  const out: string[] = [];
  out.push(
    `${new Date(s.time).toISOString()}  ${s.pairs.length} pair${s.pairs.length === 1 ? '' : 's'}` +
      (prev ? `, rates over the last ${seconds.toFixed(1)} s` : '') + '  (packets per verdict; BYTES = delivered: to_peer + from_dp + fast)',
  );
  if (rows.length) {
    out.push(...table(['ID', 'PAIR', 'DIR', ...VERDICT_NAMES.map((v) => v.toUpperCase()), 'BYTES'], rows, ['r', 'l', 'l', ...VERDICT_NAMES.map(() => 'r' as const), 'r']));
  }
  let grates: Record<string, number> | undefined;
  if (prev) {
    grates = {};
    for (const n of REASON_NAMES) grates[n] = perSecond(s.global[n] - prev.global[n], seconds);
  }
  out.push(globalLine(s.global, grates));
  return out;
}

function statsJson(s: StatsSnapshot, prev?: StatsSnapshot): object {
  if (!prev) return s;
  const seconds = (s.time - prev.time) / 1000;
  const before = new Map(prev.pairs.map((p) => [p.id, p.counters]));
  const global: Record<string, number> = {};
  for (const n of REASON_NAMES) global[n] = perSecond(s.global[n] - prev.global[n], seconds);
  return {
    ...s,
    interval: seconds,
    pairs: s.pairs.map((p) => ({ ...p, rates: ratesOf(p.counters, before.get(p.id), seconds) })),
    globalRates: global,
  };
}


async function watch(c: Ctx, dp: Datapath, intervalS: number): Promise<void> {
  const tty = process.stdout.isTTY === true && !c.json;
  let stop = false;
  let wake: (() => void) | undefined;
  const onSig = () => {
    stop = true;
    wake?.();
  };
  const offSignals = onStopSignal(onSig);
  try {
    let prev = await dp.stats();
    while (!stop) {
      await new Promise<void>((res) => {
        wake = res;
        setTimeout(res, intervalS * 1000);
      });
      if (stop) break;
      const now = await dp.stats();
      if (c.json) printJson(c, statsJson(now, prev), { line: true });
      else {
        const lines = formatStats(now, prev);
        if (tty) process.stdout.write(CLEAR_SCREEN + lines.join('\n') + '\n');
        else c.out(lines.join('\n') + '\n');
      }
      prev = now;
    }
  } finally {
    offSignals();
  }
}

// ---------------------------------------------------------------- registrar

export const registerPairCommands: CommandRegistrar = (program, ctx) => {
  const pair = program.command('pair').description('port pairs: add, switch mode, delete (NeuVector AttachPortPair / FwdPortPair / TapPortPair / DetachPortPair)');

  pair
    .command('add')
    .description('attach the programs to a vin/vex pair and write its map entries; prints id, UCMAC and BCMAC. Idempotent for an identical spec (re-attaches missing hooks).')
    .option('--in <vin>', 'vin: the veth whose peer is the workload eth0')
    .option('--ex <vex>', "vex: the workload's original port")
    .option('--mac <mac>', 'the workload MAC (unicast)')
    .addOption(new Option('--mode <mode>', 'initial mode (default bypass)').choices([...ADD_MODES]))
    .addOption(integerOption('--id <n>', 'pin the port id (0..65535); default: vex ifindex & 0xffff, or the lowest free id', PORT_ID))
    .option('--ipv6-to-dp', 'send IPv6 unicast of the workload through the DP too')
    .option('--file <file>', "many pairs: JSON lines {in, ex, mac, mode?, id?, ipv6ToDp?} ('-' for stdin)")
    .option('--json', 'print the result as JSON')
    .action(async (o: { in?: string; ex?: string; mac?: string; mode?: string; id?: number; ipv6ToDp?: boolean; file?: string }) => {
      const c = ctx();
      if (o.file !== undefined) {
        if (o.in !== undefined || o.ex !== undefined || o.mac !== undefined || o.mode !== undefined || o.id !== undefined || o.ipv6ToDp) {
          throw new UsageError('--file cannot be combined with --in, --ex, --mac, --mode, --id or --ipv6-to-dp');
        }
        const source = o.file === '-' ? 'stdin' : o.file;
        const { specs, labels } = parsePairLines(readInputFile(o.file, '--file'), source);
        const rs = await throughService(c, (s) => s.addPairs(specs), () => withDatapath(c, (dp) => dp.addPairs(specs, { labels })));
        warnIfNoDp(rs.map((r) => r.mode));
        if (c.json) printJson(c, rs);
        else {
          for (const r of rs) c.out(addedLine(r));
          const n = rs.filter((r) => r.created).length;
          c.out(`${rs.length} pairs: ${n} added, ${rs.length - n} existed`);
        }
        return;
      }
      const missing = (['in', 'ex', 'mac'] as const).filter((k) => o[k] === undefined);
      if (missing.length) throw new UsageError(`pair add needs ${missing.map((k) => `--${k}`).join(', ')} (or --file)`);
      const spec: PairSpec = { in: o.in!, ex: o.ex!, mac: o.mac! };
      if (o.mode !== undefined) spec.mode = o.mode as PairSpec['mode'];
      if (o.id !== undefined) spec.id = o.id;
      if (o.ipv6ToDp) spec.ipv6ToDp = true;
      const r = await throughService(c, (s) => s.addPair(spec), () => withDatapath(c, (dp) => dp.addPair(spec)));
      warnIfNoDp([r.mode]);
      if (c.json) printJson(c, r);
      else c.out(addedLine(r));
    });

  pair
    .command('mode')
    .description('switch a pair to fwd, tap, bypass or drop: one atomic map update per port, no frame dropped by the switch')
    .argument('<mode>', MODES.join('|'))
    .option('--in <vin>', 'the pair by its vin')
    .option('--ex <vex>', 'the pair by its vex')
    .addOption(integerOption('--id <n>', 'the pair by its port id', PORT_ID))
    .option('--json', 'print the result as JSON')
    .action(async (mode: string, o: SelOpts) => {
      const c = ctx();
      const sel = selectorFrom(o);
      const m = mode as (typeof MODES)[number];
      const r = await throughService(c, (s) => s.setMode(sel, m), () => withDatapath(c, (dp) => dp.setMode(sel, m)));
      warnIfNoDp([r.to]);
      if (c.json) printJson(c, r);
      else c.out(`pair id ${r.id} (${r.in ?? '?'}/${r.ex ?? '?'}): ${r.from} -> ${r.to}`);
    });

  pair
    .command('del')
    .description('remove a pair (or several, or all, in one go: all or nothing): detach vin/vex (their clsact too if we created it) and delete its map entries; vbr-neuv stays')
    .option('--in <vin>', 'the pair by its vin')
    .option('--ex <vex>', 'the pair by its vex')
    .addOption(integerOption('--id <n>', 'the pair by its port id', PORT_ID))
    .option('--ids <n,n,...>', 'several pairs by port id, comma-separated (JSON: an array of results)')
    .option('--all', 'every pair (JSON: an array of results)')
    .option('--json', 'print the result as JSON')
    .action(async (o: SelOpts & { ids?: string; all?: boolean }) => {
      const c = ctx();
      const port = (n: string | null, i: number | null) => n ?? (i !== null ? `ifindex ${i}` : '?');
      const line = (r: PairDeleted) => `deleted pair id ${r.id} (${port(r.in, r.vinIfindex)}/${port(r.ex, r.vexIfindex)})`;
      if (o.ids !== undefined || o.all) {
        if (o.ids !== undefined && o.all) throw new UsageError('give --ids or --all, not both');
        if (o.in !== undefined || o.ex !== undefined || o.id !== undefined) throw new UsageError(`--${o.all ? 'all' : 'ids'} takes no --in, --ex or --id`);
        const sels: PairSelector[] | 'all' = o.all ? 'all' : o.ids!.split(',').map((v) => ({ id: parsePortId(v.trim(), '--ids') }));
        const rs = await throughService(c, (s) => s.delPairs(sels), () => withDatapath(c, (dp) => dp.delPairs(sels)));
        if (c.json) printJson(c, rs);
        else c.out(rs.length ? rs.map(line).join('\n') : 'no pairs');
        return;
      }
      const sel = selectorFrom(o);
      const r = await throughService(c, (s) => s.delPair(sel), () => withDatapath(c, (dp) => dp.delPair(sel)));
      if (c.json) printJson(c, r);
      else c.out(line(r));
    });

  program
    .command('show')
    .description('every pair: names, ifindexes, MAC, UCMAC, BCMAC, id, mode, hooks, counters; flags inconsistencies')
    .option('--json', 'print the result as JSON')
    .option('--check', 'also check vbr-neuv, program pins and pin modes; exit 1 naming the first problem if anything is inconsistent (neuv-bpf repair fixes what it can)')
    .action(async (o: { check?: boolean }) => {
      const c = ctx();
      let r = markHeld(await withDatapath(c, (dp) => dp.show()), c.pinRoot);
      if (o.check) r = await withDatapathProblems(r, c.pinRoot);
      if (c.json) printJson(c, r);
      else c.out(formatShow(r).join('\n'));
      if (o.check && !r.consistent) throw checkFailure(r);
    });

  program
    .command('stats')
    .description('counters per pair and direction (summed over CPUs) and the global reason counters; --watch for rates')
    .option('--json', 'print the result as JSON (one line per interval with --watch)')
    .option('--watch', 'print again every interval with rates, until interrupted')
    .addOption(secondsOption('--interval <seconds>', `watch interval in seconds (${WATCH_INTERVAL.min}..${WATCH_INTERVAL.max})`, WATCH_INTERVAL, 1))
    .action(async (o: { watch?: boolean; interval: number }) => {
      const c = ctx();
      const interval = o.interval;
      await withDatapath(c, async (dp) => {
        if (o.watch) return watch(c, dp, interval);
        const s = await dp.stats();
        if (c.json) printJson(c, s);
        else c.out(formatStats(s).join('\n'));
      });
    });
};
