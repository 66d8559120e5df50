/**
 * What every part of the harness stands on: the repository (ROOT and the
 * paths of what `make build` makes), running a program (sh: an argument
 * array, never a shell), waiting for a condition (waitFor), names unique to
 * this process (uniqueName), and the one cleanup stack (onCleanup,
 * runCleanups) with which the kernel suites, the benchmarks and the demo
 * undo what they make, last made first undone, even on failure.
 */
import { ChildProcess, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { PACKAGE_ROOT as ROOT } from '../src/root';

/** The repository (this file runs as dist/harness/proc.js): bin/, build/, dist/. */
export { ROOT };
export const CLI = path.join(ROOT, 'bin', 'neuv-bpf');
export const OBJ = path.join(ROOT, 'build', 'neuv.bpf.o');
/** The stub enforcer DP (tools/stub-dp.c). */
export const STUB_DP = path.join(ROOT, 'build', 'stub-dp');

/**
 * How many times slower than the host this machine runs the tests (1 on the
 * host; set by scripts/vm-init.sh and scripts/vagrant-guest-test.sh in an
 * emulated VM, where mocha's timeouts are scaled the same way): for deadlines
 * and durations a test or the harness computes itself.
 */
export const TIME_SCALE = Math.max(1, Math.floor(Number(process.env.NEUV_BPF_TEST_TIME_SCALE ?? '1')) || 1);

// ================================================================ programs

export interface ShOptions {
  /** Return what it printed whatever its exit code (default: throw unless 0). */
  allowFail?: boolean;
  input?: string;
  env?: NodeJS.ProcessEnv;
}

export interface ShResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program synchronously (argument array); throws with the first lines of its stderr unless allowFail. */
export function shResult(cmd: string, args: string[], opts: ShOptions = {}): ShResult {
  const r = spawnSync(cmd, args, { encoding: 'utf8', input: opts.input, env: opts.env ?? process.env, maxBuffer: 256 << 20 });
  const res = { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
  if ((res.code !== 0 || r.error) && !opts.allowFail) {
    const why = (res.stderr || r.error?.message || '').trim().split('\n').slice(0, 3).join(' | ');
    throw new Error(`${cmd} ${args.join(' ').slice(0, 300)} failed (${r.status ?? r.signal ?? 'not run'}): ${why}`);
  }
  return res;
}

/** shResult's stdout. */
export function sh(cmd: string, args: string[], opts: ShOptions = {}): string {
  return shResult(cmd, args, opts).stdout;
}

/** Waits for a condition, polling; throws `what` after timeoutMs. */
export async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 5000, everyMs = 20): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** How a child ended, and everything it printed. */
export interface ChildResult {
  /** Its exit code; null when a signal ended it or it could not be started. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A running child's output so far, and its end. */
export interface ChildOutput {
  readonly stdout: string;
  readonly stderr: string;
  /** Whether it has exited (its output may still be arriving until `done`). */
  readonly exited: boolean;
  /** Resolves once it exited and its output is closed (never rejects: a child that could not start ends with code null, the error in stderr). */
  readonly done: Promise<ChildResult>;
}

/** Collects what a child spawned with piped stdout and stderr prints, as text. */
export function collectOutput(child: ChildProcess): ChildOutput {
  let stdout = '';
  let stderr = '';
  let exited = false;
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  child.once('exit', () => (exited = true));
  const done = new Promise<ChildResult>((resolve) => {
    child.once('error', (e) => {
      exited = true;
      resolve({ code: null, signal: null, stdout, stderr: stderr + e.message });
    });
    child.once('close', (code: number | null, signal: NodeJS.Signals | null) => resolve({ code, signal, stdout, stderr }));
  });
  return {
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
    get exited() {
      return exited;
    },
    done,
  };
}

// ================================================================ names and cleanups

const namesMade: string[] = [];
let seq = 0;

/** A name unique to this process and call, with a prefix tests own ("nbt"): a netns, a pin root. */
export function uniqueName(prefix = 'nbt'): string {
  seq++;
  const n = `${prefix}${process.pid.toString(36)}${seq.toString(36)}`.slice(0, 15);
  namesMade.push(n);
  return n;
}

/** Every name uniqueName() has given out in this process. */
export function uniqueNames(): readonly string[] {
  return namesMade;
}

const cleanups: Array<{ fn: () => void; what?: string }> = [];

/**
 * Registers an undo, run by runCleanups() (last registered, first run).
 * Returns a function that runs this one now and forgets it.
 */
export function onCleanup(fn: () => void, what?: string): () => void {
  const entry = { fn, what };
  cleanups.push(entry);
  return () => {
    const i = cleanups.indexOf(entry);
    if (i < 0) return;
    cleanups.splice(i, 1);
    runOne(entry);
  };
}

function runOne(c: { fn: () => void; what?: string }): void {
  try {
    c.fn();
  } catch (e) {
    process.stderr.write(`harness: cleanup${c.what ? ` '${c.what}'` : ''} failed: ${(e as Error).message}\n`);
  }
}

/** Runs every registered cleanup, last registered first; one that fails is reported on stderr and the rest still run. */
export function runCleanups(): void {
  runCleanupsTo(0);
}

/** How many cleanups are registered now: runCleanupsTo(depth) later undoes only what came after. */
export function cleanupDepth(): number {
  return cleanups.length;
}

/** runCleanups() for those registered since cleanupDepth() said `depth`. */
export function runCleanupsTo(depth: number): void {
  while (cleanups.length > depth) runOne(cleanups.pop()!);
}

/** The signals that stop a run, and the exit status after each (128 + its number). */
const STOP_SIGNALS: Array<[NodeJS.Signals, number]> = [['SIGHUP', 129], ['SIGINT', 130], ['SIGTERM', 143]];
let stopHandled = false;

/**
 * SIGHUP, SIGINT or SIGTERM: one line on stderr naming `who`, the cleanup
 * stack run, then exit with 128 + the signal's number. Without a handler
 * such a signal ends node at once (mocha installs none), leaving the run's
 * netns, pins and lock files behind. Once per process; the first caller's
 * `who` names it.
 */
export function cleanupOnSignals(who: string): void {
  if (stopHandled) return;
  stopHandled = true;
  for (const [sig, status] of STOP_SIGNALS) {
    process.on(sig, () => {
      process.stderr.write(`\n${who}: ${sig}, running ${cleanups.length} cleanup(s) before exiting\n`);
      runCleanups();
      process.exit(status);
    });
  }
}
