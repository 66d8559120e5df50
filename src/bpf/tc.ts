/** tc: the clsact qdisc and cls_bpf filters on ingress (libbpf's bpf_tc_*). */
import koffi from 'koffi';
import { KernelError } from '../errors';
import { check, lib, TcHook, TcOpts } from './lib';
import { Rtnl, nlAttrs, nlCString, nlNested, nlString, nlU32 } from './rtnl';

// ---------------------------------------------------------------- tc

export const TC_INGRESS = 1;
export const TC_EGRESS = 2;
export const TC_F_REPLACE = 1;

function tcHook(ifindex: number, point: number) {
  return { sz: koffi.sizeof(TcHook), ifindex, attach_point: point, parent: 0 };
}

/** Creates the clsact qdisc. Returns false if one (or another qdisc kind) already existed. */
export function tcHookCreate(ifindex: number, ctx: string): boolean {
  const r = lib().bpf_tc_hook_create(tcHook(ifindex, TC_INGRESS));
  if (r === -17) return false; // EEXIST: clsact (or a legacy ingress qdisc) already there
  check(r, `create clsact qdisc on ${ctx}`);
  return true;
}

/** Destroys the clsact qdisc (both directions) and everything attached to it. */
export function tcHookDestroy(ifindex: number, ctx: string): void {
  const r = lib().bpf_tc_hook_destroy(tcHook(ifindex, TC_INGRESS | TC_EGRESS));
  if (r === -2 || r === -19 || r === -22) return; // already gone (EINVAL: no clsact on the device any more)
  check(r, `remove clsact qdisc from ${ctx}`);
}

/** Attaches (or with replace, swaps in place) a direct-action program. Returns the prog id. */
export function tcAttach(ifindex: number, progFd: number, handle: number, priority: number, replace: boolean, ctx: string): number {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: progFd, flags: replace ? TC_F_REPLACE : 0, prog_id: 0, handle, priority };
  check(lib().bpf_tc_attach(tcHook(ifindex, TC_INGRESS), opts), `attach ${ctx} ingress`);
  return opts.prog_id;
}

/** Detaches our filter; returns false if it was not there. */
export function tcDetach(ifindex: number, handle: number, priority: number, ctx: string): boolean {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const r = lib().bpf_tc_detach(tcHook(ifindex, TC_INGRESS), opts);
  if (r === -2 || r === -19 || r === -22) return false; // no such filter / device / qdisc
  check(r, `detach ${ctx} ingress`);
  return true;
}

/** The program id attached at handle/priority, or 0 if none. */
export function tcQuery(ifindex: number, handle: number, priority: number): number {
  const opts = { sz: koffi.sizeof(TcOpts), prog_fd: 0, flags: 0, prog_id: 0, handle, priority };
  const r = lib().bpf_tc_query(tcHook(ifindex, TC_INGRESS), opts);
  if (r < 0) return 0;
  return opts.prog_id;
}


// ---------------------------------------------------------------- many at once (one netlink socket)

const RTM_NEWQDISC = 36;
const RTM_DELQDISC = 37;
const RTM_NEWTFILTER = 44;
const RTM_DELTFILTER = 45;
const RTM_GETTFILTER = 46;
const NLM_F_DUMP = 0x300;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const TCA_KIND = 1;
const TCA_OPTIONS = 2;
const TCA_BPF_FD = 6;
const TCA_BPF_NAME = 7;
const TCA_BPF_FLAGS = 8;
const TCA_BPF_FLAG_ACT_DIRECT = 1;
const TC_H_CLSACT = 0xfffffff1;
const TC_H_CLSACT_HANDLE = 0xffff0000;
const TC_PARENT = { ingress: 0xfffffff2, egress: 0xfffffff3 } as const;
const ETH_P_ALL_BE = 0x0300; // htons(ETH_P_ALL)
const EEXIST = 17;

/** struct tcmsg: family, ifindex, handle, parent, info. */
function tcmsg(ifindex: number, handle: number, parent: number, info: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeInt32LE(ifindex, 4);
  b.writeUInt32LE(handle >>> 0, 8);
  b.writeUInt32LE(parent >>> 0, 12);
  b.writeUInt32LE(info >>> 0, 16);
  return b;
}

const filterInfo = (priority: number) => ((priority & 0xffff) << 16) | ETH_P_ALL_BE;

/**
 * Creates a clsact qdisc on each device (as tcHookCreate, libbpf's
 * bpf_tc_hook_create, one message each), every message over one netlink
 * socket: true where it was created, false where one (or another ingress
 * qdisc) was there already. Throws only when no message could be sent;
 * other refusals come back as a negative errno in the slot.
 */
export function tcHookCreateMany(ifindexes: number[]): Array<boolean | number> {
  const body = (i: number) => Buffer.concat([tcmsg(i, TC_H_CLSACT_HANDLE, TC_H_CLSACT, 0), nlString(TCA_KIND, 'clsact')]);
  const r = Rtnl.with('clsact qdiscs', (s) => s.batch(ifindexes.map((i) => ({ type: RTM_NEWQDISC, flags: NLM_F_CREATE | NLM_F_EXCL, body: body(i) })), 'create clsact qdiscs'));
  return r.map((e) => (e === 0 ? true : e === EEXIST ? false : -e));
}

/** Destroys the clsact qdisc (both directions, and what hangs off it) of each device: 0 or a negative errno each. */
export function tcHookDestroyMany(ifindexes: number[]): number[] {
  const body = (i: number) => Buffer.concat([tcmsg(i, TC_H_CLSACT_HANDLE, TC_H_CLSACT, 0), nlString(TCA_KIND, 'clsact')]);
  return Rtnl.with('clsact qdiscs', (s) => s.batch(ifindexes.map((i) => ({ type: RTM_DELQDISC, flags: 0, body: body(i) })), 'remove clsact qdiscs')).map((e) => -e);
}

/** One filter of tcAttachMany: a direct-action program on a device's ingress. */
export interface TcAttachItem {
  ifindex: number;
  progFd: number;
  /** The filter's name, as libbpf writes it: "<program name>:[<program id>]". */
  progName: string;
}

/**
 * Attaches each program at handle/priority on its device's ingress (as
 * tcAttach without replace: a filter there already is refused with
 * -EEXIST and left as it is), every message over one netlink socket: 0
 * or a negative errno each.
 */
export function tcAttachMany(items: TcAttachItem[], handle: number, priority: number): number[] {
  const msgs = items.map((it) => ({
    type: RTM_NEWTFILTER,
    flags: NLM_F_CREATE | NLM_F_EXCL,
    body: Buffer.concat([
      tcmsg(it.ifindex, handle, TC_PARENT.ingress, filterInfo(priority)),
      nlString(TCA_KIND, 'bpf'),
      nlNested(TCA_OPTIONS, nlU32(TCA_BPF_FD, it.progFd), nlString(TCA_BPF_NAME, it.progName), nlU32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)),
    ]),
  }));
  return Rtnl.with('tc filters', (s) => s.batch(msgs, 'attach tc filters')).map((e) => -e);
}

const TCA_BPF_ID = 11;

/**
 * The program id at handle/priority on each device's ingress, 0 where there
 * is none (as tcQuery, one RTM_GETTFILTER each), every request over one
 * netlink socket: show's view of 2,000 ports in a few system calls.
 */
export function tcQueryMany(ifindexes: number[], handle: number, priority: number): number[] {
  const ids = ifindexes.map(() => 0);
  const msgs = ifindexes.map((i) => ({ type: RTM_GETTFILTER, flags: 0, body: Buffer.concat([tcmsg(i, handle, TC_PARENT.ingress, filterInfo(priority)), nlString(TCA_KIND, 'bpf')]) }));
  Rtnl.with('tc filters', (s) =>
    s.batch(msgs, 'query tc filters', (k, buf, type, off, end) => {
      if (type !== RTM_NEWTFILTER || end - off < 20) return;
      for (const [t, v] of nlAttrs(buf, off + 20, end)) {
        if (t !== TCA_OPTIONS) continue;
        for (const [o, ov] of nlAttrs(v, 0, v.length)) if (o === TCA_BPF_ID && ov.length >= 4) ids[k] = ov.readUInt32LE(0);
      }
    }),
  );
  return ids;
}

/** Detaches our filter (handle/priority) from each device's ingress: 0 or a negative errno each (-ENOENT: none there). */
export function tcDetachMany(ifindexes: number[], handle: number, priority: number): number[] {
  const msgs = ifindexes.map((i) => ({ type: RTM_DELTFILTER, flags: 0, body: Buffer.concat([tcmsg(i, handle, TC_PARENT.ingress, filterInfo(priority)), nlString(TCA_KIND, 'bpf')]) }));
  return Rtnl.with('tc filters', (s) => s.batch(msgs, 'detach tc filters')).map((e) => -e);
}

/**
 * The tc filters on a device's clsact, ingress and egress (two dumps, in
 * process), one line each: "ingress: pref 10001 u32 handle 0x800" (a
 * classifier with no filter left is listed without handle). Empty when there
 * are none or no clsact.
 */
export function tcFilterList(ifindex: number, rtnl?: Rtnl): string[] {
  const run = (s: Rtnl) => {
    const out: string[] = [];
    for (const [dir, parent] of Object.entries(TC_PARENT)) {
      try {
        s.request(RTM_GETTFILTER, NLM_F_DUMP, tcmsg(ifindex, 0, parent, 0), `list the tc filters of ifindex ${ifindex} ${dir}`, (buf, type, off, end) => {
          if (type !== RTM_NEWTFILTER || end - off < 20) return;
          const handle = buf.readUInt32LE(off + 8);
          const pref = buf.readUInt32LE(off + 16) >>> 16;
          let kind = '';
          for (const [t, v] of nlAttrs(buf, off + 20, end)) if (t === TCA_KIND) kind = nlCString(v);
          out.push(`${dir}: pref ${pref} ${kind}${handle ? ` handle 0x${handle.toString(16)}` : ''}`);
        });
      } catch (e) {
        // No such device, or no clsact on it: nothing to keep.
        if (e instanceof KernelError && (e.errno === 2 || e.errno === 19 || e.errno === 22)) continue;
        throw e;
      }
    }
    return out;
  };
  return rtnl ? run(rtnl) : Rtnl.with('tc filters', run);
}
