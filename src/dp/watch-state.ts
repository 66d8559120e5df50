/**
 * The watch state file (docs/neuvector-dp.md, "When the DP dies"): the pairs
 * a fail-open watcher (./watch.ts) put in BYPASS, per pin root, beside its
 * lock and journal under /run/neuv-bpf. It outlives the watcher: the next one
 * puts the pairs back in FWD, and `show` marks them as held.
 */
import * as fs from 'node:fs';
import { lockDirFile, readLockDirFile, writeLockDirFile } from '../lock';
import { log } from '../log';

/** Where the pairs a watcher put in BYPASS are kept, per pin root (beside its lock and journal). */
export function watchStatePath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'watch.json');
}

/** A pair a watcher put in BYPASS: its id, its workload MAC, and since when (ISO time). */
export interface BypassedPair {
  id: number;
  mac: string;
  since?: string;
}

const STATE_VERSION = 1;

/** The pairs in the state file; none when there is none, or (logged) when it cannot be read. */
export function readWatchState(pinRoot: string): BypassedPair[] {
  const p = watchStatePath(pinRoot);
  let text: string | undefined;
  try {
    text = readLockDirFile(pinRoot, 'watch.json'); // a symlink there is refused, not followed
  } catch (e) {
    // A directory in its place holds no state and must not stop the watcher from failing open (it logs once
    // when it cannot write it); anything else refused (a symlink, a lock directory not ours) stays refused.
    if (!fs.lstatSync(p, { throwIfNoEntry: false })?.isDirectory()) throw e;
    log('watch').warn({ path: p }, `ignoring the watch state file ${p}: it is a directory`);
    return [];
  }
  if (text === undefined) return [];
  try {
    const j = JSON.parse(text) as { version?: number; bypassed?: unknown };
    if (j.version !== STATE_VERSION || !Array.isArray(j.bypassed)) throw new Error(`not a version ${STATE_VERSION} state`);
    return j.bypassed.filter(
      (b): b is BypassedPair => typeof b === 'object' && b !== null && Number.isInteger((b as BypassedPair).id) && typeof (b as BypassedPair).mac === 'string',
    ).map((b) => (typeof b.since === 'string' ? { id: b.id, mac: b.mac, since: b.since } : { id: b.id, mac: b.mac }));
  } catch (e) {
    log('watch').warn({ path: p }, `ignoring the watch state file ${p}: ${(e as Error).message}`);
    return [];
  }
}

/** Rewrites the state file atomically (writeOwnFileAtomic: a new temporary renamed over it); removes it when no pair is left. */
export function writeWatchState(pinRoot: string, pairs: BypassedPair[]): void {
  const p = watchStatePath(pinRoot);
  if (pairs.length === 0) {
    fs.rmSync(p, { force: true });
    return;
  }
  writeLockDirFile(pinRoot, 'watch.json', JSON.stringify({ version: STATE_VERSION, bypassed: pairs }) + '\n');
}

/** Pairs held in BYPASS by a watcher, as `show` marks them: id -> since (ISO), for pairs still in BYPASS with that MAC. */
export function heldByWatch(pinRoot: string, pairs: ReadonlyArray<{ id: number; mac?: string | null; mode?: string | null }>): Map<number, string> {
  const held = new Map<number, string>();
  const now = new Map(pairs.map((p) => [p.id, p]));
  for (const b of readWatchState(pinRoot)) {
    const p = now.get(b.id);
    if (p && p.mode === 'bypass' && p.mac === b.mac) held.set(b.id, b.since ?? 'unknown');
  }
  return held;
}
