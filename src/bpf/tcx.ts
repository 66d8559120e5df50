/** tcx: BPF links on ingress (kernel >= 6.6), and the probes features.ts runs. */
import { check, lib, objInfo } from './lib';

// ---------------------------------------------------------------- links (tcx)

export const BPF_TCX_INGRESS = 46;

/** struct bpf_link_info: type@0 id@4 prog_id@8, then for tcx: ifindex@16 attach_type@20. */
export function linkInfo(fd: number): { type: number; id: number; progId: number; ifindex: number } {
  const b = objInfo(fd, 64, 'link');
  return { type: b.readUInt32LE(0), id: b.readUInt32LE(4), progId: b.readUInt32LE(8), ifindex: b.readUInt32LE(16) };
}

/**
 * Ids of the programs on a device's tcx ingress in the current netns
 * (BPF_PROG_QUERY by ifindex; a link pin does not say which netns its
 * device is in, this does). [] when nothing is attached or there is no tcx.
 */
export function tcxQuery(ifindex: number, max = 64): number[] {
  const flags = Buffer.alloc(4);
  const ids = Buffer.alloc(4 * max);
  const cnt = Buffer.alloc(4);
  cnt.writeUInt32LE(max);
  if (lib().bpf_prog_query(ifindex, BPF_TCX_INGRESS, 0, flags, ids, cnt) < 0) return [];
  const n = Math.min(cnt.readUInt32LE(0), max);
  return Array.from({ length: n }, (_, i) => ids.readUInt32LE(i * 4));
}

/** Swaps the program of a link in place (atomic for tcx links). */
export function linkUpdate(linkFd: number, progFd: number, ctx: string): void {
  check(lib().bpf_link_update(linkFd, progFd, null), `replace program of ${ctx}`);
}

/** Detaches a link even if it is pinned elsewhere. */
export function linkDetach(linkFd: number, ctx: string): void {
  check(lib().bpf_link_detach(linkFd), `detach ${ctx}`);
}

/** Opens a pinned object (map, program, link) by path; the caller closes the fd. Returns -errno if absent. */
export function objGet(path: string): number {
  return lib().bpf_obj_get(path);
}

const BPF_PROG_TYPE_SCHED_CLS = 3;

/** Loads `r0 = 0; exit` as a SCHED_CLS program, for feature probes. Returns the fd or -errno. */
export function loadTrivialTcProg(): number {
  const insns = Buffer.from('b700000000000000' + '9500000000000000', 'hex');
  return lib().bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, 'neuv_probe', 'GPL', insns, 2, null);
}

/** libbpf_probe_bpf_helper for a SCHED_CLS program: true when the kernel has the helper. */
export function probeTcHelper(helperId: number): boolean {
  return lib().libbpf_probe_bpf_helper(BPF_PROG_TYPE_SCHED_CLS, helperId, null) === 1;
}

/** bpf_link_create with the raw result (fd or -errno), for probes. */
export function linkCreateRaw(progFd: number, ifindex: number, attachType: number): number {
  return lib().bpf_link_create(progFd, ifindex, attachType, null);
}

/** bpf_link_create: returns the link fd (closing it detaches unless pinned). */
export function linkCreate(progFd: number, ifindex: number, attachType: number, ctx: string): number {
  return check(lib().bpf_link_create(progFd, ifindex, attachType, null), `attach ${ctx} (tcx link)`);
}

