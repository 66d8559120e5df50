/**
 * Attaching our programs to a port's ingress, two ways, chosen per kernel:
 *
 * - tcx (Linux >= 6.6): a bpf_link of type TCX_INGRESS, pinned at
 *   <pin root>/link_<ifindex> so it outlives the loader. Replacement is
 *   bpf_link_update: atomic. It runs before any legacy tc filter, which then
 *   runs only if we return TC_ACT_UNSPEC (we never do), so it also shadows
 *   NeuVector's u32 filters on the same port.
 * - tc: a clsact qdisc (created if missing; an existing one, or a legacy
 *   `ingress` qdisc, is shared) and a direct-action cls_bpf filter at our own
 *   handle/priority; replacement is BPF_TC_F_REPLACE in place.
 *
 * What is attached is read back from the kernel (pins, tc query), never from a
 * side file, so a restarted loader sees the truth.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  BPF_TCX_INGRESS,
  closeFd,
  linkCreate,
  linkDetach,
  linkInfo,
  linkUpdate,
  objGet,
  pinFd,
  rcuGrace,
  Rtnl,
  tcAttach,
  tcAttachMany,
  tcDetachMany,
  tcFilterList,
  tcHookCreateMany,
  tcHookDestroyMany,
  tcDetach,
  tcHookCreate,
  tcHookDestroy,
  tcQuery,
  tcQueryMany,
} from './bpf';
import { KernelError } from './errors';
import { features, requireFeature } from './features';
import { log } from './log';

/** Our tc filter: a handle of our own ("NV") at priority 1, ahead of NeuVector's 10001+. */
export const TC_HANDLE = 0x4e56;
export const TC_PRIORITY = 1;

export type AttachKind = 'tcx' | 'tc';

/**
 * tcx where the kernel has it, else clsact. NEUV_BPF_ATTACH=tc|tcx forces one;
 * forcing tcx on a kernel without it is a clear error.
 */
export function preferredKind(env: NodeJS.ProcessEnv = process.env): AttachKind {
  if (env.NEUV_BPF_ATTACH === 'tc') return 'tc';
  if (env.NEUV_BPF_ATTACH === 'tcx') {
    requireFeature('tcx', 'NEUV_BPF_ATTACH=tcx');
    return 'tcx';
  }
  return features().tcx ? 'tcx' : 'tc';
}

export function linkPinPath(pinRoot: string, ifindex: number): string {
  return path.join(pinRoot, `link_${ifindex}`);
}

export interface AttachState {
  kind: AttachKind | 'none';
  progId: number;
  /** tcx link pinned but its device is gone (defunct link). */
  defunct?: boolean;
}

/** What is attached at our place on a port's ingress. */
export function attachState(pinRoot: string, ifindex: number): AttachState {
  const pin = linkPinPath(pinRoot, ifindex);
  if (fs.existsSync(pin)) {
    const fd = objGet(pin);
    if (fd >= 0) {
      try {
        const info = linkInfo(fd);
        return { kind: 'tcx', progId: info.progId, defunct: info.ifindex !== ifindex };
      } finally {
        closeFd(fd);
      }
    }
  }
  const id = tcQuery(ifindex, TC_HANDLE, TC_PRIORITY);
  return id ? { kind: 'tc', progId: id } : { kind: 'none', progId: 0 };
}

/**
 * attachState for many ports (show): one look at the pin root for the
 * pinned tcx links, then every other port's tc filter queried over one
 * netlink socket (tcQueryMany).
 */
export function attachStates(pinRoot: string, ifindexes: number[]): Map<number, AttachState> {
  const pinned = new Set(fs.readdirSync(pinRoot).filter((f) => /^link_\d+$/.test(f)).map((f) => Number(f.slice(5))));
  const out = new Map<number, AttachState>();
  const tc = [...new Set(ifindexes)].filter((i) => {
    if (!pinned.has(i)) return true;
    const st = attachState(pinRoot, i);
    out.set(i, st);
    return false;
  });
  tcQueryMany(tc, TC_HANDLE, TC_PRIORITY).forEach((id, k) => out.set(tc[k]!, id ? { kind: 'tc', progId: id } : { kind: 'none', progId: 0 }));
  return out;
}

export interface AttachResult {
  kind: AttachKind;
  /** tc only: we created the clsact qdisc (so we remove it on detach). */
  qdiscCreated: boolean;
  /** There was already an attachment of ours, swapped in place. */
  replaced: boolean;
}

/**
 * Attaches progFd to the ingress of ifindex, or swaps it in place where we
 * are attached already (whatever kind that attachment is).
 */
export function attach(pinRoot: string, ifindex: number, name: string, progFd: number, kind = preferredKind()): AttachResult {
  const cur = attachState(pinRoot, ifindex);
  if (cur.kind === 'tcx' && !cur.defunct) {
    const fd = objGet(linkPinPath(pinRoot, ifindex));
    try {
      linkUpdate(fd, progFd, `${name} ingress (tcx)`);
    } finally {
      closeFd(fd);
    }
    return { kind: 'tcx', qdiscCreated: false, replaced: true };
  }
  if (cur.defunct) fs.rmSync(linkPinPath(pinRoot, ifindex), { force: true });
  if (cur.kind === 'tc' || kind === 'tc') {
    const qdiscCreated = cur.kind === 'tc' ? false : tcHookCreate(ifindex, name);
    try {
      tcAttach(ifindex, progFd, TC_HANDLE, TC_PRIORITY, true, name);
    } catch (e) {
      if (qdiscCreated) tcHookDestroy(ifindex, name);
      throw e;
    }
    return { kind: 'tc', qdiscCreated, replaced: cur.kind === 'tc' };
  }
  const link = linkCreate(progFd, ifindex, BPF_TCX_INGRESS, `${name} ingress`);
  try {
    pinFd(link, linkPinPath(pinRoot, ifindex));
    fs.chmodSync(linkPinPath(pinRoot, ifindex), 0o600);
  } catch (e) {
    closeFd(link); // unpinned: closing detaches
    throw e;
  } finally {
    closeFd(link);
  }
  return { kind: 'tcx', qdiscCreated: false, replaced: false };
}

export interface DetachResult {
  /** Something of ours was attached and is gone now. */
  detached: boolean;
  /** The clsact qdisc was removed (we created it and it carried no other filter). */
  qdiscRemoved: boolean;
  /** Filters of others that kept a clsact of ours in place. */
  qdiscKeptFor: string[];
  /** detachMany: the kernel refused to remove our filter (errno; not for a filter, qdisc or device already gone). */
  errno?: number;
}

/**
 * Removes our attachment from a port, whatever its kind. `qdiscOurs`: we
 * created the clsact qdisc, so remove it too, but only once our filter is
 * gone and no other filter is left on it, ingress or egress (tcx links do
 * not hang off the qdisc and survive its removal).
 */
export function detachPort(pinRoot: string, ifindex: number, name: string, qdiscOurs: boolean): DetachResult {
  let any = false;
  const pin = linkPinPath(pinRoot, ifindex);
  if (fs.existsSync(pin)) {
    const fd = objGet(pin);
    if (fd >= 0) {
      try {
        linkDetach(fd, `${name} ingress (tcx)`);
      } catch (e) {
        log('attach').debug({ err: (e as Error).message, name }, 'tcx link already detached');
      } finally {
        closeFd(fd);
      }
    }
    fs.rmSync(pin, { force: true });
    any = true;
  }
  if (tcDetach(ifindex, TC_HANDLE, TC_PRIORITY, name)) any = true;
  if (!qdiscOurs) return { detached: any, qdiscRemoved: false, qdiscKeptFor: [] };
  const others = tcFilterList(ifindex);
  if (others.length) {
    log('attach').info({ name, filters: others }, 'clsact created by us carries filters of others: left in place');
    return { detached: any, qdiscRemoved: false, qdiscKeptFor: others };
  }
  tcHookDestroy(ifindex, name);
  return { detached: any, qdiscRemoved: true, qdiscKeptFor: [] };
}

/** detachPort, answering only whether something of ours was attached. */
export function detach(pinRoot: string, ifindex: number, name: string, qdiscOurs: boolean): boolean {
  return detachPort(pinRoot, ifindex, name, qdiscOurs).detached;
}

// ---------------------------------------------------------------- many ports at once (tc)

/** A port of attachMany: its ifindex, name, and the program for it (fd, and libbpf's filter name "<name>:[<id>]"). */
export interface AttachRequest {
  ifindex: number;
  name: string;
  progFd: number;
  progName: string;
}

export interface ManyAttached {
  /** Per request: attached now; or false where our handle/priority was taken already (a stale filter: the caller goes through attach()). */
  attached: boolean[];
  /** Per request: we created its clsact qdisc (tc only). */
  qdiscCreated: boolean[];
  /** Where the time went, ms: the qdiscs, the grace period, the filters. */
  ms?: { qdiscs: number; grace: number; filters: number };
}

/**
 * Attaches many ports with tc (a pair add of a whole batch), with the least
 * system calls and waits: every port's clsact qdisc created over one
 * netlink socket, one RCU grace period, then every filter over one socket
 * (tcHookCreateMany, tcAttachMany: a message each, a receive only for
 * refusals). The grace period is what makes it fast: the first filter on a
 * new clsact swaps its mini-qdisc (mini_qdisc_pair_swap), which waits for a
 * grace period since the qdisc was made (synchronize_rcu_expedited, ~1 ms a
 * port measured) unless one has passed already; one wait covers them all.
 * Ports whose tcx link is pinned are for attach(), not here. On a refusal
 * other than an occupied place, everything done here is undone and the
 * refusal thrown, naming the port (its index in `reqs` is the error's
 * `request`).
 */
export function attachMany(reqs: AttachRequest[]): ManyAttached {
  if (!reqs.length) return { attached: [], qdiscCreated: [] };
  const t0 = performance.now();
  const q = tcHookCreateMany(reqs.map((r) => r.ifindex));
  const t1 = performance.now();
  const qdiscCreated = q.map((x) => x === true);
  const fail = (i: number, errno: number, what: string, attached: boolean[]): never => {
    detachMany(reqs.map((r, k) => ({ ifindex: r.ifindex, name: r.name, qdiscOurs: qdiscCreated[k]!, attached: attached[k]! })).filter((d) => d.attached || d.qdiscOurs));
    throw Object.assign(new KernelError(`${what} ${reqs[i]!.name} ingress`, errno), { request: i });
  };
  const qBad = q.findIndex((x) => typeof x === 'number');
  if (qBad >= 0) fail(qBad, -(q[qBad] as number), 'create clsact qdisc on', reqs.map(() => false));
  if (qdiscCreated.some(Boolean)) rcuGrace();
  const t2 = performance.now();
  const r = tcAttachMany(reqs, TC_HANDLE, TC_PRIORITY);
  const ms = { qdiscs: t1 - t0, grace: t2 - t1, filters: performance.now() - t2 };
  const attached = r.map((e) => e === 0);
  const bad = r.findIndex((e) => e !== 0 && e !== -EEXIST);
  if (bad >= 0) fail(bad, -r[bad]!, 'attach', attached);
  return { attached, qdiscCreated, ms };
}

/** A port of detachMany: our tc filter on it (attached), and the clsact qdisc if we created it (qdiscOurs). */
export interface DetachRequest {
  ifindex: number;
  name: string;
  qdiscOurs: boolean;
  /** Our filter is there to remove (default true). */
  attached?: boolean;
}

/**
 * detachPort for many tc ports over one netlink socket: every filter of
 * ours removed, then each clsact qdisc we created removed unless it carries
 * filters of others (listed in process). Ports whose tcx link is pinned are
 * for detachPort. A refusal is logged and the rest still goes (undoing a
 * batch, removing many pairs: nothing better to do); the results say what
 * was done.
 */
export function detachMany(reqs: DetachRequest[]): DetachResult[] {
  const lg = log('attach');
  const withFilter = reqs.filter((d) => d.attached !== false);
  const r = tcDetachMany(withFilter.map((d) => d.ifindex), TC_HANDLE, TC_PRIORITY);
  const detached = new Map<number, number>();
  withFilter.forEach((d, k) => {
    const e = r[k]!;
    detached.set(d.ifindex, e);
    if (e !== 0 && e !== -ENOENT && e !== -ENODEV && e !== -EINVAL) lg.warn({ name: d.name, errno: -e }, 'could not detach our tc filter');
  });
  const out = reqs.map((d): DetachResult => {
    const e = detached.get(d.ifindex);
    return { detached: e === 0, qdiscRemoved: false, qdiscKeptFor: [], ...(e && e !== -ENOENT && e !== -ENODEV && e !== -EINVAL ? { errno: -e } : {}) };
  });
  const drop: number[] = [];
  Rtnl.with('tc filters', (s) =>
    reqs.forEach((d, k) => {
      if (!d.qdiscOurs) return;
      const others = tcFilterList(d.ifindex, s);
      if (others.length) {
        lg.info({ name: d.name, filters: others }, 'clsact created by us carries filters of others: left in place');
        out[k]!.qdiscKeptFor = others;
      } else drop.push(k);
    }),
  );
  const rq = tcHookDestroyMany(drop.map((k) => reqs[k]!.ifindex));
  drop.forEach((k, j) => {
    const e = rq[j]!;
    if (e === 0 || e === -ENOENT || e === -ENODEV || e === -EINVAL) out[k]!.qdiscRemoved = e === 0;
    else lg.warn({ name: reqs[k]!.name, errno: -e }, 'could not remove the clsact qdisc we created');
  });
  return out;
}

const EEXIST = 17;
const ENOENT = 2;
const ENODEV = 19;
const EINVAL = 22;
