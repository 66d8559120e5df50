/** tc: the clsact qdisc and cls_bpf filters on ingress (libbpf's bpf_tc_*). */
import koffi from 'koffi';
import { check, lib, TcHook, TcOpts } from './lib';

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

