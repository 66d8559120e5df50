/**
 * Network namespaces by name or path: a name is `ip netns`'s, under
 * /var/run/netns; anything with a '/' is a path (/proc/PID/ns/net, a bind
 * mount). enterNetns moves this thread for good (the CLI's --netns);
 * NetnsScope switches in and back out around each call (the Datapath API's
 * `netns` option).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CLONE_NEWNET, netnsCookie, nsType, nsidOf, setns } from './bpf';
import { NotFoundError, UsageError, cutValue } from './errors';
import { fileKind, openPath, reopen } from './input';
import { log } from './log';

export const NETNS_DIR = '/var/run/netns';

/** The path of a netns given by name or path; a name must be a plain file name. */
export function netnsPath(nameOrPath: string): string {
  if (nameOrPath.includes('/')) return nameOrPath;
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(nameOrPath) || nameOrPath === '.' || nameOrPath === '..') {
    throw new UsageError(`network namespace name '${cutValue(nameOrPath)}' is not valid`);
  }
  return `${NETNS_DIR}/${nameOrPath}`;
}

/** statfs(2) f_type of nsfs, the file system of /proc/PID/ns/* and their bind mounts. */
const NSFS_MAGIC = 0x6e736673;
const NS_TYPES: Record<number, string> = { 0x20000: 'mount', 0x2000000: 'cgroup', 0x4000000: 'UTS', 0x8000000: 'IPC', 0x10000000: 'user', 0x20000000: 'PID', 0x80: 'time' };

/**
 * Opens a netns for setns (the caller closes the fd). The path must be a
 * network namespace: a regular file of nsfs (/proc/PID/ns/net, or a bind
 * mount of one as under /var/run/netns) whose type is CLONE_NEWNET. Anything
 * else (/etc/passwd, a directory, a FIFO, a mount namespace) is a usage
 * error before setns, never opened for real (openPath).
 */
function openNetns(nameOrPath: string): number {
  const p = netnsPath(nameOrPath);
  const label = `network namespace ${cutValue(nameOrPath)}`;
  const expected = 'expected /proc/PID/ns/net, or a name or bind mount under /var/run/netns';
  let o: { fd: number; st: fs.Stats };
  try {
    o = openPath(p, 'network namespace');
  } catch (e) {
    if (e instanceof NotFoundError) throw new NotFoundError(`${label} not found${p === nameOrPath ? "" : ` (${cutValue(p)})`}`);
    throw e;
  }
  try {
    if (!o.st.isFile()) throw new UsageError(`${label} is ${fileKind(o.st)}, not a network namespace (${expected})`);
    if (fs.statfsSync(`/proc/self/fd/${o.fd}`).type !== NSFS_MAGIC) throw new UsageError(`${label} is a file, not a network namespace (${expected})`);
    const fd = reopen(o, 'network namespace', p);
    const type = nsType(fd);
    if (type !== undefined && type !== CLONE_NEWNET) {
      fs.closeSync(fd);
      throw new UsageError(`${label} is a ${NS_TYPES[type] ?? 'another'} namespace, not a network namespace (${expected})`);
    }
    return fd;
  } finally {
    fs.closeSync(o.fd);
  }
}

/** Throws unless nameOrPath is a network namespace (a usage error for a file that is not one, see openNetns). */
export function checkNetns(nameOrPath: string): void {
  fs.closeSync(openNetns(nameOrPath));
}

/** Enters a network namespace by name or path, for this thread. */
export function enterNetns(nameOrPath: string): void {
  const fd = openNetns(nameOrPath);
  try {
    setns(fd, CLONE_NEWNET, nameOrPath);
  } finally {
    fs.closeSync(fd);
  }
  log('netns').debug({ netns: nameOrPath }, 'entered network namespace');
}

/** Runs synchronous code inside a network namespace, then puts this thread back. */
export class NetnsScope {
  private target = -1;
  private home = -1;
  constructor(readonly netns?: string) {
    if (!netns) return;
    this.target = openNetns(netns);
    this.home = fs.openSync('/proc/thread-self/ns/net', 'r');
  }
  run<T>(fn: () => T): T {
    if (this.target < 0) return fn();
    setns(this.target, CLONE_NEWNET, this.netns!);
    try {
      return fn();
    } finally {
      setns(this.home, CLONE_NEWNET, 'the original network namespace');
    }
  }
  close(): void {
    for (const fd of [this.target, this.home]) if (fd >= 0) fs.closeSync(fd);
    this.target = this.home = -1;
  }
}

/**
 * Whether the file at p is the nsfs file with this inode and device (and,
 * given a cookie other than 0, the netns with that cookie: nsfs inodes are
 * reused as soon as a netns is freed, cookies never are).
 */
export function isNetnsFile(p: string, ino: bigint, dev: bigint, cookie = 0n): boolean {
  try {
    const st = fs.statSync(p, { bigint: true });
    if (st.ino !== ino || st.dev !== dev) return false;
  } catch {
    return false;
  }
  return cookie === 0n || inNetnsAt(p, netnsCookie)?.value === cookie;
}

/**
 * A path naming the network namespace whose nsfs file has this inode and
 * device, if it still exists: a name under /var/run/netns or /run/netns
 * (ip netns and podman mount theirs there), else (with `procs`) a process
 * in it, /proc/PID/ns/net.
 */
export function netnsPathOf(ino: number | bigint, dev: number | bigint, procs = true, cookie = 0n): string | undefined {
  const i = BigInt(ino);
  const d = BigInt(dev);
  const isIt = (p: string) => isNetnsFile(p, i, d, cookie);
  for (const dir of [NETNS_DIR, '/run/netns']) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(dir).sort();
    } catch {
      continue;
    }
    for (const n of names) if (isIt(path.join(dir, n))) return path.join(dir, n);
  }
  if (!procs) return undefined;
  for (const p of fs.readdirSync('/proc')) {
    if (/^\d+$/.test(p) && isIt(`/proc/${p}/ns/net`)) return `/proc/${p}/ns/net`;
  }
  return undefined;
}

/**
 * Every network namespace of this host once (by nsfs device and inode), as a
 * path: those named under /var/run/netns and /run/netns first, then those of
 * processes (/proc/PID/ns/net).
 */
export function allNetnsPaths(): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  const add = (p: string) => {
    try {
      const st = fs.statSync(p);
      const k = `${st.dev}:${st.ino}`;
      if (seen.has(k)) return;
      seen.add(k);
      out.push(p);
    } catch {
      /* gone meanwhile */
    }
  };
  for (const dir of [NETNS_DIR, '/run/netns']) {
    try {
      for (const n of fs.readdirSync(dir).sort()) add(path.join(dir, n));
    } catch {
      /* no such directory */
    }
  }
  for (const p of fs.readdirSync('/proc')) if (/^\d+$/.test(p)) add(`/proc/${p}/ns/net`);
  return out;
}

/**
 * Runs synchronous code inside the network namespace at path p (this thread
 * enters it and comes back to the one it was in); undefined when p cannot be
 * entered (gone meanwhile, not a netns).
 */
export function inNetnsAt<T>(p: string, fn: () => T): { value: T } | undefined {
  let fd: number;
  try {
    fd = fs.openSync(p, 'r');
  } catch {
    return undefined;
  }
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  try {
    try {
      setns(fd, CLONE_NEWNET, p);
    } catch {
      return undefined;
    }
    try {
      return { value: fn() };
    } finally {
      setns(home, CLONE_NEWNET, 'the original network namespace');
    }
  } finally {
    fs.closeSync(fd);
    fs.closeSync(home);
  }
}

/**
 * The path of the network namespace that this thread's netns calls `nsid`
 * (a veth peer's link_netnsid in `ip link`), if it is one of allNetnsPaths().
 */
export function netnsPathOfNsid(nsid: number): string | undefined {
  for (const p of allNetnsPaths()) {
    let fd: number;
    try {
      fd = fs.openSync(p, 'r');
    } catch {
      continue;
    }
    try {
      if (nsidOf(fd) === nsid) return p;
    } catch {
      /* not a netns id of ours */
    } finally {
      fs.closeSync(fd);
    }
  }
  return undefined;
}
