/**
 * Where a datapath lives: a pin root is bound to the enforcer netns it was
 * loaded in. Pins are netns-blind (a tcx link pin, a program pin and the port
 * map's ifindexes work from anywhere), so run in another netns a command
 * would detach, attach or delete whatever interfaces happen to carry the
 * pair's ifindexes there. So:
 *
 *  - `load` records the netns in the pinned map neuv_home (struct neuv_home:
 *    the netns cookie, the inode and device of its nsfs file, vbr-neuv's
 *    ifindex); bpftool reads it (`bpftool map dump pinned .../neuv_home`);
 *  - every other command, and the Datapath API, calls checkHome() first and
 *    refuses anywhere else with a WrongNetnsError naming the right netns;
 *  - load refuses a second pin root in a netns whose vbr-neuv already runs a
 *    neuv program (vbrOwner()): one datapath per enforcer netns.
 *
 * A pin root loaded by a version before neuv_home (no record, or all zeros)
 * is accepted where vbr-neuv runs its pinned vbr program (asked of the
 * kernel for this netns: the tc filter or the tcx attachment), refused
 * elsewhere; the next load there records it. One with no vbr program pinned
 * (maps only: a load cut short) names no netns and is accepted anywhere.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MapFd, ProgFd, netnsCookie, tcQuery, tcxQuery } from './bpf';
import { TC_HANDLE, TC_PRIORITY } from './attach';
import { WrongNetnsError } from './errors';
import { Home, decodeHome, encodeHome, u32Key } from './layout';
import { VBR, ifindexIfExists } from './link';
import { NETNS_DIR, isNetnsFile, netnsPathOf } from './netns';
import { isLoaded, mapPinPath, pinnedProgId, progPinPath, PROGS } from './pins';

/** The calling thread's netns (setns moves threads: /proc/thread-self). */
export function netnsHere(): { ino: bigint; dev: bigint; cookie: bigint } {
  const st = fs.statSync('/proc/thread-self/ns/net', { bigint: true });
  return { ino: st.ino, dev: st.dev, cookie: netnsCookie() };
}

/** The record under pinRoot, or undefined: no neuv_home (an older load) or nothing recorded yet. */
export function readHome(pinRoot: string): Home | undefined {
  const pin = mapPinPath(pinRoot, 'home');
  if (!fs.existsSync(pin)) return undefined;
  const m = MapFd.fromPin(pin);
  try {
    const v = m.lookup(u32Key(0));
    const h = v ? decodeHome(v) : undefined;
    return h && (h.netnsIno !== 0n || h.netnsCookie !== 0n) ? h : undefined;
  } finally {
    m.close();
  }
}

/** The record load writes: this netns and vbr-neuv's ifindex here. */
export function homeHere(): Home {
  const n = netnsHere();
  return { netnsCookie: n.cookie, netnsIno: n.ino, netnsDev: n.dev, vbrIfindex: ifindexIfExists(VBR) };
}

/** Writes the record into the loader's neuv_home. */
export function writeHome(map: MapFd, h: Home): void {
  map.update(u32Key(0), encodeHome(h));
}

/** Whether the record names this netns: by cookie where both have one, else by inode and device. */
export function isHere(h: Home): boolean {
  const n = netnsHere();
  if (h.netnsCookie !== 0n && n.cookie !== 0n) return h.netnsCookie === n.cookie;
  return h.netnsIno === n.ino && h.netnsDev === n.dev;
}

interface NetnsName {
  /** How to say it: "netns enf1 (/var/run/netns/enf1)". */
  desc: string;
  /** What --netns takes to get there, when something names it. */
  arg?: string;
  root?: boolean;
  /** Nothing holds it: no name, not pid 1's, no process in it. */
  gone?: boolean;
}

/** A name for a netns given by its nsfs inode: an `ip netns` name, the root netns, a process in it, or the inode. */
export function nameNetns(ino: bigint, dev: bigint, scanProcs = true, cookie = 0n): NetnsName {
  const named = netnsPathOf(ino, dev, false, cookie);
  if (named) return { desc: `netns ${path.basename(named)} (${named})`, arg: path.dirname(named) === NETNS_DIR ? path.basename(named) : named };
  if (isNetnsFile('/proc/1/ns/net', ino, dev, cookie)) return { desc: 'the root netns (of pid 1)', root: true };
  if (!scanProcs) return { desc: `this netns (inode ${ino}, no name under ${NETNS_DIR})` };
  const p = netnsPathOf(ino, dev, true, cookie);
  if (p) return { desc: `the netns of pid ${p.split('/')[2]} (${p}, inode ${ino})`, arg: p };
  return { desc: `netns inode ${ino} (no name or process holds it: gone?)`, gone: true };
}

/**
 * Whether the netns a loaded pin root was loaded in is gone: it is recorded,
 * it is not this one, and no name, pid 1 or process holds it (nameNetns).
 * Its hooks, ports and vbr-neuv went with it; only the pins are left, and
 * every command refuses them (checkHome) but `unload --force`, which removes
 * them (unloadOrphan in loader.ts). A netns kept only by an open fd or a bind
 * mount elsewhere than under /var/run/netns or /run/netns looks gone too:
 * its hooks then run on without pins until it goes. An nsfs inode reused by
 * a new netns (the kernel reuses them at once) is told apart by the netns
 * cookie load recorded, which is never reused.
 */
export function homeGone(pinRoot: string): boolean {
  if (!isLoaded(pinRoot)) return false;
  const h = readHome(pinRoot);
  return h !== undefined && !isHere(h) && nameNetns(h.netnsIno, h.netnsDev, true, h.netnsCookie).gone === true;
}

/**
 * Throws unless the datapath under pinRoot lives in this thread's netns.
 * Nothing loaded: nothing to check (the command says so itself).
 */
export function checkHome(pinRoot: string): void {
  if (!isLoaded(pinRoot)) return;
  const h = readHome(pinRoot);
  if (h) {
    if (isHere(h)) return;
    throw wrongNetns(pinRoot, nameNetns(h.netnsIno, h.netnsDev, true, h.netnsCookie));
  }
  // No record (an older load): vbr-neuv here must run the pinned vbr program. With no vbr
  // program pinned (a load cut short, maps only) nothing names a netns: let it be (load records one).
  const want = pinnedProgId(pinRoot, 'vbr');
  if (!want || vbrProgsHere().includes(want)) return;
  const n = netnsHere();
  const here = nameNetns(n.ino, n.dev, false);
  throw new WrongNetnsError(
    `pin root ${pinRoot} has no record of its netns (loaded by an older neuv-bpf) and ${VBR} here (${here.desc}) does not run its program: ` +
      'run this in the netns it was loaded in (--netns); a load there records it',
  );
}

function wrongNetns(pinRoot: string, home: NetnsName): WrongNetnsError {
  const n = netnsHere();
  const here = nameNetns(n.ino, n.dev, false);
  const how = home.root
    ? 'run it there (without --netns)'
    : home.arg
      ? `run it there: --netns ${home.arg}`
      : 'if that netns is gone for good (its ports with it), neuv-bpf unload --force removes the pins';
  return new WrongNetnsError(
    `pin root ${pinRoot} belongs to ${home.desc}, not to ${here.desc}${here.arg ? '' : ' (--netns forgotten?)'}: ${how}`,
  );
}

function homeIsHere(pinRoot: string): boolean {
  const h = readHome(pinRoot);
  return h !== undefined && isHere(h);
}

/** Program ids on vbr-neuv's ingress in this netns (our tc filter, tcx), [] without vbr-neuv. */
export function vbrProgsHere(): number[] {
  const vbr = ifindexIfExists(VBR);
  if (!vbr) return [];
  const ids = tcxQuery(vbr);
  const tc = tcQuery(vbr, TC_HANDLE, TC_PRIORITY);
  return tc ? [...ids, tc] : ids;
}

function progName(id: number): string | undefined {
  try {
    const p = ProgFd.fromId(id);
    try {
      return p.info().name;
    } finally {
      p.close();
    }
  } catch {
    return undefined;
  }
}

/** Pin roots (directories beside pinRoot and under /sys/fs/bpf) whose prog_vbr is program `id`. */
function pinRootsOfProg(pinRoot: string, id: number): string[] {
  const out = new Set<string>();
  for (const parent of new Set([path.dirname(pinRoot), '/sys/fs/bpf'])) {
    let ents: fs.Dirent[] = [];
    try {
      ents = fs.readdirSync(parent, { withFileTypes: true });
    } catch {
      continue;
    }
    for (const e of ents) {
      const dir = path.join(parent, e.name);
      if (!e.isDirectory() || dir === pinRoot || !fs.existsSync(progPinPath(dir, 'vbr'))) continue;
      if (pinnedProgId(dir, 'vbr') === id) out.add(dir);
    }
  }
  return [...out];
}

/**
 * Another pin root's datapath on vbr-neuv in this netns: the neuv_vbr
 * program there that is not pinRoot's, and where it is pinned ("an unknown
 * pin root" when it is not found). undefined: vbr-neuv is free or ours.
 */
export function vbrOwner(pinRoot: string): { progId: number; owner: string } | undefined {
  const ours = fs.existsSync(progPinPath(pinRoot, 'vbr')) ? pinnedProgId(pinRoot, 'vbr') : 0;
  for (const id of vbrProgsHere()) {
    if (id === ours || progName(id) !== PROGS.vbr) continue;
    const roots = pinRootsOfProg(pinRoot, id);
    if (!roots.length && homeIsHere(pinRoot)) continue; // pinned nowhere: a killed load of ours left it
    return { progId: id, owner: roots.length ? roots.join(', ') : 'a pin root not found beside it or under /sys/fs/bpf' };
  }
  return undefined;
}

