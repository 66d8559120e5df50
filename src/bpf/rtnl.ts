/**
 * rtnetlink in the calling thread's network namespace, in-process: Rtnl (a
 * socket for one request, a dump, or a batch of messages sent together:
 * tc.ts's clsact qdiscs and filters of many ports), RTM_GETLINK (a dump:
 * every link's index, name, alias, master, kind, MTU and veth peer; pair
 * add's view of the enforcer netns, src/link.ts's linkDump) and RTM_GETNSID (the id this netns gives another one, open at an
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
export const RTM_NEWLINK = 16;
export const RTM_GETLINK = 18;
const NLM_F_REQUEST = 1;
export const NLM_F_ACK = 4;
export const NLM_F_DUMP = 0x300;
const NLA_F_NESTED = 0x8000;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLMSG_HDRLEN = 16;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const EAGAIN = 11;
const ETIMEDOUT = 110;
/**
 * How long one receive waits for the kernel's answer. The kernel answers
 * every request we send (each asks for an acknowledgement or is a GET), so
 * this only bounds a bug of ours (a request that gets no answer, as a
 * create's NLM_F_EXCL once taken for a dump did): an error then, not a
 * process, or the service, blocked for ever.
 */
export const RECV_TIMEOUT_MS = 60_000;
export const IFINFOMSG_LEN = 16;
export const IFLA_IFNAME = 3;
export const IFLA_IFALIAS = 20;
const IFLA_MASTER = 10;
export const IFLA_LINKINFO = 18;
export const IFLA_INFO_KIND = 1;
export const IFLA_MTU = 4;
export const IFLA_LINK = 5;
export const IFLA_EXT_MASK = 29;
export const IFLA_LINK_NETNSID = 37;
export const RTEXT_FILTER_SKIP_STATS = 1 << 3;
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
  mtu: number;
  /** IFLA_LINK: a veth's peer's ifindex (in linkNetnsid's netns when that is set), 0 when none. */
  link: number;
  /** IFLA_LINK_NETNSID: the id this netns gives the netns of the peer, when that is another one. */
  linkNetnsid?: number;
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

/** The NUL-terminated string at buf[from, to). */
function cstringAt(buf: Buffer, from: number, to: number): string {
  const z = buf.indexOf(0, from);
  return buf.toString('utf8', from, z < 0 || z > to ? to : z);
}

const cstring = (v: Buffer) => {
  const z = v.indexOf(0);
  return v.subarray(0, z < 0 ? v.length : z).toString('utf8');
};

/**
 * A NETLINK_ROUTE socket in the calling thread's network namespace, for one
 * request or many: `request` (one, or a dump), `batch` (many messages
 * written together, the least system calls: a few hundred per send, and a
 * receive only for the errors and each send's last acknowledgement).
 */
export class Rtnl {
  private fd: number;
  private seq = 0;
  private readonly buf = Buffer.alloc(1 << 16);
  private recvTimeoutMs = RECV_TIMEOUT_MS;

  private constructor(fd: number) {
    this.fd = fd;
  }

  static open(what: string, recvTimeoutMs = RECV_TIMEOUT_MS): Rtnl {
    const l = lib();
    const fd = l.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) throw new KernelError(`socket(AF_NETLINK) for ${what}`, errno());
    const tv = Buffer.alloc(16); // struct timeval
    tv.writeBigInt64LE(BigInt(Math.floor(recvTimeoutMs / 1000)), 0);
    tv.writeBigInt64LE(BigInt((recvTimeoutMs % 1000) * 1000), 8);
    if (l.setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, tv, tv.length) < 0) {
      const e = errno();
      l.close(fd);
      throw new KernelError(`set a receive timeout on the netlink socket for ${what}`, e);
    }
    const r = new Rtnl(fd);
    r.recvTimeoutMs = recvTimeoutMs;
    return r;
  }

  /** Opens a socket, runs fn with it, closes it. */
  static with<T>(what: string, fn: (r: Rtnl) => T): T {
    const r = Rtnl.open(what);
    try {
      return fn(r);
    } finally {
      r.close();
    }
  }

  close(): void {
    if (this.fd >= 0) lib().close(this.fd);
    this.fd = -1;
  }

  private message(m: RtnlMessage, flags: number): Buffer {
    const req = Buffer.alloc(NLMSG_HDRLEN + align4(m.body.length));
    this.header(req, 0, m, flags);
    return req;
  }

  /** Writes m (header and body) into buf at off; returns its length, padded. */
  private header(buf: Buffer, off: number, m: RtnlMessage, flags: number): number {
    buf.writeUInt32LE(NLMSG_HDRLEN + m.body.length, off);
    buf.writeUInt16LE(m.type, off + 4);
    buf.writeUInt16LE(NLM_F_REQUEST | m.flags | flags, off + 6);
    buf.writeUInt32LE(++this.seq, off + 8);
    m.body.copy(buf, off + NLMSG_HDRLEN);
    return NLMSG_HDRLEN + align4(m.body.length);
  }

  private send(req: Buffer, what: string): void {
    const n = lib().send(this.fd, req, req.length, 0);
    if (n !== req.length) throw new KernelError(`send ${what}`, n < 0 ? errno() : 90 /* EMSGSIZE */);
  }

  /** Receives one datagram: every message in it, as (type, seq, offset of the body, end). */
  private receive(what: string): Array<{ type: number; seq: number; off: number; end: number }> {
    const l = lib();
    for (;;) {
      const n = l.recv(this.fd, this.buf, this.buf.length, 0);
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        if (e === EAGAIN) throw new KernelError(`receive ${what}: no answer from the kernel in ${this.recvTimeoutMs} ms`, ETIMEDOUT);
        throw new KernelError(`receive ${what}`, e);
      }
      const out: Array<{ type: number; seq: number; off: number; end: number }> = [];
      for (let off = 0; off + NLMSG_HDRLEN <= n; ) {
        const len = this.buf.readUInt32LE(off);
        if (len < NLMSG_HDRLEN || off + len > n) throw new KernelError(`parse ${what} (a message runs past the buffer)`, 74 /* EBADMSG */);
        out.push({ type: this.buf.readUInt16LE(off + 4), seq: this.buf.readUInt32LE(off + 8), off: off + NLMSG_HDRLEN, end: off + len });
        off += align4(len);
      }
      return out;
    }
  }

  /**
   * Sends one request and hands every message of the answer to `each`
   * (buffer, type, body offset, end) until NLMSG_DONE, or the first message
   * when the request is not a dump; an error answer throws.
   */
  request(type: number, flags: number, body: Buffer, what: string, each: (buf: Buffer, type: number, off: number, end: number) => void): void {
    this.send(this.message({ type, flags, body }, 0), what);
    // Both bits: NLM_F_EXCL (a create's) is NLM_F_MATCH's value, half of NLM_F_DUMP.
    const dump = (flags & NLM_F_DUMP) === NLM_F_DUMP;
    for (;;) {
      for (const m of this.receive(what)) {
        if (m.type === NLMSG_DONE) return;
        if (m.type === NLMSG_ERROR) {
          const err = -this.buf.readInt32LE(m.off);
          if (err !== 0) throw new KernelError(what, err);
          if (!dump) return;
        } else each(this.buf, m.type, m.off, m.end);
      }
      if (!dump) return;
    }
  }

  /**
   * Sends every message (none a dump) and returns each one's errno (0: done),
   * in order. The kernel handles the messages of one send one after the
   * other and answers only the failures, plus the acknowledgement asked of
   * each send's last message, which says every message before it is done.
   * A failure does not stop the others: the caller undoes what it must.
   * `each` gets every answer that is not an acknowledgement (a GET's reply),
   * with the index of the message it answers.
   */
  batch(msgs: RtnlMessage[], what: string, each?: (i: number, buf: Buffer, type: number, off: number, end: number) => void): number[] {
    const res = new Array<number>(msgs.length).fill(0);
    for (let i = 0; i < msgs.length; i += BATCH_MESSAGES) {
      const chunk = msgs.slice(i, i + BATCH_MESSAGES);
      const first = this.seq + 1;
      const req = Buffer.alloc(chunk.reduce((n, m) => n + NLMSG_HDRLEN + align4(m.body.length), 0));
      let off = 0;
      chunk.forEach((m, k) => (off += this.header(req, off, m, k === chunk.length - 1 ? NLM_F_ACK : 0)));
      this.send(req, what);
      const last = this.seq;
      for (let done = false; !done; ) {
        for (const m of this.receive(what)) {
          if (m.seq < first || m.seq > last) continue;
          if (m.type !== NLMSG_ERROR) {
            each?.(i + m.seq - first, this.buf, m.type, m.off, m.end);
            continue;
          }
          const err = -this.buf.readInt32LE(m.off);
          if (err !== 0) res[i + m.seq - first] = err;
          if (m.seq === last) done = true;
        }
      }
    }
    return res;
  }
}

/** One message of a batch: its type, its flags besides NLM_F_REQUEST (NLM_F_CREATE...), its body. */
export interface RtnlMessage {
  type: number;
  flags: number;
  body: Buffer;
}

/**
 * Messages per send in Rtnl.batch: each failure is answered with a
 * datagram (about 1 KiB of receive buffer each), and the default receive
 * buffer (208 KiB) must hold the answers of a send whose every message
 * fails, or the kernel drops answers (ENOBUFS).
 */
const BATCH_MESSAGES = 128;

/** A netlink attribute (type, value), padded to 4 bytes. */
export function nlAttr(type: number, value: Buffer): Buffer {
  const a = Buffer.alloc(align4(4 + value.length));
  a.writeUInt16LE(4 + value.length, 0);
  a.writeUInt16LE(type, 2);
  value.copy(a, 4);
  return a;
}

export function nlU32(type: number, v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return nlAttr(type, b);
}

export function nlString(type: number, s: string): Buffer {
  return nlAttr(type, Buffer.from(`${s}\0`, 'utf8'));
}

export function nlNested(type: number, ...attrs: Buffer[]): Buffer {
  return nlAttr(type | NLA_F_NESTED, Buffer.concat(attrs));
}

export { attrs as nlAttrs, cstring as nlCString };

function request(type: number, flags: number, body: Buffer, what: string, each: (buf: Buffer, type: number, off: number, end: number) => void): void {
  Rtnl.with(what, (r) => r.request(type, flags, body, what, each));
}

/** Every link of the calling thread's network namespace with its alias and master (one RTM_GETLINK dump). */
export function linkAliases(): LinkAlias[] {
  const out: LinkAlias[] = [];
  // No counters: the dump is about a third lighter without them (RTEXT_FILTER_SKIP_STATS, Linux >= 5.3; older kernels ignore the bit).
  const body = Buffer.concat([Buffer.alloc(IFINFOMSG_LEN), nlU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)]);
  request(RTM_GETLINK, NLM_F_DUMP, body, 'an RTM_GETLINK dump', (buf, type, off, end) => {
    if (type !== RTM_NEWLINK || end - off < IFINFOMSG_LEN) return;
    const link: LinkAlias = { ifindex: buf.readInt32LE(off + 4), name: '', alias: '', master: 0, kind: '', mtu: 0, link: 0 };
    // A plain walk over the attributes (thousands of links: no generator, no copies).
    for (let a = off + IFINFOMSG_LEN; a + 4 <= end; ) {
      const alen = buf.readUInt16LE(a);
      if (alen < 4 || a + alen > end) break;
      const t = buf.readUInt16LE(a + 2) & 0x3fff;
      const v = a + 4;
      const u32 = alen >= 8 ? buf.readUInt32LE(v) : 0;
      if (t === IFLA_IFNAME) link.name = cstringAt(buf, v, a + alen);
      else if (t === IFLA_IFALIAS) link.alias = cstringAt(buf, v, a + alen);
      else if (t === IFLA_MASTER) link.master = u32;
      else if (t === IFLA_MTU) link.mtu = u32;
      else if (t === IFLA_LINK) link.link = u32;
      else if (t === IFLA_LINK_NETNSID && alen >= 8) link.linkNetnsid = buf.readInt32LE(v);
      else if (t === IFLA_LINKINFO) for (const [k, kv] of attrs(buf, v, a + alen)) if (k === IFLA_INFO_KIND) link.kind = cstring(kv);
      a += align4(alen);
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
