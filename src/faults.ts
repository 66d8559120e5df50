/**
 * Test-only fault injection, one module and one variable:
 *
 *   NEUV_BPF_FAULT=<action>@<point>[#<n>][,<action>@<point>[#<n>]...]
 *
 * makes the process act the n-th time (default the first) it passes
 * faultPoint('<point>'). Actions:
 *
 *   crash  SIGKILL itself, after one line on stderr: a command stopped between
 *          two kernel changes exactly as a power cut or the OOM killer would
 *          (no undo runs, no lock released by us: the kernel drops the flock,
 *          nothing flushed). The reliability, journal and intercept suites.
 *   fail   throw "injected failure at <point>": the command's own error path
 *          (its undos run, one error line, exit 1). The rollback tests.
 *
 * Points are named '<command>:<where>' (pair-add:after-ids,
 * intercept:before-mark, adopt:seed; the list is in docs/reliability.md);
 * a point passed per item takes the item as `detail`, and the variable may
 * name '<point>:<detail>' for that item only (fail@adopt:seed:vin2). Unset
 * (the normal case) a point costs one environment lookup.
 */
import * as fs from 'node:fs';
import { ExitCode, NeuvError } from './errors';

export const FAULT_ENV = 'NEUV_BPF_FAULT';
export const FAULT_ACTIONS = ['crash', 'fail'] as const;
export type FaultAction = (typeof FAULT_ACTIONS)[number];

/** One entry of NEUV_BPF_FAULT. */
export interface Fault {
  action: FaultAction;
  point: string;
  /** The hit that acts (1-based). */
  hit: number;
}

/** Parsed NEUV_BPF_FAULT; malformed entries are ignored (a test variable, never user input). */
export function parseFaults(v: string | undefined): Fault[] {
  const out: Fault[] = [];
  for (const part of (v ?? '').split(',')) {
    const m = /^(crash|fail)@([A-Za-z0-9:_.-]+)(?:#([1-9][0-9]*))?$/.exec(part.trim());
    if (m) out.push({ action: m[1] as FaultAction, point: m[2]!, hit: m[3] ? Number(m[3]) : 1 });
  }
  return out;
}

/** Thrown by a `fail` fault. */
export class InjectedFailure extends NeuvError {
  constructor(readonly point: string) {
    super(`injected failure at ${point} (${FAULT_ENV})`, ExitCode.FAILURE);
  }
}

const hits = new Map<string, number>();

/**
 * Crashes or fails here if NEUV_BPF_FAULT names this point (or
 * '<point>:<detail>') and this is the hit it names.
 */
export function faultPoint(point: string, detail?: string): void {
  const want = process.env[FAULT_ENV];
  if (!want) return;
  for (const name of detail === undefined ? [point] : [point, `${point}:${detail}`]) {
    const f = parseFaults(want).find((x) => x.point === name);
    if (!f) continue;
    const hit = (hits.get(name) ?? 0) + 1;
    hits.set(name, hit);
    if (hit !== f.hit) continue;
    if (f.action === 'fail') throw new InjectedFailure(name);
    // Synchronous, so the line is out before the signal; tests check it to know the point was reached.
    try {
      fs.writeSync(2, `neuv-bpf: crash point ${name}${f.hit > 1 ? `#${f.hit}` : ''} reached (${FAULT_ENV}): SIGKILL\n`);
    } catch {
      /* stderr closed: die anyway */
    }
    process.kill(process.pid, 'SIGKILL');
  }
}
