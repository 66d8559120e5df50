/**
 * Paths we make, opened without following what a local user may have planted
 * there. /sys/fs/bpf is mode 1777: anyone can create a pin root there before
 * `load` does; and a lock directory someone made writable to others lets them
 * plant symbolic links where our locks, journal and state go.
 *
 * The rules (issue 25):
 *  - every directory above a path we use is a real directory (or a symbolic
 *    link owned by root) owned by root or by us, and not writable by others
 *    unless sticky (/sys/fs/bpf, /tmp): then no other user can change what
 *    the path names, so the path-based calls after the checks are as safe as
 *    openat(2) relative to a directory fd (Node's fs has no openat; this
 *    needs no FFI);
 *  - a directory of ours (pin root, lock directory, journal) is a real
 *    directory owned by root or by us with no group or other bits; a
 *    missing one is made 0700;
 *  - a file of ours is opened with O_NOFOLLOW (a symbolic link fails
 *    there), new temporaries with O_EXCL, and what was opened is checked
 *    with fstat: a regular file, owned by root or by us, not writable by
 *    others, one link;
 *  - anything else is refused with one line naming it and the fix (exit
 *    UNSAFE), and nothing is chmodded or chowned.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExitCode, NeuvError } from './errors';

/** A path we use exists but is not what we made: a symlink, another owner, writable by others. */
export class UnsafePathError extends NeuvError {
  constructor(message: string) {
    super(message, ExitCode.UNSAFE);
    this.name = 'UnsafePathError';
  }
}

const { O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_RDONLY, O_WRONLY } = fs.constants;

/** Whose files we trust: root's and our own (the effective uid). */
export function trustedUid(uid: number): boolean {
  return uid === 0 || uid === (process.geteuid?.() ?? 0);
}

function refuse(what: string, p: string, why: string, fix: string): never {
  throw new UnsafePathError(`${what} ${p} ${why}: not what neuv-bpf makes; ${fix}`);
}

function errnoOf(e: unknown): string {
  return (e as NodeJS.ErrnoException)?.code ?? '';
}

/** lstat, or undefined when nothing is there; any other failure is one line. */
export function lstatIfExists(p: string, what: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return undefined;
    throw new NeuvError(`${what} ${p}: ${errnoOf(e) || (e as Error).message}`, errnoOf(e) === 'EACCES' ? ExitCode.PERMISSION : ExitCode.USAGE);
  }
}

/** "is owned by uid 65534" etc. when st is not a safe directory above something of ours; undefined when it is. */
function unsafeAncestor(st: fs.Stats): string | undefined {
  if (!st.isDirectory()) return 'is not a directory';
  if (!trustedUid(st.uid)) return `is owned by uid ${st.uid}`;
  if (st.mode & 0o022 && !(st.mode & 0o1000)) return `is writable by others (mode ${(st.mode & 0o7777).toString(8)}) and not sticky`;
  return undefined;
}

/**
 * Checks every directory above p, as named and as resolved: a symbolic link
 * among them must be root's (or ours), every directory root's or ours and not
 * writable by others unless sticky. Stops at the first that does not exist.
 */
export function checkAncestors(p: string, what: string): void {
  const abs = path.resolve(p);
  const above = (q: string): string[] => {
    const out: string[] = [];
    for (let d = path.dirname(q); ; d = path.dirname(d)) {
      out.unshift(d);
      if (d === '/') return out;
    }
  };
  let deepest: string | undefined;
  for (const d of above(abs)) {
    const st = lstatIfExists(d, `${what} ${p}: directory`);
    if (!st) break;
    deepest = d;
    if (st.isSymbolicLink()) {
      if (!trustedUid(st.uid)) refuse(what, p, `is under ${d}, a symbolic link owned by uid ${st.uid}`, `remove ${d}, or choose another path`);
      continue;
    }
    const why = unsafeAncestor(st);
    if (why) refuse(what, p, `is under ${d}, which ${why}`, `fix ${d}, or choose another path`);
  }
  if (!deepest) return;
  // Where the links among them lead: each directory of the real path.
  let real: string;
  try {
    real = fs.realpathSync(deepest);
  } catch (e) {
    throw new NeuvError(`${what} ${p}: ${deepest}: ${errnoOf(e) || (e as Error).message}`, ExitCode.USAGE);
  }
  for (const d of [...above(real), real]) {
    if (d === real && real === '/') continue;
    const why = unsafeAncestor(fs.lstatSync(d));
    if (why) refuse(what, p, `is under ${d}, which ${why}`, `fix ${d}, or choose another path`);
  }
}

/**
 * Whether a directory of ours exists at p: undefined when nothing is there;
 * its Stats when it is a real directory owned by root or us with no group or
 * other bits; refused otherwise. `fix` says how to get rid of it.
 */
export function checkOwnDir(p: string, what: string, fix = `remove it (rm -r ${p}) and run again`): fs.Stats | undefined {
  const st = lstatIfExists(p, what);
  if (!st) return undefined;
  if (st.isSymbolicLink()) refuse(what, p, 'is a symbolic link', fix);
  if (!st.isDirectory()) refuse(what, p, 'is not a directory', fix);
  if (!trustedUid(st.uid)) refuse(what, p, `is owned by uid ${st.uid}`, fix);
  if (st.mode & 0o077) refuse(what, p, `has mode ${(st.mode & 0o7777).toString(8)}, not 700`, `chmod 700 ${p} if it is yours, or ${fix}`);
  return st;
}

/** Makes directory p 0700 unless it exists, in which case it must be ours (checkOwnDir); its ancestors are checked first. */
export function ensureOwnDir(p: string, what: string, fix?: string): void {
  checkAncestors(p, what);
  if (checkOwnDir(p, what, fix)) return;
  try {
    fs.mkdirSync(p, { mode: 0o700 });
  } catch (e) {
    if (errnoOf(e) !== 'EEXIST') throw new NeuvError(`cannot create ${what} ${p}: ${errnoOf(e) || (e as Error).message}`, ExitCode.FAILURE);
  }
  // Ours now, or made by someone else in between: checked either way.
  checkOwnDir(p, what, fix);
}

/** Checks an open file: a regular file, owned by root or us, not writable by others, one link. Closes fd and throws otherwise. */
function checkOwnFd(fd: number, p: string, what: string): void {
  const st = fs.fstatSync(fd);
  const fix = `remove it (rm ${p}) and run again`;
  let why: string | undefined;
  if (!st.isFile()) why = 'is not a regular file';
  else if (!trustedUid(st.uid)) why = `is owned by uid ${st.uid}`;
  else if (st.mode & 0o022) why = `is writable by others (mode ${(st.mode & 0o777).toString(8)})`;
  else if (st.nlink !== 1) why = `has ${st.nlink} hard links`;
  if (why) {
    fs.closeSync(fd);
    refuse(what, p, why, fix);
  }
}

/**
 * Opens a file of ours (flags as for open(2); with O_CREAT it is made 0600)
 * without following a symbolic link, and checks what was opened. Returns the
 * fd, or undefined when it does not exist and O_CREAT was not asked.
 */
export function openOwnFile(p: string, flags: number, what: string): number | undefined {
  let fd: number;
  try {
    fd = fs.openSync(p, flags | O_NOFOLLOW | O_NONBLOCK, 0o600);
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'ENOENT' && !(flags & O_CREAT)) return undefined;
    if (code === 'ELOOP') refuse(what, p, 'is a symbolic link', `remove it (rm ${p}) and run again`);
    if (code === 'EEXIST') throw e;
    throw new NeuvError(`cannot open ${what} ${p}: ${code || (e as Error).message}`, code === 'EACCES' ? ExitCode.PERMISSION : ExitCode.FAILURE);
  }
  checkOwnFd(fd, p, what);
  return fd;
}

/** The content of a file of ours, or undefined when there is none. */
export function readOwnFile(p: string, what: string): string | undefined {
  const fd = openOwnFile(p, O_RDONLY, what);
  if (fd === undefined) return undefined;
  try {
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Replaces a file of ours atomically: data goes to a new temporary `tmp`
 * (O_EXCL, O_NOFOLLOW, 0600; a regular file of ours left there by a killed
 * write is removed first, anything else refused), renamed over p. An existing
 * p must be a file of ours too (a symbolic link there is refused, not
 * replaced).
 */
export function writeOwnFileAtomic(p: string, tmp: string, data: string, what: string): void {
  const existing = openOwnFile(p, O_RDONLY, what);
  if (existing !== undefined) fs.closeSync(existing);
  let fd: number | undefined;
  for (let tries = 0; fd === undefined; tries++) {
    try {
      fd = openOwnFile(tmp, O_WRONLY | O_CREAT | O_EXCL, `temporary ${what}`);
    } catch (e) {
      if (errnoOf(e) !== 'EEXIST' || tries > 0) {
        if (errnoOf(e) === 'EEXIST') throw new NeuvError(`cannot create temporary ${what} ${tmp}: it is back after its removal`, ExitCode.CONFLICT);
        throw e;
      }
      // Left by a write killed before its rename: removed if it is ours, refused if it is anything else.
      const old = openOwnFile(tmp, O_RDONLY, `temporary ${what}`);
      if (old !== undefined) fs.closeSync(old);
      fs.rmSync(tmp, { force: true });
    }
  }
  try {
    try {
      fs.writeSync(fd, data);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, p);
  } catch (e) {
    fs.rmSync(tmp, { force: true }); // ours: made with O_EXCL above
    throw e;
  }
}
