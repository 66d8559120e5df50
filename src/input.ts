/**
 * Files a user names (--file, --from, --obj, --netns, a pid file): opened
 * for what they are before anything reads them. A path is first opened with
 * O_PATH, which opens nothing (a FIFO without a writer does not block, a
 * device's open has no side effect), and its fstat decides; only then is
 * the same file (through /proc/self/fd, so a rename in between changes
 * nothing) opened for reading, and read in bounded chunks.
 *
 * Symbolic links are followed: the user chose the path (unlike the paths we
 * create, which are opened with O_NOFOLLOW, src/lock.ts), and what it leads
 * to must still be a regular file.
 */
import * as fs from 'node:fs';
import { ExitCode, NeuvError, NotFoundError, UsageError, cutValue, errnoName, errnoSentence } from './errors';

/** Linux's O_PATH (x86_64, arm64; node:fs has no constant for it). */
const O_PATH = 0o10000000;
/** The most --file, --from and stdin may hold. */
export const MAX_INPUT_BYTES = 64 << 20;
const CHUNK = 1 << 20;

/** What a file is, for messages ("a FIFO"). */
export function fileKind(st: fs.Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** "--file /x/y" for messages, the path cut. */
const named = (what: string, p: string) => `${what} ${cutValue(p)}`;

/** An open(2) failure on a named path as one of our errors. */
function openError(e: unknown, what: string, p: string): NeuvError {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  const errno = Math.abs((e as NodeJS.ErrnoException).errno ?? 0);
  const why = errno ? `${errnoSentence(errno)} (${errnoName(errno)})` : code || 'cannot open';
  if (code === 'ENOENT' || code === 'ENOTDIR') return new NotFoundError(`${named(what, p)} not found: ${why}`);
  if (code === 'EACCES' || code === 'EPERM') return new NeuvError(`${named(what, p)}: ${why}`, ExitCode.PERMISSION);
  return new UsageError(`${named(what, p)} cannot be opened: ${why}`);
}

/** Opens p with O_PATH (nothing is opened for real) and fstats it; the caller closes fd. */
export function openPath(p: string, what: string): { fd: number; st: fs.Stats } {
  if (p === '') throw new UsageError(`${what} is empty: give a path`);
  if (p.includes('\0')) throw new UsageError(`${what} ${JSON.stringify(cutValue(p))} contains a NUL byte`);
  let fd: number;
  try {
    fd = fs.openSync(p, O_PATH);
  } catch (e) {
    throw openError(e, what, p);
  }
  try {
    return { fd, st: fs.fstatSync(fd) };
  } catch (e) {
    fs.closeSync(fd);
    throw openError(e, what, p);
  }
}

/** Opens the file an O_PATH fd names for reading (non-blocking, never a controlling tty), checking it is still that file. */
export function reopen(pathFd: { fd: number; st: fs.Stats }, what: string, p: string): number {
  let fd: number;
  try {
    fd = fs.openSync(`/proc/self/fd/${pathFd.fd}`, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (e) {
    throw openError(e, what, p);
  }
  const st = fs.fstatSync(fd);
  if (st.ino !== pathFd.st.ino || st.dev !== pathFd.st.dev) {
    fs.closeSync(fd);
    throw new UsageError(`${named(what, p)} changed while it was opened`);
  }
  return fd;
}

/** Opens p, refusing anything but a regular file; the fd of an O_PATH open, with its fstat (the caller closes it). */
export function openRegularFile(p: string, what: string): { fd: number; st: fs.Stats } {
  const o = openPath(p, what);
  if (!o.st.isFile()) {
    fs.closeSync(o.fd);
    throw new UsageError(`${named(what, p)} is ${fileKind(o.st)}, not a regular file`);
  }
  return o;
}

const tooLarge = (label: string, limit: number) => new UsageError(`${label} is larger than ${limit >= 1 << 20 ? `${limit / (1 << 20)} MiB` : `${limit} bytes`}, the most an input may hold`);

/** Reads fd to its end in chunks, refusing more than limit bytes; waits out EAGAIN (a non-blocking stdin). */
export function readBounded(fd: number, limit: number, label: string): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  const buf = Buffer.alloc(Math.min(CHUNK, limit + 1));
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (;;) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, 0, buf.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        Atomics.wait(nap, 0, 0, 10);
        continue;
      }
      if (code === 'EINTR') continue;
      const errno = Math.abs((e as NodeJS.ErrnoException).errno ?? 0);
      throw new UsageError(`${label} cannot be read: ${errno ? `${errnoSentence(errno)} (${errnoName(errno)})` : code}`);
    }
    if (n === 0) break;
    total += n;
    if (total > limit) throw tooLarge(label, limit);
    parts.push(Buffer.from(buf.subarray(0, n)));
  }
  return Buffer.concat(parts, total);
}

/**
 * The text of an input the user names: '-' for stdin (any kind but a
 * directory, e.g. a pipe), else a regular file. At most `limit` bytes;
 * anything else is refused with one line naming `what` (the option).
 */
export function readInputFile(file: string, what: string, limit = MAX_INPUT_BYTES): string {
  if (file === '-') {
    const st = fs.fstatSync(0);
    if (st.isDirectory()) throw new UsageError(`${what} -: stdin is a directory`);
    return readBounded(0, limit, `${what} - (stdin)`).toString('utf8');
  }
  const label = named(what, file);
  const o = openRegularFile(file, what);
  try {
    if (o.st.size > limit) throw tooLarge(label, limit);
    const fd = reopen(o, what, file);
    try {
      return readBounded(fd, limit, label).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    fs.closeSync(o.fd);
  }
}
