/**
 * The Docker Engine API as the runtime watcher reads it (serve --runtime
 * docker): HTTP/1.1 on a unix socket, GET only. dockerd serves it on
 * /var/run/docker.sock; podman serves the same API (its Docker-compatible
 * one, beside its own "libpod" API) with `podman system service`, at
 * /run/podman/podman.sock. One client for both:
 *
 *  - the events: GET /events?since=...&filters={"type":["container"]}, a
 *    response that never ends (chunked), one JSON object a line; docker's
 *    `die` and `destroy` read as the watcher's `died` and `remove` (podman's
 *    compatible stream says `cleanup` and `remove` too);
 *  - the containers: GET /containers/json?all=true (id, state);
 *  - one container: GET /containers/{id}/json (State.Pid, State.Running,
 *    HostConfig.Annotations: docker's `--annotation`, API 1.43). podman's
 *    compatible inspect leaves the annotations out, so on a server whose
 *    /version names the Podman Engine the container is read from its libpod
 *    API instead (GET /v4.0.0/libpod/containers/{id}/json, as `podman
 *    container inspect` prints it).
 *
 * Labels are not read: an image's labels are its author's, and a mode taken
 * from one would let an image ask not to be intercepted. What the server
 * sends is read as untrusted: bounded bodies and lines, every field checked
 * (parseInspect), anything else skipped.
 */
import * as http from 'node:http';
import { cutValue } from '../errors';
import { CONTAINER_ID_RE } from './container';
import { RuntimeClient, RuntimeContainer, RuntimeEvent, eventLines, isObj, parseInspected } from './podman';

/** dockerd's socket (podman's: /run/podman/podman.sock). */
export const DOCKER_SOCKET = '/var/run/docker.sock';

/** The longest answer read (a container list of a busy node is a few MB). */
const MAX_BODY = 32 << 20;
/** How long a call (not the event stream) may take. */
const CALL_TIMEOUT_MS = 30000;
/** Containers inspected at once at a resync. */
const INSPECT_AT_ONCE = 8;

/** The Docker API's actions, as the watcher names them (src/runtime/watcher.ts). */
const ACTIONS: Record<string, string> = { start: 'start', die: 'died', died: 'died', cleanup: 'cleanup', destroy: 'remove', remove: 'remove' };

/** One line of GET /events, or undefined when it is not a container event we can use. */
export function parseApiEvent(line: string): RuntimeEvent | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!isObj(v) || v.Type !== 'container') return undefined;
  const actor = isObj(v.Actor) ? v.Actor : {};
  const id = typeof v.id === 'string' ? v.id : actor.ID;
  const action = typeof v.Action === 'string' ? v.Action : v.status;
  if (typeof id !== 'string' || !CONTAINER_ID_RE.test(id) || typeof action !== 'string') return undefined;
  const attrs = isObj(actor.Attributes) ? actor.Attributes : {};
  const ns = typeof v.timeNano === 'number' ? v.timeNano / 1e6 : typeof v.time === 'number' ? v.time * 1000 : NaN;
  return {
    id, name: typeof attrs.name === 'string' ? cutValue(attrs.name, 128) : '',
    // Unknown actions keep their own name (the watcher ignores them); "exec_start: sh" and the like are cut at ':'.
    status: ACTIONS[action] ?? action.split(':')[0]!, time: Number.isFinite(ns) ? ns : Date.now(),
  };
}

class ApiError extends Error {}

export class DockerApi implements RuntimeClient {
  /** Whether the server is podman's (its libpod API read for the annotations); asked once per event stream. */
  private podman: Promise<boolean> | undefined;

  constructor(readonly socket: string = DOCKER_SOCKET) {}

  private request(path: string, onResponse: (res: http.IncomingMessage) => void, onError: (e: Error) => void): http.ClientRequest {
    const req = http.request({ socketPath: this.socket, path, method: 'GET', headers: { Host: 'docker', Accept: 'application/json' }, agent: false }, onResponse);
    req.on('error', (e: NodeJS.ErrnoException) =>
      onError(new ApiError(e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? `no API server listens on ${this.socket} (${e.code})` : `${this.socket}: ${e.message}`)));
    req.end();
    return req;
  }

  /** GET path: the JSON answer (404: undefined); anything but 200 or 404 an error. */
  private get(path: string): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const req = this.request(path, (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (d: Buffer) => {
          n += d.length;
          if (n > MAX_BODY) {
            req.destroy();
            reject(new ApiError(`GET ${path}: the answer is larger than ${MAX_BODY} bytes`));
          } else chunks.push(d);
        });
        res.on('error', reject);
        res.on('end', () => {
          if (res.statusCode === 404) return resolve(undefined);
          const text = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode !== 200) return reject(new ApiError(`GET ${path}: HTTP ${res.statusCode}: ${cutValue(text.trim(), 200)}`));
          try {
            resolve(JSON.parse(text));
          } catch {
            reject(new ApiError(`GET ${path}: the answer is not JSON`));
          }
        });
      }, reject);
      req.setTimeout(CALL_TIMEOUT_MS, () => req.destroy(new ApiError(`GET ${path}: no answer within ${CALL_TIMEOUT_MS / 1000} s`)));
    });
  }

  private isPodman(): Promise<boolean> {
    const p = (this.podman ??= this.get('/version').then(
      (v) => isObj(v) && Array.isArray(v.Components) && v.Components.some((c) => isObj(c) && c.Name === 'Podman Engine'),
    ));
    // Not known (the server not answering): asked again next time, and the inspect of now fails as the server does.
    return p.catch((e: unknown) => {
      if (this.podman === p) this.podman = undefined;
      throw e;
    });
  }

  /** Every container the server knows, id -> state (created, running, exited, ...). */
  async states(): Promise<Map<string, string>> {
    const v = await this.get('/containers/json?all=true');
    const out = new Map<string, string>();
    for (const c of Array.isArray(v) ? v : []) {
      if (isObj(c) && typeof c.Id === 'string' && CONTAINER_ID_RE.test(c.Id) && typeof c.State === 'string') out.set(c.Id, c.State);
    }
    return out;
  }

  /** The containers with these ids the server knows (those it does not know are left out). */
  async inspect(ids: string[]): Promise<RuntimeContainer[]> {
    const libpod = await this.isPodman();
    const out: RuntimeContainer[] = [];
    for (let i = 0; i < ids.length; i += INSPECT_AT_ONCE) {
      const got = await Promise.all(ids.slice(i, i + INSPECT_AT_ONCE).map(async (id) => {
        if (!CONTAINER_ID_RE.test(id)) return [];
        const v = await this.get(libpod ? `/v4.0.0/libpod/containers/${id}/json` : `/containers/${id}/json`);
        return v === undefined ? [] : parseInspected([v]);
      }));
      out.push(...got.flat());
    }
    return out;
  }

  /** Follows GET /events from `since` (ms since the epoch); onEnd: the stream ended or could not start. */
  follow(since: number, onEvent: (e: RuntimeEvent) => void, onEnd: (why: string) => void): { stop(): void } {
    this.podman = undefined; // the server may be another one now
    let ended = false;
    const end = (why: string) => {
      if (!ended) onEnd(why);
      ended = true;
    };
    const filters = encodeURIComponent(JSON.stringify({ type: ['container'] }));
    const path = `/events?since=${Math.floor(since / 1000)}&filters=${filters}`;
    const req = this.request(path, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        return end(`GET /events: HTTP ${res.statusCode}`);
      }
      res.on('data', eventLines('GET /events', parseApiEvent, onEvent));
      res.on('error', (e) => end(`GET /events: ${e.message}`));
      res.on('close', () => end(`the event stream of ${this.socket} ended`));
    }, (e) => end(e.message));
    return { stop: () => req.destroy() };
  }
}
