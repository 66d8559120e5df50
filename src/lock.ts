/**
 * One lock per pin root so two neuv-bpf invocations never interleave their
 * changes. flock(2) on a file under /run/neuv-bpf: the kernel drops it when
 * the holder dies (even by SIGKILL), so a stale lock cannot block anyone.
 * (bpffs refuses regular files, so the lock cannot live in the pin root.)
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_EX, LOCK_NB, LOCK_SH, LOCK_UN, flock, rcuGraceAfterDeletes } from './bpf';
import { ExitCode, NeuvError } from './errors';
import { log } from './log';
import { checkOwnDir, ensureOwnDir, openOwnFile, readOwnFile, writeOwnFileAtomic } from './safefs';
import { safePoint } from './signals';

export const LOCK_DIR = process.env.NEUV_BPF_LOCK_DIR ?? '/run/neuv-bpf';

/** Longest pin root name kept readable under LOCK_DIR (NAME_MAX is 255, and `what` follows). */
const MAX_STEM = 200;

/**
 * A pin root as a file name, one to one: '/' becomes '_', every byte but
 * [A-Za-z0-9-] is %XX (so '_', '.' and '%' of the pin root itself are
 * escaped, and the name's first '.' ends it). /sys/fs/bpf/a/b is _sys_fs_bpf_a_b,
 * /sys/fs/bpf/a_b is _sys_fs_bpf_a%5Fb. One longer than MAX_STEM is '=' and the
 * SHA-256 of the pin root (no escaped name starts with '=').
 */
export function pinRootStem(pinRoot: string): string {
  let s = '';
  for (const b of Buffer.from(pinRoot, 'utf8')) {
    const c = String.fromCharCode(b);
    s += c === '/' ? '_' : /[A-Za-z0-9-]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return s.length <= MAX_STEM ? s : `=${createHash('sha256').update(pinRoot).digest('hex')}`;
}

/**
 * A pin root's file `what` under LOCK_DIR: ('/sys/fs/bpf/neuv', 'lock') is
 * /run/neuv-bpf/_sys_fs_bpf_neuv.lock. Every file of a pin root there (locks,
 * journal, watch state) is named this way.
 */
export function lockDirFile(pinRoot: string, what: string): string {
  return path.join(LOCK_DIR, `${pinRootStem(pinRoot)}.${what}`);
}

/**
 * Makes LOCK_DIR (0700) or checks it, every time before a file in it is
 * used: a real directory owned by root (or us), mode 700, under directories
 * nobody else can change (src/safefs.ts); anything else is refused.
 */
export function ensureLockDir(): void {
  ensureOwnDir(LOCK_DIR, 'lock directory');
}

/**
 * A pin root's directory `what` under LOCK_DIR (the journal): made 0700 when
 * `create`, else undefined when there is none; refused when it is not ours.
 */
export function lockDirDir(pinRoot: string, what: string, create: boolean): string | undefined {
  ensureLockDir();
  const d = lockDirFile(pinRoot, what);
  if (create) ensureOwnDir(d, `${what} directory`);
  else if (!checkOwnDir(d, `${what} directory`)) return undefined;
  return d;
}

/** A pin root's state file `what` under LOCK_DIR (not following a symlink), or undefined when there is none. */
export function readLockDirFile(pinRoot: string, what: string): string | undefined {
  ensureLockDir();
  return readOwnFile(lockDirFile(pinRoot, what), `${what} file`);
}

/** Replaces a pin root's state file `what` under LOCK_DIR atomically (writeOwnFileAtomic). */
export function writeLockDirFile(pinRoot: string, what: string, data: string): void {
  ensureLockDir();
  const p = lockDirFile(pinRoot, what);
  writeOwnFileAtomic(p, `${p}.${process.pid}.tmp`, data, `${what} file`);
}

/** Opens (creating it 0600) a pin root's file `what` under LOCK_DIR for flock, without following a symlink. */
export function openLockDirFile(pinRoot: string, what: string): number {
  ensureLockDir();
  return openOwnFile(lockDirFile(pinRoot, what), fs.constants.O_RDWR | fs.constants.O_CREAT, `${what} file`)!;
}

/** Opens a pin root's existing file `what` under LOCK_DIR read-only (to flock it shared), without following a symlink; undefined when there is none. */
export function readableLockDirFile(pinRoot: string, what: string): number | undefined {
  ensureLockDir();
  return openOwnFile(lockDirFile(pinRoot, what), fs.constants.O_RDONLY, `${what} file`);
}

export function lockPath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'lock');
}

/** The names of the files the pin roots have under LOCK_DIR now. */
export function lockDirFiles(...pinRoots: string[]): string[] {
  if (!fs.existsSync(LOCK_DIR)) return [];
  const own = pinRoots.map((p) => path.basename(lockDirFile(p, '')));
  return fs.readdirSync(LOCK_DIR).filter((f) => own.some((o) => f.startsWith(o)));
}

/**
 * Removes every file a pin root has under LOCK_DIR: its lock and wait files,
 * the intercept, config and trace locks, the watch state. Only for pin roots
 * that go away with nobody using them (the demo's, the tests'): a node keeps
 * its one pin root's files, as a waiter may hold one open.
 */
export function removeLockFiles(...pinRoots: string[]): void {
  for (const f of lockDirFiles(...pinRoots)) fs.rmSync(path.join(LOCK_DIR, f), { recursive: true, force: true });
}

/**
 * Whether another caller is waiting for the lock: waiters hold a shared
 * flock on the lock's ".wait" file while they poll, so an exclusive try on it
 * fails exactly while one does.
 */
function othersWaiting(wfd: number, wp: string): boolean {
  if (!flock(wfd, LOCK_EX | LOCK_NB, wp)) return true;
  flock(wfd, LOCK_UN, wp);
  return false;
}

/** A lock this process holds: its file, and whether it still does. */
interface Held {
  file: string;
  active: boolean;
}
/**
 * The locks the current call chain holds (AsyncLocalStorage follows fn's
 * awaits and callbacks, never another caller's): withLock inside withLock of
 * the same lock runs at once (load() called by adopt under the pin root's
 * lock, unload() by teardown), where a second flock would wait for itself. A
 * task fn started and left running finds its lock inactive once fn returns.
 */
const heldHere = new AsyncLocalStorage<Held[]>();

/**
 * The pin root's lock if it is free now, without waiting or queueing (a
 * fail-open switch, src/dp/watch.ts: a few map updates that must not wait
 * their turn behind a queue): the function that releases it, or undefined
 * when someone holds it (the caller then waits with withLock).
 */
export function tryLockSync(pinRoot: string, name = 'lock'): (() => void) | undefined {
  const p = lockDirFile(pinRoot, name);
  const fd = openLockDirFile(pinRoot, name);
  let held = false;
  try {
    held = flock(fd, LOCK_EX | LOCK_NB, p);
  } finally {
    if (!held) fs.closeSync(fd);
  }
  if (!held) return undefined;
  return () => {
    try {
      rcuGraceAfterDeletes();
      flock(fd, LOCK_UN, p);
    } finally {
      fs.closeSync(fd);
    }
  };
}

/**
 * Runs fn while holding the pin root's lock `name` (its file under LOCK_DIR:
 * 'lock' for the pair API's, 'intercept.lock' for intercept's); waits up to
 * timeoutMs for it. Re-entrant within one call chain (heldHere).
 * The lock is fair enough that a caller changing state in a loop (an
 * enforcer's API calls, a batch) cannot starve the others: it takes the free
 * lock at once only when nobody is waiting for it; otherwise it queues up
 * with the waiters, who poll for it every 5-15 ms.
 * If fn deleted map entries, an RCU grace period passes before the lock is
 * released (rcuGraceAfterDeletes in src/bpf/map.ts: no insert after ours reuses an
 * element a program may still be reading).
 */
export async function withLock<T>(pinRoot: string, fn: () => Promise<T> | T, timeoutMs = 30000, name = 'lock'): Promise<T> {
  // Under a directory that does not exist nothing is pinned, and nothing can be (load wants
  // that directory on a bpffs): no lock to take, so a mistyped --bpffs leaves no lock file.
  if (!fs.existsSync(path.dirname(pinRoot))) return fn();
  const p = lockDirFile(pinRoot, name);
  const outer = heldHere.getStore() ?? [];
  if (outer.some((h) => h.file === p && h.active)) return fn();
  // This process's callers first queue up among themselves (first come, first served), so only
  // one of them at a time polls the flock below: the service with a hundred OCI hooks' intercepts
  // waiting polled it ten thousand times a second, on the CPU its intercepts needed.
  const start = Date.now();
  const prev = localQueues.get(p) ?? Promise.resolve();
  let done!: () => void;
  const mine = new Promise<void>((r) => (done = r));
  const tail = prev.then(() => mine);
  localQueues.set(p, tail);
  try {
    await waitLocal(prev, p, start, timeoutMs);
  } catch (e) {
    void prev.then(done); // the callers behind still wait for the one before
    if (localQueues.get(p) === tail) localQueues.delete(p);
    throw e;
  }
  try {
    return await flockAndRun(pinRoot, p, name, outer, fn, timeoutMs - (Date.now() - start));
  } finally {
    done();
    if (localQueues.get(p) === tail) localQueues.delete(p);
  }
}

/** Per lock file, the end of this process's queue for it: each caller waits for the one before. */
const localQueues = new Map<string, Promise<void>>();

/** Waits for prev (the caller before this one in the process's queue), up to the caller's deadline; a signal ends the wait (safePoint). */
async function waitLocal(prev: Promise<void>, p: string, start: number, timeoutMs: number): Promise<void> {
  let settled = false;
  void prev.then(() => (settled = true));
  await Promise.resolve();
  if (settled) return;
  log('lock').info({ lock: p }, 'another caller in this process holds the lock (or waits for it); waiting');
  while (!settled) {
    await Promise.race([prev, new Promise((r) => setTimeout(r, 100))]);
    if (settled) return;
    safePoint(); // interrupted while waiting: nothing was done yet
    if (Date.now() - start > timeoutMs) {
      throw new NeuvError(`another neuv-bpf process holds ${p} for more than ${timeoutMs / 1000} s`, ExitCode.CONFLICT);
    }
  }
}

/** withLock's flock part: the lock file, the .wait queue of other processes, fn, the grace period. */
async function flockAndRun<T>(pinRoot: string, p: string, name: string, outer: Held[], fn: () => Promise<T> | T, timeoutMs: number): Promise<T> {
  // One turn of the event loop before taking it: a change made without waiting for anything
  // (in-process netlink and bpf calls, a lock nobody else holds) resolves at once, so a caller
  // changing state back to back would otherwise run on microtasks alone, and no timer (another
  // caller's poll of the lock below, a deadline) or I/O (a child's exit) of this process would
  // ever run again. Seen in reliability's "tight loop" case once pair add/del went in-process.
  await new Promise((r) => setImmediate(r));
  const wp = `${p}.wait`;
  const fd = openLockDirFile(pinRoot, name);
  let wfd: number | undefined;
  try {
    wfd = openLockDirFile(pinRoot, `${name}.wait`);
    if (othersWaiting(wfd, wp) || !flock(fd, LOCK_EX | LOCK_NB, p)) {
      log('lock').info({ lock: p }, 'another neuv-bpf holds the lock (or waits for it); waiting');
      const start = Date.now();
      // Queue up (a shared lock on the .wait file, refused only during another caller's check), then poll.
      // The first try comes after a pause: a caller that just released the lock and finds others
      // waiting lets one of them in first.
      let queued = false;
      for (;;) {
        await new Promise((r) => setTimeout(r, queued ? 5 + Math.random() * 10 : 1));
        safePoint(); // interrupted while waiting: nothing was done yet
        if (!queued) queued = flock(wfd, LOCK_SH | LOCK_NB, wp);
        if (queued && flock(fd, LOCK_EX | LOCK_NB, p)) break;
        if (Date.now() - start > timeoutMs) {
          throw new NeuvError(`another neuv-bpf process holds ${p} for more than ${timeoutMs / 1000} s`, ExitCode.CONFLICT);
        }
      }
      flock(wfd, LOCK_UN, wp);
    }
    const mine: Held = { file: p, active: true };
    try {
      return await heldHere.run([...outer, mine], fn);
    } finally {
      mine.active = false;
      rcuGraceAfterDeletes(); // still holding the lock
    }
  } finally {
    try {
      flock(fd, LOCK_UN, p);
    } finally {
      fs.closeSync(fd);
      if (wfd !== undefined) fs.closeSync(wfd);
    }
  }
}
