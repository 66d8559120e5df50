/**
 * `make bench`: neuv-bpf against NeuVector's tc rules and against a plain
 * veth pair, side by side, on this machine, in one run.
 *
 *   node dist/bench/run.js [--quick] [--only progcost,trace,throughput,dpreturn,control,offload,nvdp,taptap,onboard]
 *                          [--json FILE] [--md FILE]
 *   node dist/bench/run.js --from RESULTS.json [--md FILE] [--note TEXT --json FILE]   (render the Markdown again;
 *                                                           --note adds a remark on the run, --json saves it with it)
 *
 * Scenarios (each in its own namespaces named nbench-<pid>-..., removed at
 * its end, on failure and on Ctrl-C):
 *   progcost    per-frame program cost under BPF_PROG_TEST_RUN (bench/progcost.ts)
 *   trace       the trace's cost, when bench/trace.ts exports a function
 *   throughput  TCP and 64-byte frames through one pair (bench/throughput.ts)
 *   dpreturn    the DP return path for 1..4096 pairs (bench/dpreturn.ts)
 *   control     onboarding and mode switches, and the loader's peak memory (bench/control.ts)
 *   offload     TCP of a flow the DP offloaded vs BYPASS vs FWD through the stub DP (bench/offload.ts)
 *   nvdp        FWD through NeuVector's real DP: neuv-bpf vs its tc pipe vs plain, and offloaded (bench/nvdp.ts)
 *   taptap      TAP with the real DP for N containers: one ring (ours) vs a ring per container (bench/taptap.ts)
 *   onboard     through the service: 1,000 pairs in one POST /v1/pairs, intercept p50/p99 vs the CLI (bench/onboard.ts)
 *
 * A full run writes BENCHMARKS.json and BENCHMARKS.md; --quick (and --only)
 * write build/bench-quick.json (build/bench-<names>.json) and a Markdown file
 * next to it, leaving BENCHMARKS.md alone unless --md names it. One summary
 * line per scenario goes to stdout; progress to stderr. Needs root.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { features } from '../src/features';
import { runControl } from './control';
import { runDpReturn } from './dpreturn';
import { run as runOffload } from './offload';
import { runNvdp } from './nvdp';
import { runOnboard } from './onboard';
import { runProgCost } from './progcost';
import { runTapTap } from './taptap';
import { BenchResults, KernelProbe, markdown, summaryLine, targets } from './report';
import { runThroughput } from './throughput';
import { netns, RT_PRIORITY, ROOT, cpuBusy, installSignalCleanup, machineInfo, progress, rtEnabled, runCleanups, snapshotRuntime, shResult } from './util';

const ALL = ['progcost', 'trace', 'throughput', 'dpreturn', 'control', 'offload', 'nvdp', 'taptap', 'onboard'] as const;
type Name = (typeof ALL)[number];

interface Args {
  quick: boolean;
  /** Only render the Markdown again from a results file. */
  from?: string;
  only?: Name[];
  json?: string;
  md?: string;
  note?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]!;
    const val = () => {
      const v = argv[++i];
      if (!v) throw new Error(`${x} needs a value`);
      return v;
    };
    if (x === '--quick') a.quick = true;
    else if (x === '--only') {
      const names = val().split(',').map((s) => s.trim()).filter(Boolean);
      for (const n of names) if (!(ALL as readonly string[]).includes(n)) throw new Error(`--only: unknown scenario '${n}' (expected ${ALL.join(', ')})`);
      a.only = names as Name[];
    } else if (x === '--json') a.json = val();
    else if (x === '--md') a.md = val();
    else if (x === '--from') a.from = val();
    else if (x === '--note') a.note = val();
    else if (x === '-h' || x === '--help') {
      process.stdout.write('usage: node dist/bench/run.js [--quick] [--only ' + ALL.join(',') + '] [--json FILE] [--md FILE] [--note TEXT]\n       node dist/bench/run.js --from RESULTS.json --md FILE [--note TEXT --json FILE]   (render the Markdown again)\n');
      process.exit(0);
    } else throw new Error(`unknown argument '${x}'`);
  }
  return a;
}

/** Which tc actions this kernel has, by trying each on a throwaway veth. */
function probeKernel(): KernelProbe {
  const f = features();
  const ns = netns('probe');
  try {
    ns.ip('link', 'add', 'p0', 'type', 'veth', 'peer', 'name', 'p1');
    ns.tcBatch([['qdisc', 'add', 'dev', 'p0', 'ingress']]);
    const tryAction = (pref: number, action: string[]) => {
      const r = shResult('tc', ['-n', ns.name, 'filter', 'add', 'dev', 'p0', 'parent', 'ffff:', 'pref', String(pref), 'protocol', 'all', 'u32', 'match', 'u8', '0', '0', ...action], { allowFail: true });
      return r.code === 0 ? { ok: true } : { ok: false, error: r.stderr.trim().split('\n').filter(Boolean).join(' ') };
    };
    return {
      tcx: f.tcx,
      redirectPeer: f.redirectPeer,
      actMirred: tryAction(1, ['action', 'mirred', 'egress', 'mirror', 'dev', 'p1']),
      actPedit: tryAction(2, ['action', 'pedit', 'munge', 'offset', '-14', 'u16', 'set', '0x4e65', 'pipe']),
      actGact: tryAction(3, ['action', 'drop']),
    };
  } finally {
    ns.del();
  }
}

type TraceFn = (o: { quick?: boolean }) => unknown;

/** bench/trace.ts, if it exists and exports a function (another engineer's). */
function traceBench(): TraceFn | undefined {
  const file = path.join(__dirname, 'trace.js');
  if (!fs.existsSync(file)) return undefined;
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const mod = require(file) as Record<string, unknown>;
  if (typeof mod.runTraceBench === 'function') return mod.runTraceBench as TraceFn;
  const fn = Object.values(mod).find((v) => typeof v === 'function');
  return fn as TraceFn | undefined;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  if (args.from) {
    const r = JSON.parse(fs.readFileSync(args.from, 'utf8')) as BenchResults;
    if (args.note) r.note = args.note;
    const md = args.md ?? path.join(ROOT, 'build', 'BENCHMARKS-rendered.md');
    const q = r.quick ? ' --quick' : '';
    fs.writeFileSync(md, markdown(r, (only) => `make build && node dist/bench/run.js${q} --only ${only}`));
    if (args.json) fs.writeFileSync(args.json, JSON.stringify(r, null, 2) + '\n');
    process.stdout.write(`wrote ${md}${args.json ? ` and ${args.json}` : ''}\n`);
    return 0;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: needs root (network namespaces, BPF, tc)\n');
    return 1;
  }
  installSignalCleanup();
  // Every process of the run (this one and, inheriting it, every child: trafgen, iperf3, tc, the CLI)
  // at a raised priority, so other load on the machine disturbs the figures less. NEUV_BENCH_NICE=0 to keep 0.
  const nice = Number(process.env.NEUV_BENCH_NICE ?? -10);
  try {
    os.setPriority(0, nice);
  } catch (e) {
    progress(`cannot set nice ${nice}: ${(e as Error).message}`);
  }
  const started = Date.now();
  const names = args.only ?? [...ALL];
  const tag = args.only ? args.only.join('-') : args.quick ? 'quick' : '';
  const jsonPath = args.json ?? (tag ? path.join(ROOT, 'build', `bench-${tag}.json`) : path.join(ROOT, 'BENCHMARKS.json'));
  const mdPath = args.md ?? (args.only || args.quick ? path.join(ROOT, 'build', `BENCHMARKS${tag ? '-' + tag : ''}.md`) : path.join(ROOT, 'BENCHMARKS.md'));
  const command = args.only || args.md || args.json ? `node dist/bench/run.js ${process.argv.slice(2).join(' ')}` : args.quick ? 'make bench QUICK=1' : 'make bench';
  const reproduce = (only: string) => `make build && node dist/bench/run.js${args.quick ? ' --quick' : ''} --only ${only}`;

  const snap = snapshotRuntime();
  const r: BenchResults = {
    tool: 'neuv-bpf bench',
    command,
    quick: args.quick,
    only: args.only,
    machine: machineInfo(),
    kernel: probeKernel(),
    startedAt: new Date(started).toISOString(),
    seconds: 0,
    background: {},
    loadavg: {},
    durations: {},
    errors: {},
    nice: os.getPriority(0),
    rt: rtEnabled() ? RT_PRIORITY : 0,
    objSha256: snap.objSha256,
    ...(args.note ? { note: args.note } : {}),
  };
  process.stdout.write(`neuv-bpf bench${args.quick ? ' --quick' : ''}: Linux ${r.machine.kernel}, ${r.machine.cores} cores, commit ${r.machine.commit}${r.machine.dirty ? '+' : ''}\n`);

  const run: Record<Name, () => Promise<unknown> | unknown> = {
    progcost: () => (r.progcost = runProgCost({ quick: args.quick })),
    trace: () => {
      const fn = traceBench();
      if (!fn) return (r.trace = undefined);
      return (r.trace = fn({ quick: args.quick }));
    },
    throughput: async () => (r.throughput = await runThroughput({ quick: args.quick })),
    dpreturn: async () => (r.dpreturn = await runDpReturn({ quick: args.quick })),
    control: async () => (r.control = await runControl({ quick: args.quick })),
    offload: async () => (r.offload = await runOffload({ quick: args.quick })),
    nvdp: async () => (r.nvdp = await runNvdp({ quick: args.quick })),
    taptap: async () => (r.taptap = await runTapTap({ quick: args.quick })),
    onboard: async () => (r.onboard = await runOnboard({ quick: args.quick })),
  };

  for (const n of names) {
    r.loadavg![n] = os.loadavg();
    r.background[n] = await cpuBusy(1000);
    const t0 = Date.now();
    progress(`== ${n}`);
    try {
      await run[n]();
    } catch (e) {
      r.errors[n] = (e as Error).message.split('\n')[0]!;
      progress(`${n} failed: ${(e as Error).stack ?? e}`);
    } finally {
      runCleanups();
    }
    r.durations[n] = (Date.now() - t0) / 1000;
    if (n === 'trace' && r.trace === undefined && !r.errors[n]) {
      process.stdout.write('trace cost: skipped (bench/trace.ts exports no function)\n');
      continue;
    }
    process.stdout.write(summaryLine(n, r) + '\n');
  }
  r.seconds = (Date.now() - started) / 1000;
  r.loadavg!.end = os.loadavg();

  fs.mkdirSync(path.dirname(jsonPath), { recursive: true });
  fs.writeFileSync(jsonPath, JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? Number(v) : v), 2) + '\n');
  fs.writeFileSync(mdPath, markdown(r, reproduce));
  const ts = targets(r);
  const short = ts.filter((t) => t.met === false);
  process.stdout.write(
    `targets: ${ts.filter((t) => t.met).length}/${ts.filter((t) => t.met !== undefined).length} met${short.length ? `; short: ${short.map((t) => `${t.what} ${t.shown} (${t.target})`).join('; ')}` : ''}\n`,
  );
  process.stdout.write(`wrote ${path.relative(process.cwd(), jsonPath)} and ${path.relative(process.cwd(), mdPath)} in ${Math.round(r.seconds)} s\n`);
  return Object.keys(r.errors).length ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    runCleanups();
    process.stderr.write(`bench: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
