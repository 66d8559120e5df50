/**
 * The OCI runtime state a hook reads on stdin (runtime-spec's "State":
 * ociVersion, id, status, pid, bundle, annotations), validated as hostile
 * input: bounded in size, every field we read checked for its type and
 * range, the rest ignored. Pure: no kernel, no files.
 */
import { UsageError, cutValue } from '../errors';
import { PID, parseInteger } from '../numbers';
import { CONTAINER_ID_RE, CONTAINER_MODES, ContainerMode, modeOfAnnotations, portOfAnnotations } from '../runtime';

export { MODE_ANNOTATION, PORT_ANNOTATION } from '../runtime';

/** The most the state may hold: annotations are free-form (Kubernetes bounds a pod's to 256 KiB). */
export const MAX_STATE_BYTES = 1 << 20;

/** What a container can ask for: a datapath mode, or none (not intercepted). */
export const HOOK_MODES = CONTAINER_MODES;
export type HookMode = ContainerMode;

/** runtime-spec's container statuses. */
export const STATUSES = ['creating', 'created', 'running', 'stopped', 'paused'] as const;
export type Status = (typeof STATUSES)[number];

export interface OciState {
  ociVersion: string;
  id: string;
  status: Status;
  /** The container's process (runc init before it execs the workload); absent or 0 once stopped. */
  pid?: number;
  bundle?: string;
  annotations: Record<string, string>;
}

const VERSION_RE = /^[0-9A-Za-z.+-]{1,64}$/;
const MAX_PATH = 4096;

const what = 'the OCI state on stdin';
const show = (v: unknown) => cutValue(JSON.stringify(v) ?? String(v), 60);

/** Parses and validates the state JSON; a UsageError (one line) for anything else. */
export function parseOciState(text: string): OciState {
  if (text.trim() === '') throw new UsageError(`${what} is empty (the container runtime writes it there when it runs the hook)`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    // SyntaxError, or a RangeError from nesting too deep: either way not a state.
    throw new UsageError(`${what} is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new UsageError(`${what} is not a JSON object`);
  const o = v as Record<string, unknown>;
  if (typeof o.ociVersion !== 'string' || !VERSION_RE.test(o.ociVersion)) throw new UsageError(`${what}: ociVersion ${show(o.ociVersion)} is not a version`);
  if (typeof o.id !== 'string' || !CONTAINER_ID_RE.test(o.id)) {
    throw new UsageError(`${what}: id ${show(o.id)} is not a container id (1 to 128 letters, digits, '_', '.', '-')`);
  }
  if (typeof o.status !== 'string' || !(STATUSES as readonly string[]).includes(o.status)) {
    throw new UsageError(`${what}: status ${show(o.status)} (expected ${STATUSES.join(', ')})`);
  }
  const status = o.status as Status;
  let pid: number | undefined;
  // Stopped: the runtime may leave it out, or write 0 (no process any more).
  if (o.pid !== undefined && !(status === 'stopped' && o.pid === 0)) {
    if (typeof o.pid !== 'number') throw new UsageError(`${what}: pid ${show(o.pid)} is not a process id`);
    pid = parseInteger(o.pid, `${what}: pid`, PID);
  }
  if (o.bundle !== undefined && (typeof o.bundle !== 'string' || !o.bundle.startsWith('/') || o.bundle.length > MAX_PATH || o.bundle.includes('\0'))) {
    throw new UsageError(`${what}: bundle ${show(o.bundle)} is not an absolute path`);
  }
  const annotations: Record<string, string> = {};
  if (o.annotations !== undefined && o.annotations !== null) {
    if (typeof o.annotations !== 'object' || Array.isArray(o.annotations)) throw new UsageError(`${what}: annotations is not an object`);
    for (const [k, val] of Object.entries(o.annotations)) {
      if (typeof val !== 'string') throw new UsageError(`${what}: annotation ${show(k)} is ${show(val)}, not a string`);
      annotations[k] = val;
    }
  }
  return { ociVersion: o.ociVersion, id: o.id, status, pid, bundle: o.bundle as string | undefined, annotations };
}

/** The mode a container asks for (its annotation), else the default; a UsageError for an unknown one. */
export function modeOf(s: OciState, dflt: HookMode): HookMode {
  return modeOfAnnotations(s.annotations, s.id, dflt);
}

/** The port to intercept: the annotation's, else eth0. */
export function portOf(s: OciState): string {
  return portOfAnnotations(s.annotations);
}

/**
 * The hook's stage from the state: creating/created is createRuntime or
 * prestart (the container's process has not run yet), stopped is poststop.
 * Any other (a hook configured for startContainer/poststart) is refused:
 * by then the workload runs, which is what the hook is there to prevent.
 */
export function stageOf(s: OciState): 'create' | 'poststop' {
  if (s.status === 'creating' || s.status === 'created') {
    if (s.pid === undefined) throw new UsageError(`${what}: no pid at status ${s.status} (the hook runs at createRuntime or prestart)`);
    return 'create';
  }
  if (s.status === 'stopped') return 'poststop';
  throw new UsageError(
    `${what}: status ${s.status}: oci-hook runs at createRuntime or prestart (status creating) and poststop (status stopped), before the workload runs and after it stopped`,
  );
}
