/** libc: setns, the netns cookie, interface names and indexes, flock. */
import { KernelError } from '../errors';
import koffi from 'koffi';
import { cstr, errno, lib } from './lib';

// ---------------------------------------------------------------- libc

export const CLONE_NEWNET = 0x40000000;

/** Moves the calling (main) thread into the network namespace open at fd. */
export function setns(fd: number, nstype: number, ctx: string): void {
  if (lib().setns(fd, nstype) < 0) throw new KernelError(`enter network namespace ${ctx}`, errno());
}

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_NETNS_COOKIE = 71;

/**
 * The cookie of the calling thread's network namespace (SO_NETNS_COOKIE on a
 * throwaway socket; Linux >= 5.14): unique for the life of the system, never
 * reused like an nsfs inode may be. 0n when the kernel has none.
 */
export function netnsCookie(): bigint {
  const l = lib();
  const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new KernelError('socket(AF_UNIX) for the netns cookie', errno());
  try {
    const v = Buffer.alloc(8);
    const len = Buffer.alloc(4);
    len.writeUInt32LE(8);
    return l.getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, v, len) < 0 ? 0n : v.readBigUInt64LE(0);
  } finally {
    l.close(fd);
  }
}

/** Interface index in the current netns, or 0 if there is no such interface. */
export function ifNameToIndex(name: string): number {
  return lib().if_nametoindex(name);
}

/** Interface name in the current netns, or undefined. */
export function ifIndexToName(index: number): string | undefined {
  const buf = Buffer.alloc(16);
  const p = lib().if_indextoname(index, buf);
  if (!p) return undefined;
  return cstr(buf, 0, 16);
}

export const LOCK_SH = 1;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

/** flock(2); returns false on EWOULDBLOCK with LOCK_NB. */
export function flock(fd: number, op: number, ctx: string): boolean {
  if (lib().flock(fd, op) < 0) {
    const e = errno();
    if (e === 11) return false;
    throw new KernelError(`lock ${ctx}`, e);
  }
  return true;
}


const SYS_IOCTL: Partial<Record<string, number>> = { x64: 16, arm64: 29 };
/** ioctl NS_GET_NSTYPE (linux/nsfs.h, Linux 4.11). */
const NS_GET_NSTYPE = 0xb703;

/** The CLONE_NEW* type of the namespace open at fd, or undefined when the kernel cannot tell (not a namespace, or too old). */
export function nsType(fd: number): number | undefined {
  const nr = SYS_IOCTL[process.arch];
  if (nr === undefined) return undefined;
  const r = Number(lib().syscall(nr, 'int', fd, 'unsigned long', NS_GET_NSTYPE));
  return r < 0 ? undefined : r;
}

/** SIOCETHTOOL (linux/sockios.h): ethtool's ioctl on an AF_INET socket. */
const SIOCETHTOOL = 0x8946;
/** ETHTOOL_SRXCSUM and ETHTOOL_STXCSUM (linux/ethtool.h): the features `ethtool -K DEV rx|tx on|off` sets. */
export const ETHTOOL_SRXCSUM = 0x15;
export const ETHTOOL_STXCSUM = 0x17;

/**
 * One ethtool set command taking a struct ethtool_value (cmd, data) on dev,
 * through the socket fd (an AF_INET socket: its netns is the one dev is in).
 * ETHTOOL_STXCSUM 0 clears every TX checksum feature, as `ethtool -K dev tx
 * off` does; the kernel turns off what depends on them (TSO...).
 */
export function ethtoolSetValue(fd: number, dev: string, cmd: number, value: number, ctx: string): void {
  const nr = SYS_IOCTL[process.arch];
  if (nr === undefined) throw new KernelError(`${ctx}: no ioctl number for ${process.arch}`, 38 /* ENOSYS */);
  const ev = Buffer.alloc(8);
  ev.writeUInt32LE(cmd, 0);
  ev.writeUInt32LE(value >>> 0, 4);
  const ifr = Buffer.alloc(40); // struct ifreq: ifr_name[16], then ifr_data
  ifr.write(dev, 0, 15, 'utf8');
  ifr.writeBigUInt64LE(BigInt(koffi.address(ev)), 16);
  const r = Number(lib().syscall(nr, 'int', fd, 'unsigned long', SIOCETHTOOL, 'void *', ifr));
  if (r < 0) throw new KernelError(ctx, errno());
}

/** An AF_INET datagram socket in the calling thread's netns, for ioctls on its devices (ethtoolSetValue). */
export function inetSocket(ctx: string): number {
  const fd = lib().socket(2 /* AF_INET */, 2 /* SOCK_DGRAM */ | 0o2000000 /* SOCK_CLOEXEC */, 0);
  if (fd < 0) throw new KernelError(`socket(AF_INET) for ${ctx}`, errno());
  return fd;
}
