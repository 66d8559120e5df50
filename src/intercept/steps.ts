/**
 * What intercept and release share: their step names (fault points,
 * journal steps), running one step, the checks before the first,
 * and the glue to the journal (src/intercept/journal.ts) and the intercept lock.
 */
import * as fs from 'node:fs';
import { ConflictError, ExitCode, NeuvError } from '../errors';
import { InjectedFailure, faultPoint } from '../faults';
import { JournalRecord, findRecord, recoverLocked } from './journal';
import { recoverLostTarget } from './salvage';
import { log } from '../log';
import { Datapath } from '../pairs';
import { checkHome } from '../home';
import { NetnsScope } from '../netns';
import { safePoint } from '../signals';
import { NsRunner } from './runner';
import { ResolvedTarget } from './target';

/** The steps of intercept, in order (fault points intercept:before-<step>, src/faults.ts). */
export const INTERCEPT_STEPS = [
  'mark', 'down', 'flush', 'rename', 'tmpmac', 'move-vex', 'create', 'move-vin', 'enforcer-up', 'pair',
  'offload', 'addresses', 'up', 'routes', 'commit',
] as const;
/** The steps of release, in order (fault points release:before-<step>). */
export const RELEASE_STEPS = [
  'unpair', 'down', 'flush', 'rename', 'park', 'move-vex', 'rename-vex', 'mac', 'addresses', 'up', 'routes', 'delete',
] as const;

/** Runs one step with a fault point before it and the step's name in any error. */
export async function step<T>(op: 'intercept' | 'release', name: string, what: string, fn: () => Promise<T>): Promise<T> {
  safePoint(); // a SIGINT/SIGTERM/SIGHUP held since the last step: roll back from here (src/signals.ts)
  faultPoint(`${op}:before-${name}`);
  log(op).debug({ step: name }, what);
  try {
    return await fn();
  } catch (e) {
    if (e instanceof InjectedFailure) throw e;
    const msg = (e as Error).message;
    const code = /File exists|already exists/.test(msg) ? ExitCode.CONFLICT : e instanceof NeuvError ? e.code : ExitCode.FAILURE;
    throw new NeuvError(`${what}: ${msg}`, code, { cause: e });
  }
}

export async function mustBeAbsent(ns: NsRunner, name: string): Promise<void> {
  if (await ns.link(name)) throw new ConflictError(`${name} already exists in ${ns.desc}`);
}

export async function sameNetns(a: NsRunner, b: NsRunner): Promise<boolean> {
  const ia = fs.statSync(a.ref());
  const ib = fs.statSync(b.ref());
  return ia.ino === ib.ino && ia.dev === ib.dev;
}

/** Refuses unless the pin root's datapath lives in the enforcer netns (src/home.ts), before any step. */
export function checkEnforcer(pinRoot: string, enforcer: string | undefined): void {
  const ns = new NetnsScope(enforcer);
  try {
    ns.run(() => checkHome(pinRoot));
  } finally {
    ns.close();
  }
}

/** Opens the datapath in the enforcer netns (the pair API runs its kernel calls there). */
export function openDatapath(pinRoot: string, enforcer: string | undefined): Datapath {
  return Datapath.open(pinRoot, enforcer ? { netns: enforcer } : {});
}

/**
 * How long intercept and release wait for the intercept lock: each holds it
 * for a second or two, so a host starting many containers at once queues
 * them up (ten concurrent intercepts in the container suite).
 */
export const INTERCEPT_LOCK_WAIT_MS = 120000;

/** The container and enforcer of a journal record. */
export function recordIds(t: ResolvedTarget, enf: NsRunner): Pick<JournalRecord, 'target' | 'enforcer'> {
  const e = fs.statSync(enf.ref());
  return {
    target: { desc: t.desc, pid: t.pid ?? null, path: t.path, ino: t.ino, dev: fs.statSync(t.path).dev },
    enforcer: { path: enf.path ?? null, ino: e.ino, dev: e.dev },
  };
}

/**
 * Recovers what a killed intercept or release of this container port left
 * (src/intercept/journal.ts). Returns what was done, or undefined when the port is not
 * in the journal or is intercepted and well: then `intercepted` is the
 * interception's record (a killed intercept's at its commit point included,
 * with what recovery said of it).
 */
export async function recoverTarget(
  pinRoot: string, t: ResolvedTarget, port: string, enforcer: string | undefined,
): Promise<{ line: string; rec: JournalRecord; intercepted?: undefined } | { intercepted: JournalRecord; completed?: string } | undefined> {
  let rec = findRecord(pinRoot, t.ino, port);
  if (!rec) {
    // No readable record: the kernel's marker may say a lost one was half done (salvage.ts).
    const lost = await recoverLostTarget(pinRoot, t.path, t.ino, port, enforcer);
    // No marker either (an unreadable record of an intercept killed before it changed anything): removed, go on.
    if (!lost?.rec) return undefined;
    if (!lost.kept) return { line: lost.line, rec: lost.rec };
    rec = findRecord(pinRoot, t.ino, port);
    if (!rec) return undefined;
  }
  const r = await recoverLocked(rec, { pinRoot, enforcer });
  if (!r.intercepted) return { line: r.line, rec };
  return { intercepted: { ...rec, step: 'intercepted' }, ...(rec.step === 'commit' ? { completed: r.line } : {}) };
}
