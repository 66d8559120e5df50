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
import { spawnSync } from 'node:child_process';
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
  tcAttach,
  tcDetach,
  tcHookCreate,
  tcHookDestroy,
  tcQuery,
} from './bpf';
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

/**
 * The tc filters on a port's clsact (ingress and egress, every chain), one
 * line each as `tc filter show` prints them, in the current netns (a netns
 * entered with setns is inherited by the child). Empty when there are none or
 * no qdisc. Used before removing a clsact we created: someone may have added
 * filters to it since (NeuVector's u32 rules, another tool's bpf filter).
 */
export function tcFilters(name: string): string[] {
  const out: string[] = [];
  for (const dir of ['ingress', 'egress']) {
    const r = spawnSync('tc', ['filter', 'show', 'dev', name, dir], { encoding: 'utf8' });
    if (r.error) throw new Error(`tc filter show dev ${name} ${dir}: ${r.error.message}`);
    if (r.status !== 0) continue; // no such device or no clsact: nothing to keep
    for (const l of r.stdout.split('\n')) if (l.startsWith('filter ')) out.push(`${dir}: ${l.trim()}`);
  }
  return out;
}

export interface DetachResult {
  /** Something of ours was attached and is gone now. */
  detached: boolean;
  /** The clsact qdisc was removed (we created it and it carried no other filter). */
  qdiscRemoved: boolean;
  /** Filters of others that kept a clsact of ours in place. */
  qdiscKeptFor: string[];
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
  const others = tcFilters(name);
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
