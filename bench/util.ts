/**
 * Shared plumbing of the benchmarks, on the harness (harness/: sh, the
 * cleanup stack, the netns builder, the stub DP, shared with the tests and
 * the demo): names unique to this run, the cleanup stack run on Ctrl-C /
 * SIGTERM too, network namespaces with an anchor process (so their counters
 * are read from /proc/<pid>/net/* without spawning anything), child
 * processes that are always reaped, statistics.
 *
 * Every name this run creates starts with `nbench-<pid>-`: netns, pin roots,
 * temporary files. Nothing here is part of `make test`.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeNet, Netns } from '../harness/net';
import { cleanupOnSignals, collectOutput, onCleanup, ROOT, runCleanups, shResult, ShResult } from '../harness/proc';

export { onCleanup, ROOT, runCleanups };
export { sh, shResult } from '../harness/proc';
/** Where the CLI, the stub DP and the bench helpers run from: the tree, or the run's snapshot (snapshotRuntime). */
let RUNTIME = ROOT;
export const cliPath = () => path.join(RUNTIME, 'bin', 'neuv-bpf');
export const stubDpPath = () => path.join(RUNTIME, 'build', 'stub-dp');
export const benchJs = (name: string) => path.join(RUNTIME, 'dist', 'bench', name);
export const RUN_TAG = `nbench-${process.pid}`;

let seq = 0;
/** `nbench-<pid>-<what>-<n>`: unique to this run and call. */
export function uniq(what: string): string {
  seq++;
  return `${RUN_TAG}-${what}-${seq}`;
}

// ---------------------------------------------------------------- cleanup

let exitInstalled = false;
/** Ctrl-C / SIGTERM / SIGHUP: undo everything, then exit 128 + the signal (harness/proc.ts); at exit too. */
export function installSignalCleanup(who = 'bench'): void {
  cleanupOnSignals(who);
  if (exitInstalled) return;
  exitInstalled = true;
  process.on('exit', () => runCleanups());
}

// ---------------------------------------------------------------- processes

/**
 * Spawns a long-running child in its own process group; cleanup kills the
 * whole group (trafgen forks a worker per CPU).
 */
export function spawnGroup(cmd: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess & { stop: () => Promise<void> } {
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  const output = collectOutput(child);
  const kill = (sig: NodeJS.Signals) => {
    try {
      if (child.pid) process.kill(-child.pid, sig);
    } catch {
      /* gone */
    }
  };
  const drop = onCleanup(() => kill('SIGKILL'), `kill ${cmd} ${child.pid}`);
  const c = child as ChildProcess & { stop: () => Promise<void>; output: () => { out: string; err: string } };
  c.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      kill('SIGTERM');
      const t = setTimeout(() => kill('SIGKILL'), 3000);
      await output.done;
      clearTimeout(t);
    }
    drop();
  };
  c.output = () => ({ out: output.stdout, err: output.stderr });
  return c;
}

export function outputOf(c: ChildProcess): { out: string; err: string } {
  return (c as unknown as { output: () => { out: string; err: string } }).output();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** `--name N` from a standalone bench's argv: a positive integer, or def when absent. */
export function intArg(argv: string[], name: string, def: number): number {
  const i = argv.indexOf(name);
  const v = i >= 0 ? Number(argv[i + 1]) : def;
  if (!Number.isInteger(v) || v <= 0) throw new Error(`${name} needs a positive integer`);
  return v;
}

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

// ---------------------------------------------------------------- netns

export interface ProcNet {
  /** rx/tx packets and bytes of every device, from /proc/<anchor>/net/dev. */
  dev(): Map<string, { rxPackets: number; rxBytes: number; rxDrop: number; txPackets: number; txBytes: number; txDrop: number }>;
  /** /proc/<anchor>/net/snmp as { 'Ip:InReceives': n, ... }. */
  snmp(): Record<string, number>;
}

/** A netns of the harness (harness/net.ts) with an anchor process inside: its counters without spawning anything. */
export interface BenchNetns extends Netns, ProcNet {
  readonly anchorPid: number;
  /** Waits until the anchor process has entered the netns (its /proc net view differs from ours). */
  ready(): Promise<void>;
  /**
   * One counter of one device, from the netns's own sysfs as the anchor
   * sees it (`ip netns exec` mounted it): cheap even with thousands of
   * devices, where /proc/net/dev lists them all.
   */
  devStat(dev: string, name: 'rx_packets' | 'tx_packets' | 'rx_dropped' | 'tx_dropped'): number;
}

/**
 * A netns `nbench-<pid>-<what>-<n>` (lo up, IPv6 off: no DAD, router
 * solicitations or link-local addresses in the counters) with its anchor,
 * both gone at cleanup or at del().
 */
export function netns(what: string): BenchNetns {
  const net = makeNet();
  const ns = net.ns(uniq(what), { ipv6: false });
  const anchor = net.spawnIn(ns.name, 'sleep', ['infinity']);
  const anchorPid = anchor.pid!;
  const proc = (f: string) => fs.readFileSync(`/proc/${anchorPid}/${f}`, 'utf8');
  return {
    ...ns,
    del: () => net.destroy(),
    anchorPid,
    ready: async () => {
      const mine = fs.readlinkSync('/proc/self/ns/net');
      for (let i = 0; i < 200; i++) {
        try {
          if (fs.readlinkSync(`/proc/${anchorPid}/ns/net`) !== mine && fs.readlinkSync(`/proc/${anchorPid}/exe`).endsWith('sleep')) return;
        } catch {
          /* not yet */
        }
        await sleep(5);
      }
      throw new Error(`anchor process of ${ns.name} did not start`);
    },
    devStat: (dev, name) => Number(proc(`root/sys/class/net/${dev}/statistics/${name}`)),
    dev: () => parseNetDev(proc('net/dev')),
    snmp: () => parseSnmp(proc('net/snmp')),
  };
}

export function parseNetDev(text: string): ReturnType<ProcNet['dev']> {
  const out: ReturnType<ProcNet['dev']> = new Map();
  for (const line of text.split('\n').slice(2)) {
    const m = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!m) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    out.set(m[1]!, { rxBytes: f[0]!, rxPackets: f[1]!, rxDrop: f[3]!, txBytes: f[8]!, txPackets: f[9]!, txDrop: f[11]! });
  }
  return out;
}

export function parseSnmp(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  const lines = text.split('\n');
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const h = lines[i]!.trim().split(/\s+/);
    const v = lines[i + 1]!.trim().split(/\s+/);
    const proto = h[0]!.replace(/:$/, '');
    for (let k = 1; k < h.length; k++) out[`${proto}${h[k]}`] = Number(v[k]);
  }
  return out;
}

/** A pin root under /sys/fs/bpf, removed at cleanup. */
export function pinRoot(what: string): string {
  const p = `/sys/fs/bpf/${uniq(what)}`;
  onCleanup(() => fs.rmSync(p, { recursive: true, force: true }), `pin root ${p}`);
  return p;
}

/** A temporary directory removed at cleanup. */
export function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `${RUN_TAG}-`));
  onCleanup(() => fs.rmSync(d, { recursive: true, force: true }), `tmp ${d}`);
  return d;
}

// ---------------------------------------------------------------- scheduling

/**
 * The traffic processes (trafgen, iperf3 at both ends, the stub DP) run
 * SCHED_FIFO priority 20 unless NEUV_BENCH_RT=0: on a shared machine, other
 * load otherwise takes a varying share of the CPU from them (measured here:
 * 64-byte rates varying 10x with nice -10, within a few % with SCHED_FIFO).
 * The kernel's RT throttling still leaves 5% of every CPU to everything
 * else, and each is run under `timeout -s KILL` so none can outlive the run.
 * Control-plane commands do not: their work leans on kernel threads (RCU,
 * the per-CPU allocator's refill, workqueues) that a real-time caller would
 * starve on its own CPU (seen: ENOMEM from per-CPU map updates).
 */
export const RT_PRIORITY = 20;
export function rtEnabled(): boolean {
  return process.env.NEUV_BENCH_RT !== '0';
}
export function rt(): string[] {
  return rtEnabled() ? ['chrt', '-f', String(RT_PRIORITY)] : [];
}
/** `timeout -s KILL N`: a hard end for a process that could otherwise spin on after a crash. */
export function bounded(seconds: number): string[] {
  return ['timeout', '-s', 'KILL', String(Math.ceil(seconds))];
}

// ---------------------------------------------------------------- the CLI

/**
 * Copies what the run executes (bin/, dist/, build/neuv.bpf.o, build/stub-dp,
 * package.json; node_modules linked) to a directory of its own, once, right
 * after `make build`: every CLI call, stub DP and helper process of the run
 * then runs the same code and loads the same object, even while the working
 * tree is rebuilt meanwhile. Removed at exit. Returns the object's sha256.
 */
export function snapshotRuntime(): { dir: string; objSha256: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${RUN_TAG}-rt-`));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  for (const d of ['bin', 'dist']) fs.cpSync(path.join(ROOT, d), path.join(dir, d), { recursive: true });
  fs.mkdirSync(path.join(dir, 'build'));
  for (const f of ['neuv.bpf.o', 'stub-dp']) fs.copyFileSync(path.join(ROOT, 'build', f), path.join(dir, 'build', f));
  fs.chmodSync(path.join(dir, 'build', 'stub-dp'), 0o755);
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'));
  RUNTIME = dir;
  const objSha256 = createHash('sha256').update(fs.readFileSync(path.join(dir, 'build', 'neuv.bpf.o'))).digest('hex');
  return { dir, objSha256 };
}

/** `--obj <the run's object>` for `load`. */
export function objArgs(): string[] {
  return ['--obj', path.join(RUNTIME, 'build', 'neuv.bpf.o')];
}

export function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; allowFail?: boolean; nodeArgs?: string[]; rt?: boolean } = {}): ShResult & { ms: number } {
  const pre = opts.rt ? rt() : [];
  const t0 = nowMs();
  const r = shResult(pre.length ? pre[0]! : process.execPath, [...pre.slice(1), ...(pre.length ? [process.execPath] : []), ...(opts.nodeArgs ?? []), cliPath(), ...args], {
    env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn', ...opts.env },
    input: opts.input,
    allowFail: opts.allowFail,
  });
  return { ...r, ms: nowMs() - t0 };
}

// ---------------------------------------------------------------- statistics

export function median(xs: number[]): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
  samples: number[];
}

export function summary(xs: number[]): Summary {
  return { median: median(xs), min: Math.min(...xs), max: Math.max(...xs), n: xs.length, samples: xs };
}

/** Median of the per-round ratios a[i]/b[i] (paired, so drift cancels). */
export function pairedRatio(a: number[], b: number[]): Summary {
  const r: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (b[i]! > 0) r.push(a[i]! / b[i]!);
  return summary(r);
}

// ---------------------------------------------------------------- machine

/** Busy fraction of all CPUs over a window, from /proc/stat. */
export async function cpuBusy(ms = 1000): Promise<number> {
  const read = () => {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + b, 0);
    return { idle, total };
  };
  const a = read();
  await sleep(ms);
  const b = read();
  const dt = b.total - a.total;
  return dt > 0 ? 1 - (b.idle - a.idle) / dt : 0;
}

export interface MachineInfo {
  kernel: string;
  cores: number;
  cpuModel: string;
  memGiB: number;
  node: string;
  iproute2: string;
  commit: string;
  dirty: boolean;
  date: string;
}

export function machineInfo(): MachineInfo {
  const git = (args: string[]) => shResult('git', ['-C', ROOT, ...args], { allowFail: true }).stdout.trim();
  return {
    kernel: os.release(),
    cores: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memGiB: Math.round(os.totalmem() / 2 ** 30),
    node: process.version,
    iproute2: shResult('ip', ['-V'], { allowFail: true }).stdout.trim(),
    commit: git(['rev-parse', '--short', 'HEAD']) || 'unknown',
    dirty: git(['status', '--porcelain', '--untracked-files=no']).length > 0,
    date: new Date().toISOString(),
  };
}

/** Formats a number with a fixed number of significant digits for tables. */
export function fmt(x: number | undefined, digits = 3): string {
  if (x === undefined || !Number.isFinite(x)) return 'n/a';
  if (x === 0) return '0';
  const mag = Math.floor(Math.log10(Math.abs(x)));
  const dec = Math.max(0, digits - 1 - mag);
  return x.toFixed(Math.min(dec, 6));
}

export function fmtRatio(x: number | undefined): string {
  return x === undefined || !Number.isFinite(x) ? 'n/a' : `${fmt(x, 3)}x`;
}

/** Logs a progress line on stderr (stdout is kept for the summary). */
const progressStart = Date.now();
export function progress(msg: string): void {
  process.stderr.write(`  [${((Date.now() - progressStart) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);
}
