/**
 * The FFI (the only folder in src/ that touches koffi): libbpf and a few libc
 * calls as typed functions and small classes that own file descriptors.
 *
 *   lib.ts      loading libbpf/libc, every binding and struct, libbpf's log
 *   map.ts      MapFd, map info, update flags, the RCU grace period after deletes
 *   prog.ts     ProgFd, program info, pinning, BPF_PROG_TEST_RUN
 *   btf.ts      struct/enum/DATASEC layouts from an object's BTF
 *   object.ts   BpfObject: open, configure, load, pin
 *   tc.ts       clsact qdisc and cls_bpf filters
 *   tcx.ts      tcx links and feature probes
 *   ringbuf.ts  RingBuffer
 *   libc.ts     setns, interface names/indexes, flock, ethtool's ioctl
 *   pidfd.ts    PidFd: a process's exit as an event (pidfd_open + poll on a worker thread)
 *   rtnl.ts     Rtnl (a NETLINK_ROUTE socket: a request, a dump, a batch); every link of the current netns (one RTM_GETLINK dump)
 *
 * libbpf 1.x convention: functions returning int give a negative errno;
 * functions returning a pointer give NULL and set errno.
 */
export { closeFd, libbpfVersion, possibleCpus, init, sleepSync, _internal } from './lib';
export * from './map';
export * from './prog';
export type { BtfMember, BtfStruct, BtfEnum } from './btf';
export * from './object';
export * from './tc';
export * from './tcx';
export * from './ringbuf';
export * from './libc';
export * from './pidfd';
export * from './rtnl';
