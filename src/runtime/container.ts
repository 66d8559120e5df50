/**
 * A container as the OCI hook and the runtime watcher see it: its mode
 * (the annotation io.neuv-bpf.mode, else a default), its port, the record
 * kept per container between its start and its end, and the two steps both
 * take: intercept a container whose process exists (mode none, the host's
 * netns, no port: skipped), and release it by its record once it stopped.
 * One resolution and one record for both, so a container the hook
 * intercepted is one the watcher finds done.
 *
 * How the intercept or release is done is the caller's (the hook: through
 * the service or in its own process; the watcher: in the service's).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExitCode, NeuvError, NotFoundError, UsageError, cutValue } from '../errors';
import { InterceptResult, NsRunner, ReleaseResult } from '../intercept';
import { validateIfName } from '../link';
import { lockDirDir, readLockDirFile, withLock, writeLockDirFile } from '../lock';
import { log } from '../log';
import { MODES, ModeName } from '../pairs';
import { readOwnFile, writeOwnFileAtomic } from '../safefs';

/** The annotation naming a container's mode. */
export const MODE_ANNOTATION = 'io.neuv-bpf.mode';
/** The annotation naming the container's port to intercept (default eth0). */
export const PORT_ANNOTATION = 'io.neuv-bpf.port';

/** What a container can ask for: a datapath mode, or none (not intercepted). */
export const CONTAINER_MODES = [...MODES, 'none'] as const;
export type ContainerMode = (typeof CONTAINER_MODES)[number];

/** A container id: it names a file of ours, so letters, digits, '_', '.', '-' only (podman's and CRI-O's are 64 hex digits). */
export const CONTAINER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

const show = (v: unknown) => cutValue(JSON.stringify(v) ?? String(v), 60);

/** The mode a container asks for (its annotation), else the default; a UsageError for an unknown one. */
export function modeOfAnnotations(annotations: Record<string, string>, id: string, dflt: ContainerMode): ContainerMode {
  const a = annotations[MODE_ANNOTATION];
  if (a === undefined) return dflt;
  if (!(CONTAINER_MODES as readonly string[]).includes(a)) {
    throw new UsageError(`annotation ${MODE_ANNOTATION}=${show(a)} of container ${id}: expected ${CONTAINER_MODES.join(', ')}`);
  }
  return a as ContainerMode;
}

/** The port to intercept: the annotation's, else eth0. */
export function portOfAnnotations(annotations: Record<string, string>): string {
  const a = annotations[PORT_ANNOTATION];
  return a === undefined ? 'eth0' : validateIfName(a, `annotation ${PORT_ANNOTATION}`);
}

// ================================================================ the record

/** What is kept per container between its start and its end. */
export interface ContainerRecord {
  version: 1;
  id: string;
  /** The inode of the container's netns: its journal record's key. */
  netnsInode: number;
  port: string;
  mode: ModeName;
  /** Who intercepted it (absent in the hook's records before the watcher existed: the hook). */
  by?: 'hook' | 'watcher';
  time: string;
}

/** A pin root's directory of container records (/run/neuv-bpf/<pin root>.hooks, created on demand). */
function recordsDir(pinRoot: string, create: boolean): string | undefined {
  return lockDirDir(pinRoot, 'hooks', create);
}

export function readContainerRecord(pinRoot: string, id: string): ContainerRecord | undefined {
  const dir = recordsDir(pinRoot, false);
  const text = dir ? readOwnFile(path.join(dir, `${id}.json`), 'container record') : undefined;
  if (text === undefined) return undefined;
  try {
    const r = JSON.parse(text) as ContainerRecord;
    if (r.version === 1 && r.id === id && Number.isSafeInteger(r.netnsInode) && typeof r.port === 'string') return r;
  } catch {
    /* unreadable: as if none (show --check and repair go by the journal) */
  }
  log('container').warn({ id }, 'unreadable container record: ignored');
  return undefined;
}

export function writeContainerRecord(pinRoot: string, r: ContainerRecord): void {
  const p = path.join(recordsDir(pinRoot, true)!, `${r.id}.json`);
  writeOwnFileAtomic(p, `${p}.${process.pid}.tmp`, JSON.stringify(r), 'container record');
}

export function removeContainerRecord(pinRoot: string, id: string): void {
  const dir = recordsDir(pinRoot, false);
  if (dir) fs.rmSync(path.join(dir, `${id}.json`), { force: true });
}

/** The ids of every container record of a pin root. */
export function containerRecordIds(pinRoot: string): string[] {
  const dir = recordsDir(pinRoot, false);
  if (!dir) return [];
  return fs.readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, -5)).filter((id) => CONTAINER_ID_RE.test(id));
}

/** The fail-open count of a pin root: how many containers started unintercepted because the hook failed. */
export interface FailOpenCount {
  count: number;
  last?: { id: string; time: string; error: string };
}

/** /run/neuv-bpf/<pin root>.hook-fail-open: written by the hook, read by the service's metrics. */
export function readFailOpenCount(pinRoot: string): FailOpenCount {
  try {
    const v = JSON.parse(readLockDirFile(pinRoot, 'hook-fail-open') ?? '{}') as FailOpenCount;
    return Number.isSafeInteger(v.count) ? v : { count: 0 };
  } catch {
    return { count: 0 };
  }
}

/** Counts one fail-open (under its own lock: hooks run side by side); returns the count. */
export async function countFailOpen(pinRoot: string, id: string, error: string): Promise<number> {
  return withLock(pinRoot, () => {
    const n = readFailOpenCount(pinRoot).count + 1;
    writeLockDirFile(pinRoot, 'hook-fail-open', JSON.stringify({ count: n, last: { id, time: new Date().toISOString(), error } }));
    return n;
  }, 30000, 'hook-fail-open.lock');
}

// ================================================================ intercept and release

/** A container whose process exists and has not run its workload yet (hook), or runs (watcher). */
export interface ContainerStart {
  id: string;
  pid: number;
  annotations: Record<string, string>;
}

export interface ContainerOutcome<V> {
  action: 'intercepted' | 'released' | 'skipped' | 'done';
  mode?: ModeName;
  /** The netns inode and port (intercepted, done). */
  netnsInode?: number;
  port?: string;
  /** How the caller did it (the hook: 'service' or 'standalone'). */
  via?: V;
  /** One line saying what was done. */
  line: string;
  intercept?: InterceptResult;
  release?: ReleaseResult;
}

function inodeOf(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

/**
 * Intercepts a container in the mode it asks for: skipped when that is
 * none, when it shares the host's network namespace, or when it has no such
 * port. Its record is written before the intercept (a run killed half way
 * still leaves the way to its journal record) and removed when it fails.
 * `done`, when given, is asked first with the netns inode and port: a
 * container intercepted already (by the hook, say) is left as it is.
 */
export async function interceptContainer<V>(
  c: ContainerStart,
  o: { pinRoot: string; defaultMode: ContainerMode; by: 'hook' | 'watcher' },
  run: (r: { pid: number; port: string; mode: ModeName }) => Promise<{ r: InterceptResult; via: V }>,
  done?: (netnsInode: number, port: string) => boolean,
): Promise<ContainerOutcome<V>> {
  const mode = modeOfAnnotations(c.annotations, c.id, o.defaultMode);
  const port = portOfAnnotations(c.annotations);
  if (mode === 'none') return { action: 'skipped', line: `container ${c.id}: mode none, not intercepted` };
  const nsPath = `/proc/${c.pid}/ns/net`;
  const ino = inodeOf(nsPath);
  if (ino === undefined) throw new NotFoundError(`container ${c.id}: no process with pid ${c.pid} (its network namespace ${nsPath} is gone)`);
  if (ino === inodeOf('/proc/1/ns/net')) {
    return { action: 'skipped', line: `container ${c.id} shares the host's network namespace: nothing to intercept` };
  }
  if (done?.(ino, port)) return { action: 'done', netnsInode: ino, port, line: `container ${c.id}: ${port} intercepted already` };
  if (!(await new NsRunner(nsPath, `the netns of container ${c.id}`).link(port))) {
    return { action: 'skipped', line: `container ${c.id} has no ${port} (no network): nothing to intercept` };
  }
  writeContainerRecord(o.pinRoot, { version: 1, id: c.id, netnsInode: ino, port, mode, by: o.by, time: new Date().toISOString() });
  try {
    const { r, via } = await run({ pid: c.pid, port, mode });
    return {
      action: 'intercepted', mode, netnsInode: ino, port, via, intercept: r,
      line: `container ${c.id}: intercepted ${port} (pid ${c.pid}) in mode ${r.pair.mode}, pair id ${r.pair.id}${via ? ` (${String(via)})` : ''}`,
    };
  } catch (e) {
    removeContainerRecord(o.pinRoot, c.id); // rolled back: nothing to release
    throw e;
  }
}

/**
 * Releases a stopped container by its record (its netns may be gone: then
 * what is left of the interception is removed), and removes the record.
 * Released already (neuv-bpf release, repair, the hook or the watcher
 * first): skipped, nothing left.
 */
export async function releaseContainer<V>(
  pinRoot: string,
  id: string,
  run: (r: ContainerRecord) => Promise<{ r: ReleaseResult; via: V }>,
): Promise<ContainerOutcome<V>> {
  const rec = readContainerRecord(pinRoot, id);
  if (!rec) return { action: 'skipped', line: `container ${id}: not intercepted by the hook or the watcher, nothing to release` };
  let res: { r: ReleaseResult; via: V };
  try {
    res = await run(rec);
  } catch (e) {
    if (!(e instanceof NeuvError && e.code === ExitCode.NOT_FOUND && /no journal record/.test(e.message))) throw e;
    removeContainerRecord(pinRoot, id);
    return { action: 'skipped', line: `container ${id}: released already, nothing left` };
  }
  removeContainerRecord(pinRoot, id);
  const { r, via } = res;
  return {
    action: 'released', mode: rec.mode, netnsInode: rec.netnsInode, port: rec.port, via, release: r,
    line: `container ${id}: ${r.recovered ?? `released ${r.port}: ${r.vex} is ${r.port} again`}${via ? ` (${String(via)})` : ''}`,
  };
}
