/**
 * Scenario: onboarding through the service (`neuv-bpf serve`, docs/api.md).
 *
 *   batch      1,000 pairs in one POST /v1/pairs (mode fwd), timed at the
 *              client (ServiceClient in this process: HTTP, JSON both ways,
 *              the lock, every attach and map write), onto an empty datapath;
 *              each repetition in a fresh netns and pin root, the service's
 *              own phases read from its log ("pairs added"); then GET
 *              /v1/pairs, `show --json` and all the pairs removed in one
 *              POST /v1/pairs/delete.
 *   intercept  one intercept per container, N containers one after the other
 *              (netns stand-ins: a netns with eth0, IPv4 address and default
 *              route, its veth peer in a host netns): through the service
 *              (POST /v1/intercept) and through the CLI with no service
 *              running (`neuv-bpf intercept --container-netns`, a process
 *              each, Node.js start-up included); p50/p99 of each, and of
 *              release through the service.
 *
 *   node dist/bench/onboard.js [--quick]     (or make bench, --only onboard)
 */
import { ChildProcess } from 'node:child_process';
import * as os from 'node:os';
import { ServiceClient } from '../src/service/client';
import { macOf, percentile } from './net';
import { table } from './nvdp-report';
import { BenchNetns, Summary, cli, cliPath, fmt, installSignalCleanup, fmtRatio, objArgs, pinRoot, progress, runCleanups, spawnGroup, summary, netns, nowMs, outputOf, sleep } from './util';

export interface Percentiles {
  p50: number;
  p99: number;
  min: number;
  max: number;
  n: number;
}

export interface OnboardResult {
  params: { pairs: number; reps: number; containers: number };
  /** Wall ms of one POST /v1/pairs with `pairs` specs, per repetition. */
  batchMs: Summary;
  /** The service's own account of each batch ("pairs added", phasesMs: links, plan, hooks and their qdiscs/grace/filters, entries per step), per repetition. */
  phasesMs: Array<Record<string, number>>;
  /** Then, with the pairs in place: `show --json` (a process), GET /v1/pairs, and all of them removed in one POST /v1/pairs/delete; wall ms per repetition. */
  showCliMs: Summary;
  showApiMs: Summary;
  deleteMs: Summary;
  /** Load average (1 min) at the start and end of the batch part. */
  load: { start: number; end: number };
  intercept: { serviceMs: Percentiles; cliMs: Percentiles; releaseServiceMs: Percentiles };
  notes: string[];
}

/** Pairs of 1,000 are 4,000 interfaces: vinK/vexK, each with a peer of its own (vin and vex as each other's peer would be a loop). */
function pairPool(n: number): BenchNetns {
  const ns = netns('ob-pairs');
  const lines: string[] = [];
  for (let k = 0; k < n; k++) lines.push(`link add obi${k} type veth peer name obw${k}`, `link add obe${k} type veth peer name obh${k}`);
  for (let i = 0; i < lines.length; i += 500) ns.ipBatch(lines.slice(i, i + 500));
  return ns;
}

/** N containers: a netns each with eth0 (10.79.x.y/16, default route), its peer in `host`. */
function containers(host: BenchNetns, n: number): BenchNetns[] {
  const cs: BenchNetns[] = [];
  for (let k = 0; k < n; k++) cs.push(netns('ob-c'));
  host.ipBatch(cs.map((c, k) => `link add obc${k} type veth peer name eth0 netns ${c.name}`));
  host.ipBatch(cs.map((_, k) => `link set obc${k} up`));
  cs.forEach((c, k) => c.ipBatch([`addr add 10.79.${k >> 8}.${(k & 0xff) + 1}/16 dev eth0`, 'link set eth0 up', 'route add default via 10.79.255.254']));
  return cs;
}

interface Served {
  child: ChildProcess & { stop: () => Promise<void> };
  client: ServiceClient;
}

/** `neuv-bpf serve --json` in the enforcer netns (adopting the datapath loaded there); resolves once it serves. */
async function serve(enf: BenchNetns, pins: string, logLevel = 'warn'): Promise<Served> {
  const child = spawnGroup(process.execPath, [cliPath(), '--netns', enf.name, '--bpffs', pins, 'serve', '--json'], { ...process.env, NEUV_BPF_LOG_LEVEL: logLevel });
  const t0 = nowMs();
  for (;;) {
    try {
      const info = JSON.parse(outputOf(child).out) as { socket: string };
      return { child, client: new ServiceClient({ socket: info.socket }) };
    } catch {
      /* not yet */
    }
    if (child.exitCode !== null) throw new Error(`serve exited ${child.exitCode}`);
    if (nowMs() - t0 > 60000) throw new Error('serve did not start within 60 s');
    await sleep(20);
  }
}

function pct(xs: number[]): Percentiles {
  return { p50: percentile(xs, 0.5), p99: percentile(xs, 0.99), min: Math.min(...xs), max: Math.max(...xs), n: xs.length };
}

export async function runOnboard(o: { quick: boolean }): Promise<OnboardResult> {
  const params = o.quick ? { pairs: 1000, reps: 1, containers: 20 } : { pairs: 1000, reps: 3, containers: 100 };
  const notes: string[] = [];

  // ---- 1,000 pairs in one call
  progress(`onboard: ${params.pairs} pairs (${params.pairs * 4} interfaces)`);
  const specs = Array.from({ length: params.pairs }, (_, k) => ({ in: `obi${k}`, ex: `obe${k}`, mac: macOf(0x30000 + k), mode: 'fwd' as const }));
  const batch: number[] = [];
  const phasesMs: Array<Record<string, number>> = [];
  const showCli: number[] = [];
  const showApi: number[] = [];
  const del: number[] = [];
  const load = { start: os.loadavg()[0]!, end: 0 };
  // Each repetition in a fresh netns and pin root.
  for (let rep = 0; rep < params.reps; rep++) {
    const enf = pairPool(params.pairs);
    const pins = pinRoot('ob');
    cli(['--netns', enf.name, '--bpffs', pins, 'load', ...objArgs()]);
    const s = await serve(enf, pins, 'info');
    try {
      await s.client.health();
      const t0 = nowMs();
      const added = await s.client.addPairs(specs);
      batch.push(nowMs() - t0);
      if (added.length !== params.pairs || !added.every((p) => p.created)) throw new Error(`POST /v1/pairs added ${added.filter((p) => p.created).length} of ${params.pairs}`);
      progress(`onboard: ${params.pairs} pairs in one POST /v1/pairs: ${batch.at(-1)!.toFixed(0)} ms`);
      const t1 = nowMs();
      const shown = await s.client.pairs();
      showApi.push(nowMs() - t1);
      if (shown.pairs.length !== params.pairs || !shown.consistent) throw new Error('GET /v1/pairs: not every pair shown, or not consistent');
      showCli.push(cli(['--netns', enf.name, '--bpffs', pins, 'show', '--json']).ms);
      const t2 = nowMs();
      const gone = await s.client.delPairs('all');
      del.push(nowMs() - t2);
      if (gone.length !== params.pairs) throw new Error(`POST /v1/pairs/delete removed ${gone.length} of ${params.pairs}`);
      progress(`onboard: show --json ${showCli.at(-1)!.toFixed(0)} ms, GET /v1/pairs ${showApi.at(-1)!.toFixed(0)} ms, all deleted in one POST /v1/pairs/delete ${del.at(-1)!.toFixed(0)} ms`);
      const line = outputOf(s.child).err.split('\n').find((l) => l.includes('"pairs added"'));
      if (line) phasesMs.push((JSON.parse(line) as { phasesMs: Record<string, number> }).phasesMs);
    } finally {
      s.client.close();
      await s.child.stop();
    }
    enf.del();
  }
  load.end = os.loadavg()[0]!;
  notes.push(`Load average (1 min) at the start of the batch part ${load.start.toFixed(2)}, at its end ${load.end.toFixed(2)} (2 cores).`);

  // ---- one intercept per container
  progress(`onboard: ${params.containers} containers`);
  const host = netns('ob-host');
  const cs = containers(host, params.containers);
  const enf2 = netns('ob-enf');
  const pins2 = pinRoot('ob-i');
  const at2 = ['--netns', enf2.name, '--bpffs', pins2];
  cli([...at2, 'load', ...objArgs()]);
  const netnsOf = (c: BenchNetns) => `/run/netns/${c.name}`;
  const viaService: number[] = [];
  const release: number[] = [];
  // Every container released through the service, each call timed.
  const releaseAll = async (svc: typeof s) => {
    for (const c of cs) {
      const t0 = nowMs();
      await svc.client.release({ netns: netnsOf(c) });
      release.push(nowMs() - t0);
    }
  };
  let s = await serve(enf2, pins2);
  try {
    for (const c of cs) {
      const t0 = nowMs();
      await s.client.intercept({ netns: netnsOf(c) });
      viaService.push(nowMs() - t0);
    }
    await releaseAll(s);
  } finally {
    s.client.close();
    await s.child.stop();
  }
  progress(`onboard: intercept through the service p50 ${percentile(viaService, 0.5).toFixed(0)} ms`);
  const viaCli: number[] = [];
  for (const c of cs) viaCli.push(cli([...at2, 'intercept', '--container-netns', netnsOf(c)]).ms);
  progress(`onboard: intercept through the CLI p50 ${percentile(viaCli, 0.5).toFixed(0)} ms`);
  s = await serve(enf2, pins2);
  try {
    await releaseAll(s);
  } finally {
    s.client.close();
    await s.child.stop();
  }
  notes.push('The service figures are one API call each, timed by the caller; the CLI figures a process each (Node.js start-up, about 230 ms, included), standalone: no service running.');
  return { params, batchMs: summary(batch), phasesMs, showCliMs: summary(showCli), showApiMs: summary(showApi), deleteMs: summary(del), load, intercept: { serviceMs: pct(viaService), cliMs: pct(viaCli), releaseServiceMs: pct(release) }, notes };
}

/** The batch target of issue 27: 1,000 pairs in one request in under 0.3 s. */
export const BATCH_TARGET_MS = 300;

export function onboardSummary(r: OnboardResult): string {
  const i = r.intercept;
  return (
    `onboarding through the service: ${r.params.pairs} pairs in one POST /v1/pairs ${fmt(r.batchMs.median)} ms (< ${BATCH_TARGET_MS} ms); ` +
    `intercept over ${r.params.containers} containers p50/p99: service ${fmt(i.serviceMs.p50)}/${fmt(i.serviceMs.p99)} ms, CLI ${fmt(i.cliMs.p50)}/${fmt(i.cliMs.p99)} ms ` +
    `(${fmtRatio(i.cliMs.p50 / i.serviceMs.p50)} at p50)`
  );
}

const mmm = (x: Summary) => `${fmt(x.median)} (${fmt(x.min)}-${fmt(x.max)})`;

/** What the service logged of each batch ("pairs added", phasesMs), a column per repetition. */
function phaseTable(r: OnboardResult): string[] {
  if (!r.phasesMs?.length) return [];
  const what: Record<string, string> = {
    links: 'one in-process link dump of the netns',
    plan: 'the maps read, every spec resolved and checked',
    hooks: 'the hooks of every port',
    'hooks.qdiscs': '&nbsp;&nbsp;of which the clsact qdiscs (one netlink socket)',
    'hooks.grace': '&nbsp;&nbsp;one RCU grace period',
    'hooks.filters': '&nbsp;&nbsp;the tc filters (one netlink socket)',
    entries: 'the map entries',
    'entries.stats': '&nbsp;&nbsp;of which the per-CPU counter entries (one batch)',
    'entries.vex': '&nbsp;&nbsp;the vex port entries (one batch)',
    'entries.vin': '&nbsp;&nbsp;the vin port entries (one batch)',
    'entries.ids': '&nbsp;&nbsp;the ids entries (one batch)',
  };
  const rows = Object.keys(what)
    .filter((k) => r.phasesMs.some((p) => p[k] !== undefined))
    .map((k) => [what[k]!, ...r.phasesMs.map((p) => (p[k] === undefined ? '' : fmt(p[k])))]);
  return [
    `The service's own account of each batch (its log line "pairs added", phasesMs), ms, by repetition; the rest of the call's wall time is HTTP, JSON both ways, validation and the lock:`,
    '',
    table(['step', ...r.phasesMs.map((_, i) => `rep ${i + 1}`)], rows),
    '',
  ];
}

export function onboardMarkdown(r: OnboardResult, reproduce: (only: string) => string): string[] {
  const i = r.intercept;
  const row = (what: string, p: Percentiles) => [what, fmt(p.p50), fmt(p.p99), `${fmt(p.min)}-${fmt(p.max)}`, String(p.n)];
  return [
    '## 9. Onboarding through the service (`neuv-bpf serve`)',
    '',
    `Reproduce: \`${reproduce('onboard')}\` (also alone: \`node dist/bench/onboard.js [--quick]\`). bench/onboard.ts: ` +
      `${r.params.pairs} pairs (fwd) in one \`POST /v1/pairs\` onto an empty datapath, timed by the client (HTTP and JSON both ways, the lock, every attach and map write), ` +
      `${r.params.reps} repetitions; then one intercept per container for ${r.params.containers} containers one after the other ` +
      '(netns stand-ins: eth0 with an IPv4 address and a default route, its veth peer in a host netns), through the service (`POST /v1/intercept`) ' +
      'and through the CLI (`neuv-bpf intercept --container-netns`, one process each, Node.js start-up included, no service running).',
    '',
    table(
      ['what', 'median (min-max), ms', 'target', 'met'],
      [
        [`${r.params.pairs} pairs in one POST /v1/pairs`, mmm(r.batchMs), `< ${BATCH_TARGET_MS} ms`, r.batchMs.median < BATCH_TARGET_MS ? 'yes' : '**no**'],
        [`then GET /v1/pairs (${r.params.pairs} pairs)`, mmm(r.showApiMs), '', ''],
        [`then \`show --json\` (a process)`, mmm(r.showCliMs), '', ''],
        [`then all ${r.params.pairs} removed in one POST /v1/pairs/delete`, mmm(r.deleteMs), '', ''],
      ],
    ),
    '',
    ...phaseTable(r),
    table(['one container', 'p50 ms', 'p99 ms', 'min-max ms', 'n'], [row('intercept through the service', i.serviceMs), row('intercept through the CLI', i.cliMs), row('release through the service', i.releaseServiceMs)]),
    '',
    ...r.notes,
    '',
  ];
}

async function main(argv: string[]): Promise<void> {
  const r = await runOnboard({ quick: argv.includes('--quick') });
  process.stdout.write(JSON.stringify(r, null, 2) + '\n');
}

if (require.main === module) {
  installSignalCleanup('bench/onboard');
  main(process.argv.slice(2)).then(
    () => runCleanups(),
    (e) => {
      process.stderr.write(`bench/onboard: ${(e as Error).message}\n`);
      runCleanups();
      process.exitCode = 1;
    },
  );
}
