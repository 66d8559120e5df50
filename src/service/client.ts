/**
 * A typed client of `neuv-bpf serve`'s API (docs/api.md) over its unix
 * socket, for an agent in Node (and the tests). A refused call throws a
 * ServiceError carrying the API's exit-code class (`code`, as the CLI's
 * exit codes) and the HTTP status.
 *
 *   const s = new ServiceClient({ socket: '/run/neuv-bpf/_sys_fs_bpf_neuv.sock' });
 *   const p = await s.addPair({ in: 'vin1', ex: 'vex1', mac: '02:42:ac:11:00:02', mode: 'tap' });
 *   await s.setMode(p.id, 'fwd');
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { LOCK_SH, LOCK_NB, flock } from '../bpf';
import { ExitCode, ExitCodeValue, NeuvError } from '../errors';
import type { BypassedPair, DpWatch, FailPolicy, WatchEvent } from '../dp/watch';
import type { OffloadRule, OffloadStats, Offloaded } from '../offload';
import type { ContainerMode, RuntimeAction, RuntimeActionName, RuntimeName, RuntimeWatcher } from '../runtime';
import type { FlowSpec, FlowView, OffloadOptions, OffloadResult } from '../flows';
import type { InterceptResult, ReleaseResult } from '../intercept';
import type { TraceView } from '../trace';
import { LOCK_DIR, lockDirFile, readableLockDirFile } from '../lock';
import type { ModeChange, ModeName, PairAdded, PairDeleted, PairSelector, PairSpec, ShowResult, StatsSnapshot } from '../pairs';

/** The default socket of the service for a pin root: /run/neuv-bpf/<pin root>.sock. */
export function defaultSocketPath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'sock');
}

/** The service's lock under LOCK_DIR (lockDirFile). */
export const SERVICE_LOCK = 'service.lock';

/** The flock a service holds on its pin root while it runs. */
export function serviceLockPath(pinRoot: string): string {
  return lockDirFile(pinRoot, SERVICE_LOCK);
}

/**
 * The socket of the service that owns pinRoot now (it holds the service
 * lock and answers on its socket), or undefined when none does: no lock
 * file, nobody holding it (a service that died), or a socket that does not
 * answer (one still starting). The CLI goes through it then (src/cli/context.ts).
 */
export async function runningService(pinRoot: string): Promise<string | undefined> {
  if (!fs.existsSync(LOCK_DIR)) return undefined;
  const fd = readableLockDirFile(pinRoot, SERVICE_LOCK);
  if (fd === undefined) return undefined;
  let socket: unknown;
  try {
    if (flock(fd, LOCK_SH | LOCK_NB, serviceLockPath(pinRoot))) return undefined; // nobody holds it
    const buf = Buffer.alloc(4096);
    const text = buf.subarray(0, fs.readSync(fd, buf, 0, buf.length, 0)).toString('utf8');
    try {
      socket = (JSON.parse(text) as { socket?: unknown }).socket;
    } catch {
      return undefined; // being written
    }
  } finally {
    fs.closeSync(fd);
  }
  return typeof socket === 'string' && (await listening(socket)) ? socket : undefined;
}

/** Whether something accepts connections on the unix socket at p. */
export function listening(p: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(p);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}


/** A value as it comes out of JSON: the counters (bigint in the API) are numbers. */
export type Json<T> = T extends bigint ? number : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;

export interface Health {
  status: 'ok';
  pinRoot: string;
  version: string;
  pid: number;
  uptimeSeconds: number;
  /** The supervised DP (serve --dp). */
  dp?: { policy: FailPolicy; state: DpWatch['state'] };
  /** The runtime watcher (serve --runtime). */
  runtime?: { name: RuntimeName; state: RuntimeWatcher['state'] };
}

/** GET /v1/runtime: the runtime watcher (serve --runtime), what it did, its last 20 actions. */
export interface RuntimeStatus {
  name: RuntimeName;
  /** docker: the API's socket. */
  socket?: string;
  state: RuntimeWatcher['state'];
  defaultMode: ContainerMode;
  stats: Record<RuntimeActionName | 'events', number>;
  recent: RuntimeAction[];
}

/** GET /v1/dp: the DP supervisor (serve --dp). */
export interface DpStatus {
  policy: FailPolicy;
  state: DpWatch['state'];
  /** The DP followed now, null while there is none. */
  pid: number | null;
  /** The pairs held in BYPASS while the DP is gone (fail-open), recorded in the watch state file. */
  held: BypassedPair[];
  /** The last 20 events. */
  events: WatchEvent[];
}

/** GET /v1/offload: the rule (its text, 'off'), what the offloader did, the last sessions it offloaded. */
export interface OffloadStatus {
  rule: string;
  parsed?: OffloadRule;
  stats: OffloadStats;
  recent: Offloaded[];
}

/** The container of intercept/release: exactly one of pid and netns. */
export type ServiceTarget = { pid: number; port?: string } | { netns: string; port?: string };

export interface InterceptRequest {
  mode?: ModeName;
  id?: number;
  ipv6ToDp?: boolean;
}

/** A call the service refused: `code` is the exit-code class (ExitCode), `status` the HTTP status. */
export class ServiceError extends NeuvError {
  constructor(
    message: string,
    code: ExitCodeValue,
    readonly status: number,
    /** Nobody listens on the socket (no such file, or connection refused): the call reached no service, so changed nothing. */
    readonly unreachable = false,
  ) {
    super(message, code);
    this.name = 'ServiceError';
  }
}

/** The {pair} segment of /v1/pairs/{pair}: a port id, or in:VIN / ex:VEX. */
export function pairSegment(sel: number | PairSelector): string {
  if (typeof sel === 'number') return String(sel);
  if ('id' in sel) return String(sel.id);
  return encodeURIComponent('in' in sel ? `in:${sel.in}` : `ex:${sel.ex}`);
}

/** The filters and bounds of GET /v1/trace (docs/api.md). */
export interface TraceQuery {
  pair?: number;
  in?: string;
  count?: number;
  duration?: number;
}

/** The last line of a trace stream: why it ended and what it carried (or an error after it started). */
export interface TraceEndLine {
  end?: string;
  records?: number;
  lost?: number;
  dropped?: number;
  error?: string;
  code?: number;
}

export interface ServiceClientOptions {
  socket: string;
  /** Per call, ms (default 120 s: an intercept can wait for the intercept lock). */
  timeoutMs?: number;
}

export class ServiceClient {
  readonly socket: string;
  private readonly timeoutMs: number;
  private readonly agent: http.Agent;

  constructor(opts: ServiceClientOptions) {
    this.socket = opts.socket;
    this.timeoutMs = opts.timeoutMs ?? 120000;
    // One connection per call: a unix socket costs microseconds to connect, and a kept-alive one can be
    // closed by the server (its idle timeout, a 413) just as the next call is written on it (EPIPE).
    this.agent = new http.Agent({ keepAlive: false });
  }

  /** Closes the kept-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  /** One call: method, path, JSON body; the parsed response, or a ServiceError. */
  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = http.request(
        {
          socketPath: this.socket,
          agent: this.agent,
          method,
          path,
          headers: text === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            let v: unknown;
            try {
              v = raw === '' ? undefined : JSON.parse(raw);
            } catch {
              return reject(new ServiceError(`${method} ${path}: the service answered ${res.statusCode} with a body that is not JSON`, ExitCode.FAILURE, res.statusCode ?? 0));
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) return resolve(v as T);
            const e = v as { error?: unknown; code?: unknown } | undefined;
            const code = typeof e?.code === 'number' ? (e.code as ExitCodeValue) : ExitCode.FAILURE;
            reject(new ServiceError(typeof e?.error === 'string' ? e.error : `${method} ${path}: HTTP ${status}`, code, status));
          });
        },
      );
      req.on('timeout', () => req.destroy(new ServiceError(`${method} ${path}: no answer from ${this.socket} within ${this.timeoutMs} ms`, ExitCode.FAILURE, 0)));
      req.on('error', (e: NodeJS.ErrnoException) => {
        if (e instanceof ServiceError) return reject(e);
        const unreachable = e.code === 'ENOENT' || e.code === 'ECONNREFUSED';
        const why = unreachable ? 'no service listens there (neuv-bpf serve)' : (e.code ?? e.message);
        reject(new ServiceError(`${method} ${path}: cannot reach ${this.socket}: ${why}`, e.code === 'EACCES' ? ExitCode.PERMISSION : ExitCode.FAILURE, 0, unreachable));
      });
      req.end(text);
    });
  }

  health(): Promise<Health> {
    return this.request('GET', '/v1/health');
  }

  /** The offload rule and what it did (serve --dp; 404 without). */
  offloadStatus(): Promise<OffloadStatus> {
    return this.request('GET', '/v1/offload');
  }

  /** Sets the offload rule ("after=20,ports=80:443", or "off"); kept for the next service. */
  setOffloadRule(rule: string): Promise<OffloadStatus> {
    return this.request('PUT', '/v1/offload', { rule });
  }

  /** The DP supervisor's state (serve --dp; 404 without). */
  dp(): Promise<DpStatus> {
    return this.request('GET', '/v1/dp');
  }

  /** The runtime watcher (serve --runtime); 404 without one. */
  runtime(): Promise<RuntimeStatus> {
    return this.request('GET', '/v1/runtime');
  }

  /** Every pair (show --json). */
  pairs(): Promise<Json<ShowResult>> {
    return this.request('GET', '/v1/pairs');
  }

  addPair(spec: PairSpec): Promise<PairAdded> {
    return this.request('POST', '/v1/pairs', spec);
  }

  /** Many pairs in one call: all or nothing. */
  addPairs(specs: PairSpec[]): Promise<PairAdded[]> {
    return this.request('POST', '/v1/pairs', specs);
  }

  /** Switches the pair (its id, or { in }, { ex }, { id }) to mode. */
  setMode(pair: number | PairSelector, mode: ModeName): Promise<ModeChange> {
    return this.request('PUT', `/v1/pairs/${pairSegment(pair)}/mode`, { mode });
  }

  /** Removes the pair (its id, or { in }, { ex }, { id }). */
  delPair(pair: number | PairSelector): Promise<PairDeleted> {
    return this.request('DELETE', `/v1/pairs/${pairSegment(pair)}`);
  }

  /** Removes many pairs in one call (ids, { in }, { ex }, { id }), or 'all': all or nothing. */
  delPairs(pairs: Array<number | PairSelector> | 'all'): Promise<PairDeleted[]> {
    const one = (p: number | PairSelector) => (typeof p === 'number' ? p : 'id' in p ? p.id : 'in' in p ? `in:${p.in}` : `ex:${p.ex}`);
    return this.request('POST', '/v1/pairs/delete', pairs === 'all' ? { all: true } : { pairs: pairs.map(one) });
  }

  stats(): Promise<Json<StatsSnapshot>> {
    return this.request('GET', '/v1/stats');
  }

  intercept(target: ServiceTarget, opts: InterceptRequest = {}): Promise<InterceptResult> {
    return this.request('POST', '/v1/intercept', { ...target, ...opts });
  }

  /** { netnsInode }: a container by its journal record, released, or cleaned up when its netns is gone (releaseRecorded). */
  release(target: ServiceTarget | { netnsInode: number; port?: string }): Promise<ReleaseResult> {
    return this.request('POST', '/v1/release', target);
  }

  flows(filter: { id?: number } = {}): Promise<Array<Json<FlowView>>> {
    return this.request('GET', `/v1/flows${filter.id === undefined ? '' : `?id=${filter.id}`}`);
  }

  offload(flow: FlowSpec, opts: OffloadOptions = {}): Promise<Json<OffloadResult>> {
    return this.request('POST', '/v1/flows', { ...flow, ...opts });
  }

  /** Removes a flow's entry: revoked 1, or 0 when there was none. */
  revoke(flow: FlowSpec): Promise<{ revoked: number }> {
    return this.request('DELETE', '/v1/flows', flow);
  }

  /**
   * GET /v1/trace: each event (a `trace --json` object) to onEvent as it
   * comes; resolves with the stream's end line ({end, records, lost,
   * dropped}). A refusal before the stream starts throws a ServiceError.
   */
  trace(q: TraceQuery, onEvent: (e: Json<TraceView>) => void): Promise<TraceEndLine> {
    const qs = new URLSearchParams(Object.entries(q).filter(([, v]) => v !== undefined).map(([k, v]): [string, string] => [k, String(v)])).toString();
    const p = `/v1/trace${qs ? `?${qs}` : ''}`;
    return new Promise((resolve, reject) => {
      const req = http.request({ socketPath: this.socket, agent: this.agent, method: 'GET', path: p }, (res) => {
        if (res.statusCode !== 200) {
          let raw = '';
          res.on('data', (c: Buffer) => (raw += c.toString()));
          res.on('end', () => {
            let e: { error?: unknown; code?: unknown } | undefined;
            try {
              e = JSON.parse(raw) as typeof e;
            } catch {
              e = undefined;
            }
            const code = typeof e?.code === 'number' ? (e.code as ExitCodeValue) : ExitCode.FAILURE;
            reject(new ServiceError(typeof e?.error === 'string' ? e.error : `GET ${p}: HTTP ${res.statusCode}`, code, res.statusCode ?? 0));
          });
          return;
        }
        let buf = '';
        let end: TraceEndLine | undefined;
        res.on('data', (c: Buffer) => {
          buf += c.toString('utf8');
          let i: number;
          while ((i = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            const v = JSON.parse(line) as Record<string, unknown>;
            if ('end' in v || 'error' in v) end = v as unknown as TraceEndLine;
            else onEvent(v as unknown as Json<TraceView>);
          }
        });
        res.on('end', () => (end ? resolve(end) : reject(new ServiceError(`GET ${p}: the stream ended without its end line`, ExitCode.FAILURE, 200))));
        res.on('error', reject);
      });
      req.on('error', (e) => reject(new ServiceError(`GET ${p}: cannot reach ${this.socket}: ${(e as NodeJS.ErrnoException).code ?? e.message}`, ExitCode.FAILURE, 0)));
      req.end();
    });
  }

  /** Removes every flow entry of pair `id`. */
  revokeAll(id: number): Promise<{ id: number; revoked: number }> {
    return this.request('DELETE', `/v1/pairs/${id}/flows`);
  }
}
