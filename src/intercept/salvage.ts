/**
 * Half-done intercepts whose journal record is lost: truncated, garbage or
 * deleted. The journal (src/intercept/journal.ts) cannot bring those to rest, and
 * without this they are invisible: the container's port is down with no
 * address, or stuck in the enforcer netns, and intercept and release refuse.
 *
 * What is left is the kernel's own record, intercept's first step: the
 * marker in the original port's alias (marker.ts). It names the container
 * netns, the port, the vex/vin tag, and holds the port's MAC, addresses and
 * default gateways. From it (and the names vex<tag>-<port>, vin<tag>-<port>):
 *  - an interception that is complete (the container's port is a veth whose
 *    peer is vin, vex is in the enforcer netns, the pair exists, the port is
 *    up with the marker's addresses) gets its record written again;
 *  - anything else is rolled back as the journal would (recoverLocked):
 *    the pair and vin deleted, the original port moved back under its
 *    ifindex and name, given its MAC, addresses and default routes, and its
 *    alias cleared (which removes the marker);
 *  - a record that cannot be read and has no marker anywhere (killed before
 *    the marker was written: nothing changed) is removed.
 *
 * Where the marker is looked for: the enforcer netns (the original port is
 * there from intercept's step move-vex on), then every other netns of the
 * host (named ones and those of processes) through one in-process link dump
 * each (src/bpf/rtnl.ts: a few system calls, no process), and with `ip` only
 * in those where a marker of ours is: cheap, so `show --check` does it too,
 * and finds a record deleted while the original port is still in the
 * container (killed before move-vex). `intercept` and `release` look in the
 * one netns they are given.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { linkAliases } from '../bpf';
import { allNetnsPaths, inNetnsAt } from '../netns';
import { NeuvError } from '../errors';
import { findNetns, findRecord, interceptedNow, INTERCEPT_LOCK, JournalRecord, recoverLocked, writeRecord } from './journal';
import { lockDirDir, withLock } from '../lock';
import { log } from '../log';
import { isLoaded } from '../pins';
import { Datapath } from '../pairs';
import { decodeMarker, Marker, markerKey, markerSnapshot } from './marker';
import { enforcerRunner, LinkDetail, NsRunner } from './runner';

/** A half-done intercept (or a whole one) with no readable record. */
export interface Lost {
  /** "eth0 of netns /var/run/netns/x". */
  what: string;
  /** The record file that cannot be read, or undefined when there is none. */
  file?: string;
  /** The marker and where it is (undefined: none found). */
  marker?: { m: Marker; ns: NsRunner; dev: LinkDetail };
  ino: number;
  port: string;
}

function nsfsId(p: string): { ino: number; dev: number } | undefined {
  try {
    const st = fs.statSync(p);
    return { ino: st.ino, dev: st.dev };
  } catch {
    return undefined;
  }
}

/** Record files that exist but cannot be read (a temporary of a killed write is not one). */
function unreadable(pinRoot: string): Array<{ file: string; ino: number; port: string }> {
  const dir = lockDirDir(pinRoot, 'journal', false); // refused when not ours (a symlink, say)
  if (!dir) return [];
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return [];
  }
  const out: Array<{ file: string; ino: number; port: string }> = [];
  for (const f of names.sort()) {
    const m = /^(\d+)-(.+)\.json$/.exec(f);
    if (m && !findRecord(pinRoot, Number(m[1]), m[2]!)) out.push({ file: path.join(dir, f), ino: Number(m[1]), port: m[2]! });
  }
  return out;
}

/** Our markers in one netns (its links whose alias is a marker with this key). */
async function markersIn(ns: NsRunner, key: string): Promise<Array<{ m: Marker; ns: NsRunner; dev: LinkDetail }>> {
  let links: LinkDetail[];
  try {
    links = await ns.links();
  } catch {
    return []; // the netns went away meanwhile
  }
  return links.flatMap((dev) => {
    const m = decodeMarker(dev.ifalias, key);
    return m ? [{ m, ns, dev }] : [];
  });
}

/**
 * The netns of this host, the enforcer's aside, where a link's alias is a
 * marker with this key: one in-process RTM_GETLINK dump each.
 */
function netnsWithMarkers(except: { ino: number }, key: string): string[] {
  return allNetnsPaths().filter((p) => nsfsId(p)?.ino !== except.ino && inNetnsAt(p, () => linkAliases().some((l) => decodeMarker(l.alias, key)))?.value);
}

/**
 * The lost intercepts of a pin root, seen from the enforcer netns. `scan`:
 * which other netns to look into ('all': every one that holds a marker of
 * ours; or the paths given).
 */
export async function findLost(pinRoot: string, enforcer: string | undefined, scan: 'all' | string[]): Promise<Lost[]> {
  const enf = enforcerRunner(enforcer);
  const enfId = nsfsId(enf.ref());
  if (!enfId) return [];
  const key = markerKey(pinRoot, enfId.ino);
  const bad = unreadable(pinRoot);
  const paths = new Set(scan === 'all' ? netnsWithMarkers(enfId, key) : scan);
  const marks = [...(await markersIn(enf, key))];
  for (const p of paths) marks.push(...(await markersIn(new NsRunner(p, `netns ${p}`), key)));
  const out: Lost[] = [];
  for (const mk of marks) {
    if (findRecord(pinRoot, mk.m.ctrIno, mk.m.port)) continue; // the journal has it
    if (out.some((l) => l.ino === mk.m.ctrIno && l.port === mk.m.port)) continue;
    const file = bad.find((b) => b.ino === mk.m.ctrIno && b.port === mk.m.port)?.file;
    out.push({ what: describeLost(mk.m.ctrIno, mk.m.port, enfId.dev), file, marker: mk, ino: mk.m.ctrIno, port: mk.m.port });
  }
  for (const b of bad) {
    if (!out.some((l) => l.file === b.file)) out.push({ what: describeLost(b.ino, b.port, enfId.dev), file: b.file, ino: b.ino, port: b.port });
  }
  return out;
}

function describeLost(ino: number, port: string, dev: number): string {
  const p = findNetns({ ino, dev, path: '' });
  return `${port} of ${p ? `netns ${p}` : `netns inode ${ino} (gone)`}`;
}

function why(l: Lost): string {
  return l.file ? `its journal record ${path.basename(l.file)} cannot be read` : 'its journal record is missing';
}

/** One show --check line per lost intercept. */
export function lostProblem(l: Lost): string {
  if (!l.marker) return `an intercept of ${l.what}: ${why(l)}, and nothing of that intercept is in the kernel: neuv-bpf repair removes the record`;
  return `an intercept of ${l.what}: ${why(l)}; the kernel's marker on ${l.marker.dev.ifname} (${l.marker.ns.desc}) is enough: neuv-bpf repair recovers it`;
}

/** show --check: lost intercepts, wherever their marker is. */
export async function lostProblems(pinRoot: string): Promise<string[]> {
  return (await findLost(pinRoot, undefined, 'all')).map(lostProblem);
}

/** Whether the interception of rec is whole: the pair exists, the port is up as it was with the marker's addresses. */
async function complete(pinRoot: string, rec: JournalRecord, ctr: NsRunner, enforcer: string | undefined): Promise<boolean> {
  if (!isLoaded(pinRoot)) return false;
  const dp = Datapath.open(pinRoot, enforcer ? { netns: enforcer } : {});
  try {
    if (!(await dp.show()).pairs.some((p) => p.vin?.name === rec.vin && p.vex?.name === rec.vex)) return false;
  } finally {
    dp.close();
  }
  const l = await ctr.link(rec.port);
  const have = new Set((l ? await ctr.addrs(rec.port) : []).map((x) => `${x.local}/${x.prefixlen}`));
  if (!l || (l.flags ?? []).includes('UP') !== rec.snap.up || !rec.snap.addrs.every((x) => have.has(`${x.local}/${x.prefixlen}`))) return false;
  // The routes are intercept's last step.
  for (const r of rec.snap.routes) {
    const defaults = await ctr.ipJson<Array<{ gateway?: string }>>(`-${r.family}`, 'route', 'show', 'default');
    if (!defaults.some((d) => d.gateway === r.route.gateway)) return false;
  }
  return true;
}

/** What recoverLost did: its line, the record it went by, and whether the interception was whole and kept. */
export interface LostRecovered {
  line: string;
  rec?: JournalRecord;
  kept: boolean;
}

/** Brings one lost intercept to rest (the caller holds the intercept lock). */
export async function recoverLost(pinRoot: string, l: Lost, enforcer: string | undefined): Promise<LostRecovered> {
  if (!l.marker) {
    fs.rmSync(l.file!, { force: true });
    return { line: `removed the journal record ${path.basename(l.file!)}, which could not be read (nothing of its intercept of ${l.what} is in the kernel)`, kept: false };
  }
  const { m, dev } = l.marker;
  const enf = enforcerRunner(enforcer);
  const e = nsfsId(enf.ref())!;
  const ctrPath = findNetns({ ino: m.ctrIno, dev: e.dev, path: '' });
  const rec: JournalRecord = {
    version: 1, op: 'intercept', step: 'unknown (record lost)',
    target: { desc: ctrPath ? `netns ${ctrPath}` : `netns inode ${m.ctrIno}`, pid: null, path: ctrPath ?? '', ino: m.ctrIno, dev: e.dev },
    enforcer: { path: enf.path ?? null, ino: e.ino, dev: e.dev },
    port: m.port, vex: `vex${m.tag}-${m.port}`, vin: `vin${m.tag}-${m.port}`,
    snap: markerSnapshot(m, dev.mtu), time: '',
  };
  const ctr = ctrPath ? new NsRunner(ctrPath, `the container netns (${rec.target.desc})`) : undefined;
  if (ctr && (await interceptedNow(rec, ctr, enf)) && (await complete(pinRoot, rec, ctr, enforcer))) {
    writeRecord(pinRoot, { ...rec, step: 'intercepted' });
    return { line: `recorded the interception of ${l.what} again from the kernel (${why(l)}): it is whole`, rec, kept: true };
  }
  await recoverLocked(rec, { pinRoot, enforcer });
  if (l.file) fs.rmSync(l.file, { force: true });
  const partial = m.partial ? ' (the marker held only part of its addresses and gateways)' : '';
  const line = ctr
    ? `rolled back a half-done intercept of ${l.what} from the kernel's marker (${why(l)}): ${m.port} has its MAC, addresses and default routes back${partial}`
    : `cleaned up a half-done intercept of ${l.what} from the kernel's marker (${why(l)}; the container is gone)`;
  return { line, rec, kept: false };
}

/** repair: every lost intercept, looking into every netns. */
export async function recoverAllLost(pinRoot: string, dryRun: boolean): Promise<{ actions: string[]; left: string[] }> {
  const out = { actions: [] as string[], left: [] as string[] };
  await withLock(pinRoot, async () => {
    for (const l of await findLost(pinRoot, undefined, 'all')) {
      if (dryRun) {
        out.actions.push(lostProblem(l));
        continue;
      }
      try {
        out.actions.push((await recoverLost(pinRoot, l, undefined)).line);
      } catch (e) {
        out.left.push(`${lostProblem(l)}: ${(e as Error).message}`);
      }
    }
  }, undefined, INTERCEPT_LOCK);
  if (out.actions.length) log('journal').info({ actions: out.actions, dryRun }, 'lost intercepts');
  return out;
}

/**
 * intercept and release of one container port, under the intercept lock:
 * a lost intercept of it is recovered first. Returns what was done.
 */
export async function recoverLostTarget(pinRoot: string, ctrPath: string, ino: number, port: string, enforcer: string | undefined): Promise<LostRecovered | undefined> {
  const l = (await findLost(pinRoot, enforcer, [ctrPath])).find((x) => x.ino === ino && x.port === port);
  if (!l) return undefined;
  try {
    return await recoverLost(pinRoot, l, enforcer);
  } catch (e) {
    throw new NeuvError(`${lostProblem(l)}, but: ${(e as Error).message}`);
  }
}
