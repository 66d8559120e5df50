/**
 * Two rtnetlink requests in the calling thread's network namespace,
 * in-process: RTM_GETLINK (a dump: every link's index, name, alias, master
 * and kind) and RTM_GETNSID (the id this netns gives another one, open at an
 * fd). They let a caller look at the links of many namespaces (setns, dump,
 * setns back) for the cost of a few system calls each, where `nsenter ... ip
 * link show` costs two processes per namespace: intercept's salvage looks
 * for its marker in every one of them for `show --check`
 * (src/intercept/salvage.ts), and the loop check finds the netns a veth's
 * peer is in (src/pairs/loops.ts).
 */
import { KernelError } from '../errors';
import { errno, lib } from './lib';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const RTM_NEWLINK = 16;
const RTM_GETLINK = 18;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLMSG_HDRLEN = 16;
const IFINFOMSG_LEN = 16;
const IFLA_IFNAME = 3;
const IFLA_IFALIAS = 20;
const IFLA_MASTER = 10;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const RTM_NEWNSID = 88;
const RTM_GETNSID = 90;
const NETNSA_NSID = 1;
const NETNSA_FD = 3;
const EINTR = 4;

export interface LinkAlias {
  ifindex: number;
  name: string;
  /** The link's alias (`ip link set ... alias`), '' when it has none. */
  alias: string;
  /** The ifindex of its master (a bridge, a bond), 0 when it has none. */
  master: number;
  /** Its kind (IFLA_INFO_KIND: veth, bridge...), '' for a device without one (lo, a physical NIC). */
  kind: string;
}

const align4 = (n: number) => (n + 3) & ~3;

/** Each attribute (type, value) of a message body from `start` to `end`. */
function* attrs(buf: Buffer, start: number, end: number): Generator<[number, Buffer]> {
  for (let a = start; a + 4 <= end; ) {
    const alen = buf.readUInt16LE(a);
    if (alen < 4 || a + alen > end) return;
    yield [buf.readUInt16LE(a + 2) & 0x3fff, buf.subarray(a + 4, a + alen)];
    a += align4(alen);
  }
}

const cstring = (v: Buffer) => {
  const z = v.indexOf(0);
  return v.subarray(0, z < 0 ? v.length : z).toString('utf8');
};

/**
 * Sends one request (header filled in here) and hands every message of the
 * answer to `each` (type, body offset, end) until NLMSG_DONE, or the first
 * message when the request is not a dump.
 */
function request(type: number, flags: number, body: Buffer, what: string, each: (buf: Buffer, type: number, off: number, end: number) => void): void {
  const l = lib();
  const fd = l.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw new KernelError(`socket(AF_NETLINK) for ${what}`, errno());
  try {
    const req = Buffer.concat([Buffer.alloc(NLMSG_HDRLEN), body]);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt16LE(type, 4);
    req.writeUInt16LE(NLM_F_REQUEST | flags, 6);
    req.writeUInt32LE(1, 8); // sequence number
    if (l.send(fd, req, req.length, 0) !== req.length) throw new KernelError(`send ${what}`, errno());
    const buf = Buffer.alloc(1 << 16);
    for (;;) {
      const n = l.recv(fd, buf, buf.length, 0);
      if (n < 0) {
        if (errno() === EINTR) continue;
        throw new KernelError(`receive ${what}`, errno());
      }
      for (let off = 0; off + NLMSG_HDRLEN <= n; ) {
        const len = buf.readUInt32LE(off);
        const t = buf.readUInt16LE(off + 4);
        if (len < NLMSG_HDRLEN || off + len > n) throw new KernelError(`parse ${what} (a message runs past the buffer)`, 74 /* EBADMSG */);
        if (t === NLMSG_DONE) return;
        if (t === NLMSG_ERROR) {
          const err = -buf.readInt32LE(off + NLMSG_HDRLEN);
          if (err !== 0) throw new KernelError(what, err);
        } else each(buf, t, off + NLMSG_HDRLEN, off + len);
        off += align4(len);
      }
      if (!(flags & NLM_F_DUMP)) return;
    }
  } finally {
    l.close(fd);
  }
}

/** Every link of the calling thread's network namespace with its alias and master (one RTM_GETLINK dump). */
export function linkAliases(): LinkAlias[] {
  const out: LinkAlias[] = [];
  request(RTM_GETLINK, NLM_F_DUMP, Buffer.alloc(IFINFOMSG_LEN), 'an RTM_GETLINK dump', (buf, type, off, end) => {
    if (type !== RTM_NEWLINK || end - off < IFINFOMSG_LEN) return;
    const link: LinkAlias = { ifindex: buf.readInt32LE(off + 4), name: '', alias: '', master: 0, kind: '' };
    for (const [t, v] of attrs(buf, off + IFINFOMSG_LEN, end)) {
      if (t === IFLA_IFNAME) link.name = cstring(v);
      else if (t === IFLA_IFALIAS) link.alias = cstring(v);
      else if (t === IFLA_MASTER && v.length >= 4) link.master = v.readUInt32LE(0);
      else if (t === IFLA_LINKINFO) for (const [k, kv] of attrs(v, 0, v.length)) if (k === IFLA_INFO_KIND) link.kind = cstring(kv);
    }
    out.push(link);
  });
  return out;
}

/**
 * The id the calling thread's network namespace gives the one open at
 * `nsFd` (what `ip link` shows as link_netnsid), or undefined when it gives
 * it none (RTM_GETNSID answers -1).
 */
export function nsidOf(nsFd: number): number | undefined {
  const body = Buffer.alloc(4 + 8); // struct rtgenmsg (1 byte, aligned to 4), NETNSA_FD
  body.writeUInt16LE(8, 4);
  body.writeUInt16LE(NETNSA_FD, 6);
  body.writeUInt32LE(nsFd, 8);
  let id: number | undefined;
  request(RTM_GETNSID, 0, body, 'an RTM_GETNSID request', (buf, type, off, end) => {
    if (type !== RTM_NEWNSID) return;
    for (const [t, v] of attrs(buf, off + 4, end)) if (t === NETNSA_NSID && v.length >= 4) id = v.readInt32LE(0);
  });
  return id === undefined || id < 0 ? undefined : id;
}
