/**
 * What the runtime watcher asks of a runtime (RuntimeClient), and podman's
 * CLI as one: `podman events --format json`
 * followed as a child process, `podman ps -a` and `podman container
 * inspect`, every call an argument array (the global options the service
 * was given first: --root, --runroot, ... for a podman with private
 * storage). What podman prints is read as untrusted: bounded lines, ids,
 * pids and annotations checked, anything else skipped (logged).
 */
import { spawn } from 'node:child_process';
import { cutValue } from '../errors';
import { run } from '../link';
import { log } from '../log';
import { CONTAINER_ID_RE } from './container';

/** A container event: start, died, cleanup, remove (others are read and ignored by the watcher). */
export interface RuntimeEvent {
  id: string;
  name: string;
  status: string;
  /** When the runtime says it happened (ms since the epoch). */
  time: number;
}

/** A container as inspect shows it. */
export interface RuntimeContainer {
  id: string;
  name: string;
  /** Its process (0 when it runs none). */
  pid: number;
  running: boolean;
  annotations: Record<string, string>;
}

/** What the watcher asks of a runtime: podman's CLI (PodmanCli), the Docker Engine API (DockerApi, ./docker.ts). */
export interface RuntimeClient {
  /** Every container the runtime knows, id -> state (created, running, exited, ...). */
  states(): Promise<Map<string, string>>;
  /** The containers with these ids the runtime knows (those it does not know are left out). */
  inspect(ids: string[]): Promise<RuntimeContainer[]>;
  /** Follows the container events from `since` (ms since the epoch), then as they come; onEnd: the stream ended or could not start. */
  follow(since: number, onEvent: (e: RuntimeEvent) => void, onEnd: (why: string) => void): { stop(): void };
}

/** The longest event line read (podman's and docker's are a few hundred bytes); longer ones are skipped. */
export const MAX_LINE = 64 << 10;

/**
 * A stream's data handler that cuts it into lines and hands each event parsed
 * from a non-empty line to onEvent; an unfinished line past MAX_LINE is
 * skipped (logged with `what`).
 */
export function eventLines(what: string, parse: (line: string) => RuntimeEvent | undefined, onEvent: (e: RuntimeEvent) => void): (d: Buffer) => void {
  let buf = '';
  return (d) => {
    buf += d.toString('utf8');
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const e = line.trim() ? parse(line) : undefined;
      if (e) onEvent(e);
    }
    if (buf.length > MAX_LINE) {
      log('runtime').warn({ bytes: buf.length }, `${what}: a line too long, skipped`);
      buf = '';
    }
  };
}

export const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** One line of `podman events --format json`, or undefined when it is not a container event we can use. */
export function parseEvent(line: string): RuntimeEvent | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!isObj(v) || v.Type !== 'container' || typeof v.ID !== 'string' || !CONTAINER_ID_RE.test(v.ID) || typeof v.Status !== 'string') return undefined;
  const t = typeof v.Time === 'string' ? Date.parse(v.Time) : NaN;
  return { id: v.ID, name: typeof v.Name === 'string' ? cutValue(v.Name, 128) : '', status: v.Status, time: Number.isFinite(t) ? t : Date.now() };
}

/** The containers of `podman container inspect` JSON that parse; the others are skipped. */
export function parseInspect(text: string): RuntimeContainer[] {
  let v: unknown;
  try {
    v = JSON.parse(text.trim() || '[]');
  } catch {
    return [];
  }
  return parseInspected(v);
}

/**
 * The containers of an inspect's array that parse (podman's, and the
 * Docker API's: a name with a leading '/', annotations under HostConfig).
 */
export function parseInspected(v: unknown): RuntimeContainer[] {
  const out: RuntimeContainer[] = [];
  for (const c of Array.isArray(v) ? v : []) {
    if (!isObj(c) || typeof c.Id !== 'string' || !CONTAINER_ID_RE.test(c.Id) || !isObj(c.State)) continue;
    const pid = c.State.Pid;
    if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid < 0 || pid > 4194304) continue;
    const annotations: Record<string, string> = {};
    for (const a of [isObj(c.Config) && c.Config.Annotations, isObj(c.HostConfig) && c.HostConfig.Annotations]) {
      if (isObj(a)) for (const [k, val] of Object.entries(a)) if (typeof val === 'string') annotations[k] = val;
    }
    const name = typeof c.Name === 'string' ? cutValue(c.Name.replace(/^\//, ''), 128) : '';
    out.push({ id: c.Id, name, pid, running: c.State.Running === true && pid > 0, annotations });
  }
  return out;
}

export class PodmanCli implements RuntimeClient {
  constructor(
    /** Global options before every command (--root DIR, --runroot DIR, ...). */
    readonly args: readonly string[] = [],
    readonly bin = 'podman',
  ) {}

  /** Every container podman knows, id -> state (created, running, exited, ...). */
  async states(): Promise<Map<string, string>> {
    const r = await run(this.bin, [...this.args, 'ps', '-a', '--no-trunc', '--format', 'json']);
    let v: unknown;
    try {
      v = JSON.parse(r.stdout.trim() || '[]');
    } catch {
      throw new Error('podman ps printed no JSON');
    }
    const out = new Map<string, string>();
    for (const c of Array.isArray(v) ? v : []) {
      if (isObj(c) && typeof c.Id === 'string' && CONTAINER_ID_RE.test(c.Id) && typeof c.State === 'string') out.set(c.Id, c.State);
    }
    return out;
  }

  /** The containers with these ids that podman knows (one call; ids it does not know are left out). */
  async inspect(ids: string[]): Promise<RuntimeContainer[]> {
    if (ids.length === 0) return [];
    // Exit 125 when one of them is unknown: the JSON still holds the others.
    const r = await run(this.bin, [...this.args, 'container', 'inspect', ...ids], { allowFail: true });
    return parseInspect(r.stdout);
  }

  /**
   * Follows `podman events` (container events from `since`, ms since the
   * epoch, then as they come). onEnd: the child exited (or could not start).
   */
  follow(since: number, onEvent: (e: RuntimeEvent) => void, onEnd: (why: string) => void): { stop(): void } {
    const child = spawn(
      this.bin,
      [...this.args, 'events', '--format', 'json', '--filter', 'type=container', '--since', new Date(since).toISOString()],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    child.stdout!.on('data', eventLines('podman events', parseEvent, onEvent));
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString('utf8')).slice(-2000)));
    let ended = false;
    const end = (why: string) => {
      if (!ended) onEnd(why);
      ended = true;
    };
    child.on('error', (e: NodeJS.ErrnoException) => end(e.code === 'ENOENT' ? `${this.bin} not found` : e.message));
    child.on('close', (code, signal) => end(`podman events exited (${signal ?? `code ${code}`})${err.trim() ? `: ${err.trim().split('\n').pop()}` : ''}`));
    return { stop: () => child.kill('SIGTERM') };
  }
}
