/**
 * Scenario 3: the control plane. Time to onboard 1, 100 and 1,000 pairs and
 * the time of one mode switch, NeuVector style against neuv-bpf.
 *
 *   NeuVector: per pair, the `tc` processes its Go code spawns one after the
 *   other: AttachPortPair (nvAttachRules: a legacy ingress qdisc on vin and
 *   on vex) then FwdPortPair (nvPairRules 'fwd': six u32 filters), one `tc`
 *   process each, from one /bin/sh script entered into the enforcer netns
 *   (see runTcSequential). NeuVector wraps each in `sh -c` and naps 250 ms
 *   between retries: both left out, so this is its best case. Without pedit
 *   (not in this kernel). Mode switch: ResetPortPair (six `tc filter del`) +
 *   FwdPortPair again (TapPortPair needs `action drop`, i.e. act_gact,
 *   missing here; a reset-then-add of the same size is what a switch costs).
 *
 *   neuv-bpf: `neuv-bpf pair add --file` (one process, Node start-up
 *   included) and Datapath.addPairs (the API, timed inside a process that
 *   has the Datapath open: bench/api-child.ts), mode fwd; `neuv-bpf pair
 *   mode` and Datapath.setMode for a switch.
 *
 * Pairs are cheap veth pairs (vin and vex each with a peer of its own, down) in one enforcer
 * netns per side and size, holding exactly the pairs to onboard; between
 * repetitions NeuVector's qdiscs are deleted and neuv-bpf is unloaded and
 * loaded again (neither timed).
 *
 * Scenario 5 rides along: the loader's peak RSS (process.resourceUsage()
 * .maxRSS, written at exit by bench/rss-preload.ts) for `load` and for
 * `pair add --file` with 1,000 pairs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { PairSpec } from '../src/pairs';
import { nvAttachRules, nvPairRules, nvResetRules, NvPair } from '../src/migrate/nvtc';
import { VBR, macOf, nvConnect, nvPair } from './net';
import { BenchNetns, netns, Summary, benchJs, cli, objArgs, pinRoot, progress, sh, summary, tmpDir, shResult } from './util';

const GROUP = '78';
const vinName = (k: number) => `ci${k}`;
const vexName = (k: number) => `ce${k}`;
const vinIndex = (k: number) => 100 + 4 * k;
const vexIndex = (k: number) => 101 + 4 * k;
/** The peers of vin and vex (vin and vex as each other's peer would be a loop: pair add refuses it, src/pairs/loops.ts). */
const peerName = (k: number, of: 'vin' | 'vex') => `${of === 'vin' ? 'cw' : 'ch'}${k}`;
const peerIndex = (k: number, of: 'vin' | 'vex') => (of === 'vin' ? 102 : 103) + 4 * k;
const mac = (k: number) => macOf(0x20000 + k);

export interface ControlOptions {
  quick: boolean;
}

export interface OnboardPoint {
  pairs: number;
  nvProcesses: number;
  /** NeuVector: wall ms of its tc processes (scaled up from `nvPairsRun` pairs when the time budget ran out). */
  nvMs: Summary;
  nvCpuMs: Summary;
  /** Pairs NeuVector's commands were actually run for (< pairs: the figures are scaled linearly from these, in a netns holding all the pairs). */
  nvPairsRun: number;
  /** `neuv-bpf pair add --file`, whole process: wall and CPU ms. */
  cliMs: Summary;
  cliCpuMs: Summary;
  /** Datapath.addPairs, timed inside bench/api-child.ts: wall and CPU ms. */
  apiMs: Summary;
  apiCpuMs: Summary;
  /** NeuVector / CLI, wall (per repetition) and CPU. */
  nvOverCli: Summary;
  nvOverCliCpu: Summary;
}

export interface MemoryResult {
  /** KiB. */
  loadMaxRssKiB: number;
  addPairs1000MaxRssKiB: number;
  nodeFloorKiB: number;
  /** One `tc filter add` process (what NeuVector spawns ~8 times per pair), when measurable. */
  tcMaxRssKiB?: number;
  how: string;
}

export interface ControlResult {
  params: { reps: number; sizes: number[]; nvReps: Record<number, number>; nvBudgetMs: number; switches: number };
  onboard: OnboardPoint[];
  modeSwitch: { nvMs: Summary; nvProcesses: number; cliMs: Summary; apiMs: Summary; switchedAtPairs: number };
  /** `neuv-bpf version`: Node.js start-up, module loading, libbpf and the feature probes; the floor of any CLI figure. */
  cliStartupMs: Summary;
  memory?: MemoryResult;
  notes: string[];
}

function pool(label: string, n: number): BenchNetns {
  const ns = netns(`cp-${label}`);
  const lines: string[] = [];
  for (let k = 0; k < n; k++) {
    lines.push(
      `link add ${vinName(k)} index ${vinIndex(k)} group ${GROUP} type veth peer name ${peerName(k, 'vin')} index ${peerIndex(k, 'vin')} group ${GROUP}`,
      `link add ${vexName(k)} index ${vexIndex(k)} group ${GROUP} type veth peer name ${peerName(k, 'vex')} index ${peerIndex(k, 'vex')} group ${GROUP}`,
    );
  }
  for (let i = 0; i < lines.length; i += 500) ns.ipBatch(lines.slice(i, i + 500));
  return ns;
}

interface TcRun {
  /** Wall time of the tc processes, ms. */
  ms: number;
  /** CPU time (user + system) of the processes, ms (10 ms resolution). */
  cpuMs: number;
  /** Pairs whose commands ran (fewer than asked when the time budget ran out). */
  pairs: number;
}

/**
 * Runs NeuVector's commands, one tc process each, in order, as its Go code
 * does, inside the enforcer netns: `groups` holds the commands of one pair
 * each. They go through one /bin/sh script entered with nsenter
 * (NeuVector's agent already runs in that netns: `tc -n` would remount /sys
 * for every process, ~50 ms with 2,000 devices, a cost NeuVector does not
 * pay). sh forks and execs each `tc` about as cheaply as Go's os/exec (a
 * Node.js spawnSync costs several ms more). The clock is read inside the
 * script, around the tc processes; CPU time is the script's children's
 * (cutime + cstime). With a budget, the script stops after the first pair
 * boundary (checked every 10 pairs) past it.
 */
function runTcSequential(ns: BenchNetns, groups: string[][][], dir: string, budgetMs?: number): TcRun {
  const q = (a: string) => `'${a.replace(/'/g, "'\\''")}'`;
  const file = path.join(dir, 'nv.sh');
  const report = (pairs: string) => `echo "$((t - t0)) ${pairs} $(cut -d' ' -f16,17 /proc/$$/stat)"`;
  const lines = ['set -e', 't0=$(date +%s%N)'];
  groups.forEach((g, i) => {
    for (const c of g) lines.push(['tc', ...c].map(q).join(' '));
    if (budgetMs !== undefined && (i + 1) % 10 === 0 && i + 1 < groups.length) {
      lines.push(`t=$(date +%s%N); if [ $((t - t0)) -gt ${Math.round(budgetMs * 1e6)} ]; then ${report(String(i + 1))}; exit 0; fi`);
    }
  });
  lines.push('t=$(date +%s%N)', report(String(groups.length)));
  fs.writeFileSync(file, lines.join('\n') + '\n');
  const r = spawnSync('nsenter', [`--net=/run/netns/${ns.name}`, '/bin/sh', file], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (r.status !== 0) throw new Error(`NeuVector tc commands failed: ${(r.stderr || '').trim().split('\n')[0]}`);
  const [ns_, pairs, ut, st] = r.stdout.trim().split(/\s+/).map(Number);
  return { ms: ns_! / 1e6, cpuMs: ((ut! + st!) * 1000) / CLK_TCK, pairs: pairs! };
}

const CLK_TCK = Number(sh('getconf', ['CLK_TCK'], { allowFail: true }).trim()) || 100;

/** Runs the CLI with the exit-stats preload: wall ms, CPU ms (itself and its children), peak RSS KiB. */
function timedCli(args: string[], dir: string): { ms: number; cpuMs: number; maxRssKiB: number } {
  const out = path.join(dir, 'exit-stats.json');
  const r = cli(args, { nodeArgs: ['-r', benchJs('rss-preload.js')], env: { NEUV_BENCH_RSS_OUT: out } });
  const j = JSON.parse(fs.readFileSync(out, 'utf8')) as { maxRSS: number; cpuMs: number; childCpuMs: number };
  fs.rmSync(out, { force: true });
  return { ms: r.ms, cpuMs: j.cpuMs + j.childCpuMs, maxRssKiB: j.maxRSS };
}

function nvPairs(n: number): NvPair[] {
  const taken = new Set<number>();
  const out: NvPair[] = [];
  for (let k = 0; k < n; k++) out.push(nvPair(vinName(k), vexName(k), vinIndex(k), vexIndex(k), mac(k), taken));
  return out;
}

function specs(n: number): PairSpec[] {
  const out: PairSpec[] = [];
  for (let k = 0; k < n; k++) out.push({ in: vinName(k), ex: vexName(k), mac: mac(k), mode: 'fwd' });
  return out;
}

function readRss(file: string): number {
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as { maxRSS: number };
  fs.rmSync(file, { force: true });
  return j.maxRSS;
}

export async function runControl(o: ControlOptions): Promise<ControlResult> {
  const sizes = [1, 100, 1000];
  // NeuVector at 1,000 pairs is 8,000 processes, each dumping every link of the netns: minutes on a
  // loaded machine. It runs once, until a time budget, and its figure is scaled from the pairs done.
  const params = o.quick
    ? { reps: 2, sizes, nvReps: { 1: 2, 100: 2, 1000: 1 } as Record<number, number>, nvBudgetMs: 8000, switches: 5 }
    : { reps: 3, sizes, nvReps: { 1: 3, 100: 3, 1000: 1 } as Record<number, number>, nvBudgetMs: 90000, switches: 10 };
  const dir = tmpDir();
  // One enforcer netns per side and size, holding exactly the pairs to onboard (each tc process dumps every link of its netns).
  progress(`control plane: creating ${sizes.join(' + ')} pairs for each side`);
  const nvNs = new Map<number, BenchNetns>();
  const bNs = new Map<number, BenchNetns>();
  const pins = new Map<number, string>();
  for (const n of sizes) {
    const a = pool(`nv${n}`, n);
    nvConnect(a);
    nvNs.set(n, a);
    bNs.set(n, pool(`bpf${n}`, n));
    pins.set(n, pinRoot(`cp${n}`));
  }
  const allNv = nvPairs(Math.max(...sizes));
  const jsonl = new Map<number, string>();
  for (const n of sizes) {
    const f = path.join(dir, `pairs-${n}.jsonl`);
    fs.writeFileSync(f, specs(n).map((s) => JSON.stringify(s)).join('\n') + '\n');
    jsonl.set(n, f);
  }
  const at = (n: number) => ['--netns', bNs.get(n)!.name, '--bpffs', pins.get(n)!];
  const load = (n: number) => cli([...at(n), 'load', ...objArgs()]);
  // --force: the pairs of the repetition are there (unload alone refuses while pairs are); not timed.
  const unload = (n: number) => cli([...at(n), 'unload', '--force']);

  const nvTeardown = (n: number) => {
    const lines: string[][] = [];
    for (let k = 0; k < n; k++) lines.push(['qdisc', 'del', 'dev', vinName(k), 'ingress'], ['qdisc', 'del', 'dev', vexName(k), 'ingress']);
    lines.push(['qdisc', 'del', 'dev', VBR, 'ingress'], ['qdisc', 'add', 'dev', VBR, 'ingress']);
    // Pairs the budget left out have no qdisc: -force goes on past those errors.
    for (let i = 0; i < lines.length; i += 1000) {
      sh('tc', ['-n', nvNs.get(n)!.name, '-force', '-b', '-'], { input: lines.slice(i, i + 1000).map((l) => l.join(' ')).join('\n') + '\n', allowFail: true });
    }
  };
  const nvGroups = (n: number) => allNv.slice(0, n).map((p) => [...nvAttachRules(p), ...nvPairRules(p, 'fwd', { pedit: false })]);

  type Series = { ms: number[]; cpu: number[] };
  const series = () => new Map<number, Series>(sizes.map((n) => [n, { ms: [], cpu: [] }]));
  const nv = series();
  const cliS = series();
  const api = series();
  const nvRun = new Map<number, number>();
  const sw = { nv: [] as number[], cli: [] as number[], api: [] as number[] };
  const startup: number[] = [];
  const switchAt = 100;

  for (let r = 0; r < params.reps; r++) {
    for (const n of sizes) {
      progress(`control plane: rep ${r + 1}/${params.reps}, ${n} pair(s)`);
      // NeuVector, then the CLI, then the API (the order flips every repetition).
      const steps: Array<() => Promise<void>> = [
        async () => {
          if (r >= (params.nvReps[n] ?? 0)) return;
          const budget = n >= 1000 ? params.nvBudgetMs : undefined;
          if (budget) progress(`control plane: NeuVector's ${n * 8} tc processes (up to ${budget / 1000} s, then scaled)`);
          const t = runTcSequential(nvNs.get(n)!, nvGroups(n), dir, budget);
          nv.get(n)!.ms.push((t.ms * n) / t.pairs);
          nv.get(n)!.cpu.push((t.cpuMs * n) / t.pairs);
          nvRun.set(n, t.pairs);
          if (n === switchAt && r === 0) {
            const p = allNv[n - 1]!;
            for (let i = 0; i < params.switches; i++) sw.nv.push(runTcSequential(nvNs.get(n)!, [[...nvResetRules(p), ...nvPairRules(p, 'fwd', { pedit: false })]], dir).ms);
          }
          nvTeardown(n);
        },
        async () => {
          startup.push(cli(['version']).ms);
          load(n);
          const res = timedCli([...at(n), 'pair', 'add', '--file', jsonl.get(n)!], dir);
          cliS.get(n)!.ms.push(res.ms);
          cliS.get(n)!.cpu.push(res.cpuMs);
          if (n === switchAt && r === 0) {
            const id = vexIndex(n - 1) & 0xffff;
            for (let i = 0; i < params.switches; i++) {
              sw.cli.push(cli([...at(n), 'pair', 'mode', '--id', String(id), i % 2 ? 'fwd' : 'tap']).ms);
            }
          }
          unload(n);
        },
        async () => {
          load(n);
          const sw1 = n === switchAt && r === 0;
          const args = [benchJs('api-child.js'), pins.get(n)!, bNs.get(n)!.name, jsonl.get(n)!, ...(sw1 ? [String(vexIndex(n - 1) & 0xffff), String(params.switches * 10)] : [])];
          const out = JSON.parse(sh(process.execPath, args, { env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' } })) as { addMs: number; addCpuMs: number; setModeMs: number[] };
          api.get(n)!.ms.push(out.addMs);
          api.get(n)!.cpu.push(out.addCpuMs);
          sw.api.push(...out.setModeMs);
          unload(n);
        },
      ];
      for (const s of r % 2 ? [...steps].reverse() : steps) await s();
    }
  }

  // Scenario 5: peak RSS of the loader (not timed runs).
  progress('memory: loader peak RSS');
  let memory: MemoryResult | undefined;
  const preload = benchJs('rss-preload.js');
  if (fs.existsSync(preload)) {
    const out = path.join(dir, 'rss.json');
    const env = { NEUV_BENCH_RSS_OUT: out };
    cli([...at(1000), 'load', ...objArgs()], { nodeArgs: ['-r', preload], env });
    const loadKiB = readRss(out);
    cli([...at(1000), 'pair', 'add', '--file', jsonl.get(1000)!], { nodeArgs: ['-r', preload], env });
    const addKiB = readRss(out);
    unload(1000);
    sh(process.execPath, ['-r', preload, '-e', '0'], { env: { ...process.env, ...env } });
    const floor = readRss(out);
    memory = { loadMaxRssKiB: loadKiB, addPairs1000MaxRssKiB: addKiB, nodeFloorKiB: floor, how: 'process.resourceUsage().maxRSS at exit (node -r dist/bench/rss-preload.js bin/neuv-bpf ...)' };
    // One tc process of NeuVector's, through python's getrusage when it is there.
    const py = shResult('python3', ['-c', 'import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)',
      'tc', '-n', nvNs.get(1)!.name, 'qdisc', 'add', 'dev', vinName(0), 'ingress'], { allowFail: true });
    if (py.code === 0) memory.tcMaxRssKiB = Number(py.stdout.trim());
  }

  for (const ns of [...nvNs.values(), ...bNs.values()]) ns.ip('link', 'del', 'group', GROUP);

  const onboard: OnboardPoint[] = sizes.map((n) => {
    const a = nv.get(n)!;
    const c = cliS.get(n)!;
    const p = api.get(n)!;
    return {
      pairs: n,
      nvProcesses: n * 8,
      nvMs: summary(a.ms),
      nvCpuMs: summary(a.cpu),
      nvPairsRun: nvRun.get(n) ?? 0,
      cliMs: summary(c.ms),
      cliCpuMs: summary(c.cpu),
      apiMs: summary(p.ms),
      apiCpuMs: summary(p.cpu),
      nvOverCli: summary(a.ms.map((x, i) => x / c.ms[i]!)),
      nvOverCliCpu: summary(a.cpu.map((x, i) => x / c.cpu[i]!)),
    };
  });
  return {
    params,
    onboard,
    modeSwitch: { nvMs: summary(sw.nv), nvProcesses: 12, cliMs: summary(sw.cli), apiMs: summary(sw.api), switchedAtPairs: switchAt },
    cliStartupMs: summary(startup),
    memory,
    notes: [
      `NeuVector at 1,000 pairs runs once, for up to ${params.nvBudgetMs / 1000} s; when the budget runs out its figures are scaled linearly from the pairs done (nvPairsRun), in the netns holding all 1,000 pairs, so every tc process pays what it would for the whole run.`,
      'CPU figures: user + system time of the processes involved (the tc processes; the CLI process and the `ip` it runs; the API process during addPairs), steadier than wall time on a loaded machine.',
      "NeuVector's count: 8 tc processes per pair (2 qdisc add + 6 filter add for FWD without pedit), run one after the other from one /bin/sh script inside the enforcer netns (one fork+exec each, about as cheap as Go's os/exec; NeuVector wraps each in `sh -c` and naps 250 ms between retries, both left out): its best case.",
      'neuv-bpf CLI figures include Node.js start-up and module loading (one process for the whole batch); API figures are Datapath.addPairs / setMode timed inside a process that has the Datapath open already (bench/api-child.ts).',
      "Every tc process starts by dumping every link of the netns (iproute2 resolves names through its link cache), so NeuVector's cost per process grows with the number of pairs on the node: each size here has its own netns holding exactly its pairs.",
      'The timed processes (the tc script, the CLI, the API process) run at the nice value of the run, not real-time: their work leans on kernel threads a real-time caller would starve. Other load on the machine stretches them (see the CPU busy figure at the top).',
      "A NeuVector mode switch here is ResetPortPair + FwdPortPair (12 tc processes); a real FWD<->TAP switch has the same count but TAP's `action drop` needs act_gact, which this kernel lacks.",
    ],
  };
}
