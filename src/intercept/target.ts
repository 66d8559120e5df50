/**
 * Which container intercept and release act on (a pid or a netns), and the
 * names they give its ports: vex<tag>-<port> and vin<tag>-<port>.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { NotFoundError, UsageError } from '../errors';
import { validateIfName } from '../link';
import { formatMac } from '../mac';
import { checkNetns, netnsPath } from '../netns';

/** Which container: by a process in it, or by its netns (a path, or a name under /var/run/netns). */
export type Target = { pid: number } | { netns: string };

export interface ResolvedTarget {
  /** What to call it in messages: "pid 1234" or "netns /var/run/netns/x". */
  desc: string;
  pid?: number;
  /** A path to the container's network namespace. */
  path: string;
  /** The netns inode (st_ino of path). */
  ino: number;
  /** Candidate tags, the preferred one first (intercept uses it; release tries all). */
  tags: string[];
}

/** The bit of a netns inode that differs between namespaces (proc inums start at 0xf0000000). */
export function inodeTag(ino: number): string {
  return 'n' + (ino & 0xffffff).toString(16);
}

export function resolveTarget(t: Target): ResolvedTarget {
  let path: string;
  let desc: string;
  let pid: number | undefined;
  if ('pid' in t) {
    if (!Number.isInteger(t.pid) || t.pid <= 0) throw new UsageError(`--pid ${t.pid} is not a process id`);
    pid = t.pid;
    path = `/proc/${pid}/ns/net`;
    desc = `pid ${pid}`;
    if (!fs.existsSync(`/proc/${pid}`)) throw new NotFoundError(`no process with pid ${pid}`);
  } else {
    const n = t.netns;
    if (typeof n !== 'string' || n.length === 0) throw new UsageError('--container-netns is empty');
    path = netnsPath(n);
    desc = `netns ${path}`;
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw new NotFoundError(`network namespace of ${desc} not found (${path})`);
  }
  checkNetns(path); // a FIFO, /etc/passwd, a mount namespace: refused here, never opened
  const tags = pid !== undefined ? [pid.toString(16), inodeTag(st.ino)] : [inodeTag(st.ino)];
  return { desc, pid, path, ino: st.ino, tags };
}

/** vex<tag>-<port> and vin<tag>-<port>; a UsageError when that exceeds 15 bytes. */
export function portNames(tag: string, port: string): { vex: string; vin: string } {
  const vex = `vex${tag}-${port}`;
  const vin = `vin${tag}-${port}`;
  if (Buffer.byteLength(vex) > 15) {
    throw new UsageError(`port name '${port}' is too long: ${vex} would exceed the 15 bytes of an interface name`);
  }
  return { vex: validateIfName(vex), vin: validateIfName(vin) };
}

/** A random locally administered unicast MAC, for the original port while it is renamed. */
export function tempMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfc) | 0x02;
  return formatMac(b);
}
