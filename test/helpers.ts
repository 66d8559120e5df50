/**
 * The tests' helpers: kernel-suite gating (requireKernel), the leak check
 * every kernel suite ends with, runners for the real CLI, kernel-state
 * snapshots. What the benchmarks and the demo share with them (names,
 * cleanups, sh, netns and pin roots) is the harness's, re-exported here.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Command } from 'commander';
import { LOCK_DIR, pinRootStem, removeLockFiles } from '../src/lock';
import { MapFd } from '../src/bpf';
import { kernelUnavailable } from '../harness/kernel';
import { CLI, cleanupOnSignals, OBJ, ROOT, runCleanups, sh, uniqueNames } from '../harness/proc';

import type { Netns } from '../harness/net';

export type { Netns };
export { makeNet, makeNetns } from '../harness/net';
export { kernelUnavailable, makePinRoot } from '../harness/kernel';
export { CLI, OBJ, onCleanup, ROOT, runCleanups, sh, TIME_SCALE, uniqueName } from '../harness/proc';

// A suite stopped by a signal (make test's runner passes its own on) undoes what it made first.
cleanupOnSignals('test');

/**
 * Call in a suite's `before` hook: skips the suite with a clear reason when the
 * kernel is out of reach, except where NEUV_BPF_REQUIRE_KERNEL=1 (CI), where a
 * skip would hide a regression, so it fails instead.
 */
export function requireKernel(ctx: Mocha.Context): void {
  const why = kernelUnavailable();
  if (!why) return;
  if (process.env.NEUV_BPF_REQUIRE_KERNEL === '1') {
    throw new Error(`kernel suite cannot run but NEUV_BPF_REQUIRE_KERNEL=1: ${why}`);
  }
  // eslint-disable-next-line no-console
  console.log(`      (skipped: ${why})`);
  ctx.skip();
}

/**
 * Files under /run/neuv-bpf (locks, journals, watch state) of pin roots named
 * after a uniqueName() of this process, except those in `before` (a name an
 * earlier run with the same pid left). test/lockfiles.test.ts checks that a
 * run leaves none.
 */
export function lockFilesOfThisProcess(before: ReadonlySet<string> = new Set()): string[] {
  if (!fs.existsSync(LOCK_DIR)) return [];
  const marks = uniqueNames().map((n) => new RegExp(`_${pinRootStem(n)}(?:[._%-]|$)`));
  return fs.readdirSync(LOCK_DIR).filter((f) => !before.has(f) && marks.some((m) => m.test(f)));
}

/** bpftool's JSON output (-j) for args. */
export function bpftoolJson(args: string[]): unknown {
  return JSON.parse(sh('bpftool', ['-j', ...args]));
}

/** A test pin root's files under /run/neuv-bpf: makePinRoot's cleanup removes them; suites that name pin roots another way call it. */
export { removeLockFiles };

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Whether every directory above `file` lets others through and others may read it. */
function othersCanRead(file: string): boolean {
  if ((fs.statSync(file).mode & 0o004) === 0) return false;
  for (let d = path.dirname(file); ; d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) return false;
    if (d === path.dirname(d)) return true;
  }
}

let cliCopy: string | undefined;
/**
 * The CLI as another user (the unprivileged checks run it as nobody) can
 * run it: this clone's, or where this clone sits in a directory others
 * cannot enter (under /root, mode 0700), a copy of what it needs (bin,
 * dist, node_modules, package.json, the BPF object) in a 0755 directory
 * under the system's temporary directory, made once and removed at exit.
 */
export function cliAsOther(): string {
  if (othersCanRead(CLI)) return CLI;
  if (cliCopy) return cliCopy;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neuv-bpf-cli-'));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  fs.mkdirSync(path.join(dir, 'build'), { mode: 0o755 });
  for (const f of ['bin', 'dist', 'node_modules', 'package.json']) execFileSync('cp', ['-a', path.join(ROOT, f), dir]);
  if (fs.existsSync(OBJ)) execFileSync('cp', ['-a', OBJ, path.join(dir, 'build')]);
  execFileSync('chmod', ['-R', 'go+rX', dir]);
  return (cliCopy = path.join(dir, 'bin', 'neuv-bpf'));
}

/** Runs the real CLI synchronously (as `uid` from a copy it can read, where needed: cliAsOther). */
export function cli(args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string; uid?: number } = {}): CliResult {
  const bin = opts.uid === undefined || opts.uid === process.getuid?.() ? CLI : cliAsOther();
  const r = spawnSync(process.execPath, [bin, ...args], {
    cwd: bin === CLI ? undefined : path.dirname(path.dirname(bin)),
    encoding: 'utf8',
    env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn', ...opts.env },
    input: opts.input,
    maxBuffer: 256 << 20,
    uid: opts.uid,
    gid: opts.uid,
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

/** Runs the real CLI asynchronously (for commands that stream or wait). */
export function cliSpawn(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn', ...env } });
}

/** Asserts stderr is one line (the CLI's contract for errors). */
export function oneErrorLine(r: CliResult): string {
  const lines = r.stderr.trim().split('\n').filter((l) => l.length > 0);
  if (lines.length !== 1) throw new Error(`expected one error line, got ${lines.length}:\n${r.stderr}`);
  return lines[0]!;
}

/**
 * A snapshot of what the kernel holds in a netns and a pin root, for "nothing changed" checks: links, each
 * link's qdiscs and ingress filters (one tc process for them all: `tc -batch`, each device's filters after
 * its `qdisc show dev`, whose lines name the device), pins and the state maps' entries (read here through
 * libbpf, not a bpftool per map). Counters are live (a veth gets IPv6 router solicitations), so for
 * neuv_stats and neuv_global only the keys count. Three processes a call instead of 2 per link + 1 per map
 * (badinput calls it after each of its ~160 cases).
 */
export function kernelState(ns: Netns, pinRoot: string): string {
  const links = JSON.parse(ns.ip('-j', 'link', 'show') || '[]') as Array<{ ifname: string; ifindex: number; address?: string; mtu: number; operstate?: string }>;
  const parts: string[] = links.map((l) => `link ${l.ifindex} ${l.ifname} ${l.address} ${l.mtu} ${l.operstate}`);
  const batch = links.map((l) => `qdisc show dev ${l.ifname}\nfilter show dev ${l.ifname} ingress\n`).join('');
  if (batch) parts.push(sh('ip', ['netns', 'exec', ns.name, 'tc', '-force', '-batch', '-'], { allowFail: true, input: batch }).trim());
  if (fs.existsSync(pinRoot)) {
    for (const f of fs.readdirSync(pinRoot).sort()) {
      parts.push(`pin ${f}`);
      if (!f.startsWith('neuv_')) continue;
      let m: MapFd | undefined;
      try {
        m = MapFd.fromPin(path.join(pinRoot, f));
        const keysOnly = f === 'neuv_stats' || f === 'neuv_global';
        parts.push(m.entries().map(([k, v]) => (keysOnly ? k.toString('hex') : `${k.toString('hex')}=${v.toString('hex')}`)).sort().join(' '));
      } catch {
        parts.push('(not a map)'); // a program or link pin
      } finally {
        m?.close();
      }
    }
  } else parts.push('no pin root');
  return parts.join('\n');
}

/** Leftovers from tests on this machine: netns and pin roots with our prefix. */
export function leftovers(prefix = 'nbt'): string[] {
  const out: string[] = [];
  for (const l of sh('ip', ['netns', 'list'], { allowFail: true }).split('\n')) {
    const n = l.split(' ')[0];
    if (n && n.startsWith(prefix + process.pid.toString(36))) out.push(`netns ${n}`);
  }
  if (fs.existsSync('/sys/fs/bpf')) {
    for (const f of fs.readdirSync('/sys/fs/bpf')) if (f.startsWith(prefix + process.pid.toString(36))) out.push(`pin ${f}`);
  }
  return out;
}

/**
 * The leak check every kernel suite ends with, registered inside its
 * `describe`: cleanups after each test, and after the suite no netns or pin
 * of this process is left (cleanups run first, so only a cleanup that was
 * never registered, or that failed, shows up). `{ perTest: false }` for a
 * suite whose fixture lives from its `before` to its end (a ProgFixture): the
 * cleanups run after the suite only. `prefixes`: the name prefixes checked
 * (uniqueName's; default 'nbt'), for a suite that names things with others.
 * An `after` hook declared before it runs before its check.
 */
export function leakChecks(opts: { perTest?: boolean; prefixes?: string[] } = {}): void {
  if (opts.perTest !== false) afterEach(runCleanups);
  after(function () {
    runCleanups();
    assert.deepEqual((opts.prefixes ?? ['nbt']).flatMap((p) => leftovers(p)), [], 'tests left namespaces or pins behind');
  });
}

/** poll(2)'s syscall number, as /proc/<pid>/task/<tid>/syscall shows it (arm64 has only ppoll). */
const POLL_NR: Partial<Record<string, number>> = { x64: 7, arm64: 73 };

/**
 * The nice value of each thread of `pid` blocked in poll(2): the koffi worker
 * thread waiting on a pidfd (src/bpf/pidfd.ts); node's own threads wait in
 * epoll or on futexes.
 */
export function pollingThreadsNice(pid: number): number[] {
  const nr = POLL_NR[process.arch];
  if (nr === undefined) throw new Error(`no poll syscall number for ${process.arch}`);
  const out: number[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      if (Number(fs.readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').split(' ')[0]) !== nr) continue;
      // stat: "pid (comm) state ..." with nice the 19th field; comm may hold spaces, so split after its ')'.
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      out.push(Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
    } catch {
      /* the thread ended meanwhile */
    }
  }
  return out;
}

/** Every leaf command of a commander program (help excepted), with its path of names. */
export function leafCommands(c: Command, prefix: string[] = []): Array<{ path: string[]; cmd: Command }> {
  const out: Array<{ path: string[]; cmd: Command }> = [];
  for (const sub of c.commands) {
    if (sub.name() === 'help') continue;
    const p = [...prefix, sub.name()];
    if (sub.commands.length) out.push(...leafCommands(sub, p));
    else out.push({ path: p, cmd: sub });
  }
  return out;
}
