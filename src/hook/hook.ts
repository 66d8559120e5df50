/**
 * `neuv-bpf oci-hook`: an OCI runtime hook (docs/containers.md). At
 * createRuntime or prestart the container's network namespace is set up
 * and its process has not run yet: the hook intercepts its port then, in
 * the mode its annotation asks (io.neuv-bpf.mode), so the workload's first
 * frame already goes through the datapath. At poststop it releases the
 * container, or removes what is left of the interception once the runtime
 * has torn the netns down (podman does, before poststop).
 *
 * Through the service (`neuv-bpf serve`) when one listens on the pin root's
 * socket, in this process otherwise; the same locks either way.
 *
 * Per container a record under /run/neuv-bpf/<pin root>.hooks/<id>.json,
 * written before the intercept: poststop gets no pid and no netns, only the
 * container's id, and finds the interception's journal record through it.
 *
 * A failure at createRuntime: fail-closed (the default) exits with the
 * error's code, so the runtime does not start the container; fail-open logs
 * it, counts it (/run/neuv-bpf/<pin root>.hook-fail-open) and exits 0: the
 * container starts unintercepted.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ExitCode, NeuvError, NotFoundError, errorReport } from '../errors';
import { InterceptResult, NsRunner, ReleaseResult, intercept, releaseRecorded } from '../intercept';
import { lockDirDir, readLockDirFile, withLock, writeLockDirFile } from '../lock';
import { log } from '../log';
import { ModeName } from '../pairs';
import { readOwnFile, writeOwnFileAtomic } from '../safefs';
import { ServiceClient, ServiceError, defaultSocketPath } from '../service';
import { HookMode, OciState, modeOf, portOf, stageOf } from './state';

export interface HookOptions {
  pinRoot: string;
  /** The mode of a container without the annotation ('none': not intercepted). */
  defaultMode: HookMode;
  /** A failed intercept lets the container start (logged and counted) instead of failing it. */
  failOpen: boolean;
  /** The service's socket (default: the pin root's). */
  socket?: string;
  /** Never through the service. */
  standalone?: boolean;
}

export interface HookResult {
  stage: 'create' | 'poststop';
  id: string;
  action: 'intercepted' | 'released' | 'skipped' | 'failed-open';
  mode?: ModeName;
  via?: 'service' | 'standalone';
  /** One line saying what was done. */
  line: string;
  /** fail-open: the error the container started despite. */
  error?: string;
  intercept?: InterceptResult;
  release?: ReleaseResult;
}

/** What the hook keeps per container between createRuntime and poststop. */
export interface HookRecord {
  version: 1;
  id: string;
  /** The inode of the container's netns: its journal record's key. */
  netnsInode: number;
  port: string;
  mode: ModeName;
  time: string;
}

/** A pin root's directory of hook records (created on demand). */
function recordsDir(pinRoot: string, create: boolean): string | undefined {
  return lockDirDir(pinRoot, 'hooks', create);
}

export function readHookRecord(pinRoot: string, id: string): HookRecord | undefined {
  const dir = recordsDir(pinRoot, false);
  const text = dir ? readOwnFile(path.join(dir, `${id}.json`), 'hook record') : undefined;
  if (text === undefined) return undefined;
  try {
    const r = JSON.parse(text) as HookRecord;
    if (r.version === 1 && r.id === id && Number.isSafeInteger(r.netnsInode) && typeof r.port === 'string') return r;
  } catch {
    /* unreadable: as if none (show --check and repair go by the journal) */
  }
  log('hook').warn({ id }, 'unreadable hook record: ignored');
  return undefined;
}

function writeHookRecord(pinRoot: string, r: HookRecord): void {
  const p = path.join(recordsDir(pinRoot, true)!, `${r.id}.json`);
  writeOwnFileAtomic(p, `${p}.${process.pid}.tmp`, JSON.stringify(r), 'hook record');
}

function removeHookRecord(pinRoot: string, id: string): void {
  const dir = recordsDir(pinRoot, false);
  if (dir) fs.rmSync(path.join(dir, `${id}.json`), { force: true });
}

/** The fail-open count of a pin root: how many containers started unintercepted because the hook failed. */
export interface FailOpenCount {
  count: number;
  last?: { id: string; time: string; error: string };
}

export function readFailOpenCount(pinRoot: string): FailOpenCount {
  try {
    const v = JSON.parse(readLockDirFile(pinRoot, 'hook-fail-open') ?? '{}') as FailOpenCount;
    return Number.isSafeInteger(v.count) ? v : { count: 0 };
  } catch {
    return { count: 0 };
  }
}

async function countFailOpen(pinRoot: string, id: string, error: string): Promise<number> {
  return withLock(pinRoot, () => {
    const n = readFailOpenCount(pinRoot).count + 1;
    writeLockDirFile(pinRoot, 'hook-fail-open', JSON.stringify({ count: n, last: { id, time: new Date().toISOString(), error } }));
    return n;
  }, 30000, 'hook-fail-open.lock');
}

/**
 * Runs fn through the service when one listens on the socket, else in
 * this process. A call the service got and refused is not retried here.
 */
async function viaService<T>(
  o: HookOptions, svc: (c: ServiceClient) => Promise<T>, local: () => Promise<T>,
): Promise<{ r: T; via: 'service' | 'standalone' }> {
  const socket = o.socket ?? defaultSocketPath(o.pinRoot);
  if (!o.standalone && fs.existsSync(socket)) {
    const c = new ServiceClient({ socket });
    try {
      return { r: await svc(c), via: 'service' };
    } catch (e) {
      if (!(e instanceof ServiceError && e.unreachable)) throw e;
      log('hook').info({ socket }, 'no service listens on the socket: standalone');
    } finally {
      c.close();
    }
  }
  return { r: await local(), via: 'standalone' };
}

function inodeOf(p: string): number | undefined {
  try {
    return fs.statSync(p).ino;
  } catch {
    return undefined;
  }
}

async function create(s: OciState, o: HookOptions): Promise<HookResult> {
  const lg = log('hook');
  const mode = modeOf(s, o.defaultMode);
  const port = portOf(s);
  const pid = s.pid!;
  const base = { stage: 'create' as const, id: s.id };
  if (mode === 'none') return { ...base, action: 'skipped', line: `container ${s.id}: mode none, not intercepted` };
  const nsPath = `/proc/${pid}/ns/net`;
  const ino = inodeOf(nsPath);
  if (ino === undefined) throw new NotFoundError(`container ${s.id}: no process with pid ${pid} (its network namespace ${nsPath} is gone)`);
  if (ino === inodeOf('/proc/1/ns/net')) {
    return { ...base, action: 'skipped', line: `container ${s.id} shares the host's network namespace: nothing to intercept` };
  }
  if (!(await new NsRunner(nsPath, `the netns of container ${s.id}`).link(port))) {
    return { ...base, action: 'skipped', line: `container ${s.id} has no ${port} (no network): nothing to intercept` };
  }
  // Before the intercept: a hook killed half way still leaves poststop the way to its journal record.
  writeHookRecord(o.pinRoot, { version: 1, id: s.id, netnsInode: ino, port, mode, time: new Date().toISOString() });
  try {
    const { r, via } = await viaService(
      o,
      (c) => c.intercept({ pid, port }, { mode }),
      () => intercept({ pinRoot: o.pinRoot, target: { pid }, port, mode }),
    );
    lg.info({ id: s.id, pid, mode, via, vex: r.vex, pairId: r.pair.id }, 'intercepted before the container runs');
    return { ...base, action: 'intercepted', mode, via, intercept: r, line: `container ${s.id}: intercepted ${port} (pid ${pid}) in mode ${r.pair.mode}, pair id ${r.pair.id} (${via})` };
  } catch (e) {
    removeHookRecord(o.pinRoot, s.id); // rolled back: nothing for poststop to do
    throw e;
  }
}

async function poststop(s: OciState, o: HookOptions): Promise<HookResult> {
  const base = { stage: 'poststop' as const, id: s.id };
  const rec = readHookRecord(o.pinRoot, s.id);
  if (!rec) return { ...base, action: 'skipped', line: `container ${s.id}: not intercepted by the hook, nothing to release` };
  let res: { r: ReleaseResult; via: 'service' | 'standalone' };
  try {
    res = await viaService(
      o,
      (c) => c.release({ netnsInode: rec.netnsInode, port: rec.port }),
      () => releaseRecorded({ pinRoot: o.pinRoot, netnsInode: rec.netnsInode, port: rec.port }),
    );
  } catch (e) {
    if (!(e instanceof NeuvError && e.code === ExitCode.NOT_FOUND && /no journal record/.test(e.message))) throw e;
    // Released already (neuv-bpf release, repair): nothing left.
    removeHookRecord(o.pinRoot, s.id);
    return { ...base, action: 'skipped', line: `container ${s.id}: released already, nothing left` };
  }
  removeHookRecord(o.pinRoot, s.id);
  const { r, via } = res;
  log('hook').info({ id: s.id, via, vex: r.vex }, 'released');
  return {
    ...base, action: 'released', mode: rec.mode, via, release: r,
    line: `container ${s.id}: ${r.recovered ?? `released ${r.port}: ${r.vex} is ${r.port} again`} (${via})`,
  };
}

/**
 * Runs the hook for one state. Failures at createRuntime follow the
 * policy (see the file comment); at poststop they are thrown (the runtime
 * logs them; the container is stopped either way).
 */
export async function runHook(s: OciState, o: HookOptions): Promise<HookResult> {
  const stage = stageOf(s);
  if (stage === 'poststop') return poststop(s, o);
  try {
    return await create(s, o);
  } catch (e) {
    if (!o.failOpen) throw e;
    return failedOpen(s.id, e, o);
  }
}

/** fail-open: the failure logged and counted; the container starts unintercepted. */
export async function failedOpen(id: string, e: unknown, o: Pick<HookOptions, 'pinRoot'>): Promise<HookResult> {
  const error = errorReport(e).error;
  let n: number | undefined;
  try {
    n = await countFailOpen(o.pinRoot, id, error);
  } catch (ce) {
    log('hook').error({ err: (ce as Error).message }, 'could not count the fail-open');
  }
  log('hook').warn({ id, error, failOpen: n }, 'intercept failed; fail-open: the container starts unintercepted');
  return { stage: 'create', id, action: 'failed-open', error, line: `container ${id}: NOT intercepted (fail-open${n ? `, ${n} so far` : ''}): ${error}` };
}
