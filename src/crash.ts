/**
 * Test-only crash points: NEUV_BPF_CRASH_AT=<point>[#<n>][,<point>[#<n>]...]
 * makes the process SIGKILL itself the n-th time (default the first) it
 * passes crashPoint('<point>'). The reliability tests use it to stop a
 * command at a known place between two kernel changes, exactly as a power
 * cut or the OOM killer would: no undo runs, no lock is released by us (the
 * kernel drops the flock), nothing is flushed.
 *
 * Points are named '<command>:<where>' (e.g. 'pair-add:after-ids'); the call
 * sites are in src/pairs/datapath.ts, src/loader.ts and src/intercept/. Unset (the
 * normal case) it costs one environment lookup per point.
 */
import * as fs from 'node:fs';

const hits = new Map<string, number>();

/** Parsed NEUV_BPF_CRASH_AT: point -> the hit that kills (1-based). */
export function parseCrashAt(v: string | undefined): Map<string, number> {
  const out = new Map<string, number>();
  for (const part of (v ?? '').split(',')) {
    const s = part.trim();
    if (!s) continue;
    const m = /^([A-Za-z0-9:_.-]+)(?:#([1-9][0-9]*))?$/.exec(s);
    if (m) out.set(m[1]!, m[2] ? Number(m[2]) : 1);
  }
  return out;
}

/** SIGKILLs this process here if NEUV_BPF_CRASH_AT names this point (and this is the hit it names). */
export function crashPoint(point: string): void {
  const want = process.env.NEUV_BPF_CRASH_AT;
  if (!want) return;
  const n = parseCrashAt(want).get(point);
  if (n === undefined) return;
  const hit = (hits.get(point) ?? 0) + 1;
  hits.set(point, hit);
  if (hit !== n) return;
  // Synchronous, so the line is out before the signal; tests check it to know the point was reached.
  try {
    fs.writeSync(2, `neuv-bpf: crash point ${point}${n > 1 ? `#${n}` : ''} reached (NEUV_BPF_CRASH_AT): SIGKILL\n`);
  } catch {
    /* stderr closed: die anyway */
  }
  process.kill(process.pid, 'SIGKILL');
}
