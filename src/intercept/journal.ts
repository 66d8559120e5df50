/**
 * The intercept journal: what makes `intercept` and `release` crash-safe.
 *
 * Before each step that changes the kernel, intercept and release write one
 * small JSON record per container port (atomically: a temporary file renamed
 * over the old one) under
 *
 *   /run/neuv-bpf/<pinRootStem>.journal/<container netns inode>-<port>.json
 *
 * (bpffs refuses regular files, so like the lock it lives under /run, which
 * is tmpfs: it goes with a reboot, as do the namespaces it names). A record
 * holds the container (netns path and inode), the enforcer netns (inode), the
 * names vex/vin, the step about to run, and the port snapshot the operation
 * restores: the container's port as it was before intercept, or the
 * intercepting port as it is when release starts. A completed intercept
 * leaves its record in place with step `intercepted` (the interception's
 * record, used to clean up after a container that went away); a completed
 * release removes it.
 *
 * recover() brings a record to rest, whatever the step (it reads the kernel,
 * not the step, so it is idempotent and survives its own kill):
 *  - a half-done intercept is rolled back: its pair deleted, the new veth
 *    deleted (with its peer vin), the original port moved back under its
 *    ifindex and name, its MAC, MTU, addresses, routes and neighbours
 *    restored; an intercept killed at its commit point was complete and is
 *    kept;
 *  - a half-done release is finished (release was asked for; its first step
 *    already deleted the pair);
 *  - an interception whose container is gone (stopped, restarted into a new
 *    netns): its pair and the original port left in the enforcer netns (vex,
 *    whose peer is still on the runtime's bridge) are deleted.
 * `repair` recovers every record of its pin root; `intercept` and `release`
 * recover the record of their container first. Both under the intercept lock.
 * A record that cannot be read, or is gone, is src/intercept/salvage.ts's:
 * it recovers from the marker intercept's first step leaves in the kernel.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NeuvError, ExitCode } from '../errors';
import { lockDirDir, lockDirFile, withLock } from '../lock';
import { readOwnFile, writeOwnFileAtomic } from '../safefs';
import { log } from '../log';
import { enforcerRunner, NsRunner } from './runner';
import { PortSnapshot, restorePort, restoreRoutesAndNeighbours, snapshotPort } from './snapshot';
import { ifindexIfExists } from '../link';
import { isLoaded } from '../pins';
import { netnsPathOf } from '../netns';
import { Datapath } from '../pairs';

export const JOURNAL_VERSION = 1;

export interface NsId {
  ino: number;
  dev: number;
}

export interface JournalRecord {
  version: number;
  op: 'intercept' | 'release';
  /** The step about to run (written before it), or 'intercepted' once an intercept completed. */
  step: string;
  target: NsId & { desc: string; pid: number | null; path: string };
  /** The enforcer netns: its path when one was named, and its inode. */
  enforcer: NsId & { path: string | null };
  port: string;
  vex: string;
  vin: string;
  /** release only: the intercepting port's name while it is parked. */
  tmpName?: string;
  /** What the container's port must look like at the end. */
  snap: PortSnapshot;
  /** intercept only: the pair it adds. */
  pair?: { mode?: string; id?: number; ipv6ToDp?: boolean };
  time: string;
}

export function journalDir(pinRoot: string): string {
  return lockDirFile(pinRoot, 'journal');
}

function recordPath(pinRoot: string, ino: number, port: string): string {
  return path.join(journalDir(pinRoot), `${ino}-${port}.json`);
}

/** Writes (replaces) a record atomically: a kill leaves the old one or the new one. */
export function writeRecord(pinRoot: string, r: JournalRecord): void {
  lockDirDir(pinRoot, 'journal', true);
  const p = recordPath(pinRoot, r.target.ino, r.port);
  writeOwnFileAtomic(p, `${p}.tmp${process.pid}`, JSON.stringify({ ...r, time: new Date().toISOString() }) + '\n', 'journal record');
}

export function removeRecord(pinRoot: string, r: Pick<JournalRecord, 'target' | 'port'>): void {
  fs.rmSync(recordPath(pinRoot, r.target.ino, r.port), { force: true });
  try {
    fs.rmdirSync(journalDir(pinRoot)); // the last record: no directory left behind
  } catch {
    /* not empty, or gone */
  }
}

function parseRecord(file: string): JournalRecord | undefined {
  const text = readOwnFile(file, 'journal record'); // a symlink there is refused, not followed
  if (text === undefined) return undefined;
  try {
    const r = JSON.parse(text) as JournalRecord;
    if (r.version !== JOURNAL_VERSION || (r.op !== 'intercept' && r.op !== 'release') || !r.snap || !r.target || !r.enforcer) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/** The record of one container port, if any. */
export function findRecord(pinRoot: string, ino: number, port: string): JournalRecord | undefined {
  if (!lockDirDir(pinRoot, 'journal', false)) return undefined;
  return parseRecord(recordPath(pinRoot, ino, port));
}

/** Every record of a pin root (unreadable ones, and temporaries of a killed write, are skipped). */
export function listRecords(pinRoot: string): JournalRecord[] {
  const dir = lockDirDir(pinRoot, 'journal', false);
  if (!dir) return [];
  const out: JournalRecord[] = [];
  for (const f of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, f);
    if (/\.json\.tmp\d+$/.test(f)) continue;
    if (!f.endsWith('.json')) continue;
    const r = parseRecord(p);
    if (r) out.push(r);
    else log('journal').warn({ file: p }, 'unreadable journal record: ignored');
  }
  return out;
}

/** A half-done operation (not a completed interception's record). */
export function halfDone(r: JournalRecord): boolean {
  return !(r.op === 'intercept' && r.step === 'intercepted');
}

function describe(r: JournalRecord): string {
  return `${r.port} of ${r.target.desc}`;
}

// ================================================================ finding namespaces

function statId(p: string): NsId | undefined {
  try {
    const st = fs.statSync(p);
    return { ino: st.ino, dev: st.dev };
  } catch {
    return undefined;
  }
}

const same = (a: NsId | undefined, b: NsId) => a !== undefined && a.ino === b.ino && a.dev === b.dev;

/**
 * A path to the network namespace with this inode, if it still exists: the
 * recorded path, a name under /var/run/netns (podman and ip netns mount
 * theirs there), or any process in it.
 */
export function findNetns(id: NsId & { path: string }): string | undefined {
  if (same(statId(id.path), id)) return id.path;
  return netnsPathOf(id.ino, id.dev);
}

// ================================================================ recovery

export interface RecoverOptions {
  pinRoot: string;
  /** The enforcer netns (name or path); default the current one. */
  enforcer?: string;
}

/** What recover() did, in one line, and whether the record now names a live interception. */
export interface Recovered {
  line: string;
  intercepted: boolean;
}

/** Deletes the pair of vin/vex, if the datapath is loaded and has one. */
export async function delPairOf(r: JournalRecord, o: RecoverOptions): Promise<number | null> {
  if (!isLoaded(o.pinRoot)) return null;
  const dp = Datapath.open(o.pinRoot, o.enforcer ? { netns: o.enforcer } : {});
  try {
    const shown = await dp.show();
    const p = shown.pairs.find((x) => x.vin?.name === r.vin || x.vex?.name === r.vex);
    if (!p) return null;
    await dp.delPair({ id: p.id });
    return p.id;
  } finally {
    dp.close();
  }
}

async function delLink(ns: NsRunner | undefined, name: string): Promise<boolean> {
  if (!ns || !(await ns.link(name))) return false;
  await ns.del(name);
  return true;
}

/**
 * Gives the container's port the snapshot's link settings and, when they
 * differ, its addresses, state, routes and neighbours (routes and neighbours
 * are replaced either way: that is idempotent).
 */
async function configure(ctr: NsRunner, snap: PortSnapshot, port: string): Promise<void> {
  const l = await ctr.link(port);
  if (!l) throw new NeuvError(`${port} not found in ${ctr.desc} after moving the original port back`);
  const set: { mac?: string; mtu?: number; txqlen?: number } = {};
  if ((l.address ?? '').toLowerCase() !== snap.mac) set.mac = snap.mac;
  if (l.mtu !== snap.mtu) set.mtu = snap.mtu;
  if (snap.txqlen && l.txqlen !== snap.txqlen) set.txqlen = snap.txqlen;
  if (Object.keys(set).length) await ctr.set(port, set);
  if (snap.addrGenMode && l.inet6_addr_gen_mode !== snap.addrGenMode) await ctr.set(port, { addrGenMode: snap.addrGenMode });
  // Its own alias (none, usually): that also removes intercept's marker (src/intercept/marker.ts).
  if ((l.ifalias ?? '') !== (snap.alias ?? '')) await ctr.set(port, { alias: snap.alias ?? '' });
  const cur = await snapshotPort(ctr, port);
  const key = (s: PortSnapshot) => s.addrs.map((a) => `${a.local}/${a.prefixlen}`).sort().join(' ');
  if (cur.up === snap.up && key(cur) === key(snap)) {
    await restoreRoutesAndNeighbours(ctr, snap, port);
  } else {
    if (!snap.up && cur.up) await ctr.set(port, { up: false });
    await restorePort(ctr, snap, port);
  }
}

/**
 * Puts the original port (vex, in the enforcer netns or still in the
 * container) back into the container as `port`, then configures it.
 */
async function originalBack(r: JournalRecord, ctr: NsRunner, enf: NsRunner): Promise<void> {
  if (await enf.link(r.vex)) await enf.moveTo(r.vex, ctr, r.snap.ifindex);
  if (await ctr.link(r.vex)) await ctr.set(r.vex, { name: r.port });
  await configure(ctr, r.snap, r.port);
}

/** Whether the container's port is the intercepting veth whose peer is vin in the enforcer netns. */
export async function interceptedNow(r: JournalRecord, ctr: NsRunner | undefined, enf: NsRunner): Promise<boolean> {
  if (!ctr) return false;
  const [vin, vex, cp] = [await enf.link(r.vin), await enf.link(r.vex), await ctr.link(r.port)];
  return !!(vin && vex && cp && cp.linkinfo?.info_kind === 'veth' && cp.link_index === vin.ifindex && vin.link_index === cp.ifindex);
}

/**
 * Brings one record to rest (see the file comment). The caller holds the
 * intercept lock. Throws when it cannot (the record stays for another try).
 */
export async function recoverLocked(r: JournalRecord, o: RecoverOptions): Promise<Recovered> {
  const lg = log('journal');
  const enf = enforcerRunner(o.enforcer);
  if (!same(statId(enf.ref()), r.enforcer)) {
    throw new NeuvError(
      `the journal of ${describe(r)} belongs to another enforcer netns (inode ${r.enforcer.ino}${r.enforcer.path ? `, ${r.enforcer.path}` : ''}): run neuv-bpf --netns <that netns> repair`,
      ExitCode.FAILURE,
    );
  }
  const ctrPath = findNetns(r.target);
  const ctr = ctrPath ? new NsRunner(ctrPath, `the container netns (${r.target.desc})`) : undefined;
  const what = describe(r);
  let line: string;
  let intercepted = false;

  if (r.op === 'intercept' && (r.step === 'intercepted' || r.step === 'commit')) {
    if (await interceptedNow(r, ctr, enf)) {
      if (r.step === 'commit') writeRecord(o.pinRoot, { ...r, step: 'intercepted' });
      return { line: `${what} is intercepted (${r.vex}/${r.vin})${r.step === 'commit' ? ': the killed intercept had completed' : ''}`, intercepted: true };
    }
    const cp = ctr ? await ctr.link(r.port) : undefined;
    const vinL = await enf.link(r.vin);
    if (ctr && !cp && (await enf.link(r.vex))) {
      // The intercepting veth went (deleted by hand?) but the container lives: give it its port back.
      const id = await delPairOf(r, o);
      await delLink(enf, r.vin);
      await originalBack(r, ctr, enf);
      line = `${what}: its intercepting ${r.port} is gone; the original port is back${id !== null ? `, pair id ${id} deleted` : ''}`;
    } else if (ctr && cp && vinL && cp.link_index === vinL.ifindex) {
      throw new NeuvError(`${what} is intercepted but its original port ${r.vex} is gone from ${enf.desc}: it cannot be given back (delete ${r.vin} by hand to free the name)`);
    } else {
      // The container is gone, or its netns is a new one (restarted): the interception is dead.
      const id = await delPairOf(r, o);
      const gone = [(await delLink(enf, r.vin)) ? r.vin : '', (await delLink(enf, r.vex)) ? r.vex : ''].filter(Boolean);
      line = `${what}: the container ${ctr ? 'has a new network namespace' : 'is gone'}; removed ${[id !== null ? `pair id ${id}` : '', ...gone].filter(Boolean).join(', ') || 'nothing (already gone)'}`;
    }
  } else if (r.op === 'intercept') {
    // Killed half way: roll back, whatever the step.
    const id = await delPairOf(r, o);
    if (!(await delLink(enf, r.vin))) await delLink(ctr, r.vin);
    if (ctr) {
      await originalBack(r, ctr, enf);
      line = `rolled back the intercept of ${what} killed before its step '${r.step}': ${r.port} is as it was${id !== null ? `, pair id ${id} deleted` : ''}`;
    } else {
      await delLink(enf, r.vex);
      line = `the intercept of ${what} killed before its step '${r.step}' is cleaned up (the container is gone)`;
    }
  } else {
    // A release killed half way: finish it.
    const id = await delPairOf(r, o);
    await delLink(enf, r.vin); // the intercepting veth goes with it, wherever it is
    if (r.tmpName) {
      await delLink(enf, r.tmpName);
      await delLink(ctr, r.tmpName);
    }
    if (ctr) {
      await originalBack(r, ctr, enf);
      line = `finished the release of ${what} killed before its step '${r.step}': ${r.vex} is ${r.port} again${id !== null ? `, pair id ${id} deleted` : ''}`;
    } else {
      await delLink(enf, r.vex);
      line = `the release of ${what} killed before its step '${r.step}' is cleaned up (the container is gone)`;
    }
  }
  removeRecord(o.pinRoot, r);
  lg.info({ op: r.op, step: r.step, target: r.target.desc, port: r.port }, line);
  return { line, intercepted };
}

/** The lock intercept, release and recovery hold (withLock's name): per pin root, separate from the pair API's. */
export const INTERCEPT_LOCK = 'intercept.lock';

export interface JournalRepair {
  actions: string[];
  left: string[];
}

/**
 * Recovers every record of a pin root that needs it (repair): half-done
 * operations, and interceptions whose container is gone. With dryRun only
 * says what it would do.
 */
export async function recoverAll(o: RecoverOptions & { dryRun?: boolean }): Promise<JournalRepair> {
  const out: JournalRepair = { actions: [], left: [] };
  const dir = lockDirDir(o.pinRoot, 'journal', false); // refused when not ours (a symlink, say)
  if (!dir) return out;
  await withLock(o.pinRoot, async () => {
    // Temporaries of a write that was killed (no writer runs: we hold the lock).
    if (!o.dryRun) {
      for (const f of fs.readdirSync(dir)) {
        if (/\.json\.tmp\d+$/.test(f)) fs.rmSync(path.join(dir, f), { force: true });
      }
    }
    for (const r of listRecords(o.pinRoot)) {
      const problem = recordProblem(r);
      if (!problem) continue;
      if (o.dryRun) {
        out.actions.push(problem);
        continue;
      }
      try {
        out.actions.push((await recoverLocked(r, o)).line);
      } catch (e) {
        out.left.push(`${problem}: ${(e as Error).message}`);
      }
    }
  }, undefined, INTERCEPT_LOCK);
  return out;
}

/**
 * What is wrong with a record, checked from the current netns (the
 * enforcer's) without changing anything; undefined when it names a live
 * interception. For show --check.
 */
export function recordProblem(r: JournalRecord): string | undefined {
  const what = describe(r);
  if (r.op === 'intercept' && r.step === 'commit') return `the intercept of ${what} was killed at its commit point, every step done: neuv-bpf repair checks it and keeps it`;
  if (halfDone(r)) return `a half-done ${r.op} of ${what} (killed before its step '${r.step}'): neuv-bpf repair ${r.op === 'intercept' ? 'rolls it back' : 'finishes it'}`;
  if (!same(statId('/proc/self/ns/net'), r.enforcer)) return undefined; // another enforcer's: not checkable from here
  if (!ifindexIfExists(r.vin)) {
    return `intercepted ${what}: ${r.vin} is gone (${findNetns(r.target) ? 'the intercepting port was deleted' : 'the container is gone'}); ${r.vex} is left: neuv-bpf repair removes it${findNetns(r.target) ? ' (gives it back to the container)' : ''}`;
  }
  return undefined;
}

/**
 * Removes what is left of every interception whose container is gone (its
 * record's vin is gone from this netns: the container's netns went, and the
 * intercepting veth with it), as repair would. intercept runs it, under the
 * intercept lock, before it moves anything into the enforcer netns: the
 * kernel reuses a vanished vin's ifindex for the next device moved in, which
 * the dead pair still holds, so that intercept's pair add would be refused
 * (a container stopped while intercepted whose release has not run yet:
 * podman deletes the netns before the OCI hook's poststop). Returns what it
 * did, one line each; a record it cannot recover is left (logged).
 */
export async function recoverDead(o: RecoverOptions): Promise<string[]> {
  const out: string[] = [];
  for (const r of listRecords(o.pinRoot)) {
    if (halfDone(r) || recordProblem(r) === undefined) continue;
    try {
      out.push((await recoverLocked(r, o)).line);
    } catch (e) {
      log('journal').warn({ target: r.target.desc, port: r.port, err: (e as Error).message }, 'could not remove a dead interception');
    }
  }
  return out;
}

/** Problems of every record of a pin root (show --check). */
export function journalProblems(pinRoot: string): string[] {
  return listRecords(pinRoot).map(recordProblem).filter((x): x is string => x !== undefined);
}
