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
 * socket, in this process otherwise; the same locks either way. In this
 * process with a DP given (--dp, --dp-register), the container is
 * registered with it before it runs, as the service registers it (one
 * DpRegistrar, src/service/endpoints.ts), and removed from it at poststop.
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
import { errorReport } from '../errors';
import type { DpProcess } from '../dp/watch';
import { InterceptResult, ReleaseResult, releaseRecorded } from '../intercept';
import { log } from '../log';
import { ModeName } from '../pairs';
import { countFailOpen, interceptContainer, releaseContainer } from '../runtime';
import { ServiceClient, ServiceError, defaultSocketPath } from '../service/client';
import { DpRegistrar, EndpointPolicy, interceptRegistered, released } from '../service/endpoints';
import { HookMode, OciState, stageOf } from './state';

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
  /**
   * Standalone, register the container with this DP as the service does
   * (serve --dp-register): `locate` says where it is now, `where` names it
   * in errors, `policy` is the node's policy (undefined: none sent).
   */
  dp?: { locate: () => DpProcess | undefined; where: string; policy: EndpointPolicy | undefined };
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

/** Runs fn with the registrar of the DP the hook was given (--dp), if any; closed after. */
async function withRegistrar<T>(o: HookOptions, fn: (reg: DpRegistrar | undefined) => Promise<T>): Promise<T> {
  const dp = o.dp;
  const reg = dp && new DpRegistrar(() => dp.locate() ?? `no DP at ${dp.where}`, dp.policy);
  try {
    return await fn(reg);
  } finally {
    reg?.close();
  }
}

async function create(s: OciState, o: HookOptions): Promise<HookResult> {
  const out = await interceptContainer(
    { id: s.id, pid: s.pid!, annotations: s.annotations },
    { pinRoot: o.pinRoot, defaultMode: o.defaultMode, by: 'hook' },
    ({ pid, port, mode }) => viaService(
      o,
      (c) => c.intercept({ pid, port }, { mode }),
      // Standalone: registered with the DP before the container runs, as the service does.
      () => withRegistrar(o, (reg) => interceptRegistered(reg, { pinRoot: o.pinRoot, target: { pid }, port, mode })),
    ),
  );
  if (out.intercept) log('hook').info({ id: s.id, pid: s.pid, mode: out.mode, via: out.via, vex: out.intercept.vex, pairId: out.intercept.pair.id }, 'intercepted before the container runs');
  return { stage: 'create', id: s.id, ...out, action: out.action === 'done' ? 'skipped' : out.action };
}

async function poststop(s: OciState, o: HookOptions): Promise<HookResult> {
  const out = await releaseContainer(o.pinRoot, s.id, (rec) => viaService(
    o,
    (c) => c.release({ netnsInode: rec.netnsInode, port: rec.port }),
    () => withRegistrar(o, async (reg) => released(reg, await releaseRecorded({ pinRoot: o.pinRoot, netnsInode: rec.netnsInode, port: rec.port }))),
  ));
  if (out.release) log('hook').info({ id: s.id, via: out.via, vex: out.release.vex }, 'released');
  return { stage: 'poststop', id: s.id, ...out, action: out.action === 'done' ? 'skipped' : out.action };
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
