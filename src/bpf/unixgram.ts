/**
 * Unix datagram sockets (AF_UNIX, SOCK_DGRAM), which Node's dgram module does
 * not offer: the transport of NeuVector's DP control channel. A few libc
 * calls through koffi (socket, bind, sendto, recvfrom, close): in the FFI
 * folder with the other libc calls, a module of its own because it is a
 * different concern.
 *
 * Receiving never blocks (MSG_DONTWAIT): recv() polls from the event loop
 * (1 ms steps), so a client needs no worker thread. Sending blocks while the
 * receiver's queue is full (a burst of requests: a unix datagram queue holds
 * net.unix.max_dgram_qlen, 10 by default), for at most sendTimeoutMs
 * (SO_SNDTIMEO), then fails with EAGAIN: a hung DP never hangs the caller.
 */
import * as fs from 'node:fs';
import koffi from 'koffi';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const MSG_DONTWAIT = 0x40;
const SOL_SOCKET = 1;
const SO_SNDTIMEO = 21;
const SOCK_CLOEXEC = 0o2000000;
const EAGAIN = 11;
const EINTR = 4;
/** sizeof(struct sockaddr_un): sa_family_t + 108 bytes of path. */
const SUN_LEN = 110;
const SUN_PATH_MAX = 107;

interface Libc {
  socket: (domain: number, type: number, proto: number) => number;
  bind: (fd: number, addr: Buffer, len: number) => number;
  sendto: (fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, alen: number) => number;
  recvfrom: (fd: number, buf: Buffer, len: number, flags: number, addr: null, alen: null) => number;
  close: (fd: number) => number;
  setsockopt: (fd: number, level: number, name: number, val: Buffer, len: number) => number;
}

let libc: Libc | undefined;
function c(): Libc {
  if (libc) return libc;
  const h = koffi.load('libc.so.6');
  const f = (sig: string) => h.func(sig) as never;
  libc = {
    socket: f('int socket(int domain, int type, int protocol)'),
    bind: f('int bind(int fd, const void *addr, uint32_t len)'),
    sendto: f('long sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t alen)'),
    recvfrom: f('long recvfrom(int fd, _Out_ void *buf, size_t len, int flags, void *addr, void *alen)'),
    close: f('int close(int fd)'),
    setsockopt: f('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)'),
  };
  return libc;
}

/** A struct sockaddr_un for a filesystem path; throws when the path does not fit. */
export function sockaddrUn(path: string): { addr: Buffer; len: number } {
  const p = Buffer.from(path, 'utf8');
  if (p.length === 0 || p.length > SUN_PATH_MAX || p.includes(0)) {
    throw new Error(`unix socket path '${path}' is empty, too long (${p.length} > ${SUN_PATH_MAX} bytes) or has a NUL`);
  }
  const addr = Buffer.alloc(SUN_LEN);
  addr.writeUInt16LE(AF_UNIX, 0);
  p.copy(addr, 2);
  return { addr, len: 2 + p.length + 1 };
}

export class UnixgramError extends Error {
  constructor(
    msg: string,
    readonly errno: number,
  ) {
    super(errno ? `${msg}: errno ${errno}` : msg);
  }
}

/** A bound unix datagram socket. */
export class UnixDgram {
  private closed = false;

  private constructor(
    private readonly fd: number,
    /** The path it is bound to (removed by close()). */
    readonly path: string,
  ) {}

  /** Creates a socket bound to `path` (an existing file there is replaced). */
  static bind(path: string, sendTimeoutMs = 1000): UnixDgram {
    const { addr, len } = sockaddrUn(path);
    const l = c();
    const fd = l.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new UnixgramError('socket(AF_UNIX, SOCK_DGRAM)', koffi.errno());
    const tv = Buffer.alloc(16); // struct timeval
    tv.writeBigInt64LE(BigInt(Math.floor(sendTimeoutMs / 1000)), 0);
    tv.writeBigInt64LE(BigInt((sendTimeoutMs % 1000) * 1000), 8);
    if (l.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, tv, 16) < 0) {
      const e = koffi.errno();
      l.close(fd);
      throw new UnixgramError('setsockopt(SO_SNDTIMEO)', e);
    }
    fs.rmSync(path, { force: true });
    if (l.bind(fd, addr, len) < 0) {
      const e = koffi.errno();
      l.close(fd);
      throw new UnixgramError(`bind ${path}`, e);
    }
    return new UnixDgram(fd, path);
  }

  /** Sends one datagram to the socket at `to`; throws with errno (ENOENT, ECONNREFUSED: nobody there). */
  send(to: string, data: Buffer): void {
    const { addr, len } = sockaddrUn(to);
    for (;;) {
      const n = c().sendto(this.fd, data, data.length, 0, addr, len);
      if (n >= 0) return;
      const e = koffi.errno();
      if (e === EAGAIN) throw new UnixgramError(`send to ${to}: its queue stayed full (a hung receiver?)`, e);
      if (e !== EINTR) throw new UnixgramError(`send to ${to}`, e);
    }
  }

  /** One datagram if one is queued, else undefined. */
  tryRecv(max = 65536): Buffer | undefined {
    const buf = Buffer.alloc(max);
    const n = c().recvfrom(this.fd, buf, max, MSG_DONTWAIT, null, null);
    if (n >= 0) return buf.subarray(0, n);
    const e = koffi.errno();
    if (e === EAGAIN || e === EINTR) return undefined;
    throw new UnixgramError('recv', e);
  }

  /** The next datagram, or undefined after timeoutMs. */
  async recv(timeoutMs: number): Promise<Buffer | undefined> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      if (this.closed) return undefined;
      const d = this.tryRecv();
      if (d) return d;
      if (Date.now() >= end) return undefined;
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Drops whatever is queued (stale replies). */
  drain(): number {
    let n = 0;
    while (this.tryRecv()) n++;
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    c().close(this.fd);
    fs.rmSync(this.path, { force: true });
  }
}
