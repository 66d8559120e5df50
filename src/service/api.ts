/**
 * The calls of the service's API (docs/api.md), each a thin shell over the
 * typed API the CLI uses: Datapath (src/pairs/), intercept/release
 * (src/intercept/), Flows (src/flows.ts). Those take the pin root's locks
 * exactly as they do for the CLI, so the CLI and the service never race.
 * Bodies are validated by the same code as the CLI's input (parsePairObject,
 * parseModeName, parsePortId, flowKeyFromSpec) before anything changes.
 */
import type { ServerResponse } from 'node:http';
import type { DpWatch } from '../dp/watch';
import type { RuntimeWatcher } from '../runtime';
import { ExitCode, NotFoundError, UsageError, oneLine } from '../errors';
import { Offloader, parseOffloadRule, ruleText } from '../offload';
import { FlowSpec, OffloadOptions, withFlows } from '../flows';
import { Target, release, releaseRecorded } from '../intercept';
import { isLoaded, notLoaded } from '../pins';
import { MODE_NAMES } from '../layout';
import { Datapath, ModeName, PairSelector, PairSpec, parseModeName, parsePairObject, parsePortId } from '../pairs';
import { packageVersion } from '../root';
import { boundedTrace, traceRequest } from '../trace';
import type { DpStatus, OffloadStatus } from './client';
import { objectWith } from './http';
import { DpRegistrar, interceptRegistered, released } from './endpoints';

/** What a call gets. */
export interface CallContext {
  pinRoot: string;
  /** Path parameters ({id}). */
  params: Record<string, string>;
  query: URLSearchParams;
  /** The parsed JSON body (undefined when empty); read only for calls that take one. */
  body: unknown;
  /** When the service started (ms since the epoch). */
  started: number;
  /** The DP supervisor, when the service supervises one (--dp). */
  watch?: DpWatch;
  /** The response, for a call that streams (Route.streams). */
  res?: ServerResponse;
  /** Aborted when the service stops: a stream ends then. */
  stopping?: AbortSignal;
  /** The offloader of the DP's decisions (with --dp). */
  offloader?: Offloader;
  /** The runtime watcher (--runtime). */
  runtime?: RuntimeWatcher;
  /** The DP registration of intercepted containers (--dp-register). */
  registrar?: DpRegistrar;
}

function offloadView(f: Offloader): OffloadStatus {
  return { rule: f.rule ? ruleText(f.rule) : 'off', ...(f.rule ? { parsed: f.rule } : {}), stats: { ...f.stats }, recent: f.recent.slice(-20) };
}

function offloaderOf(c: CallContext): Offloader {
  if (!c.offloader) throw new NotFoundError('automatic offload needs a supervised DP: serve --dp local|PIDFILE [--offload RULE]');
  return c.offloader;
}

/** GET /v1/dp: the supervisor's state, the pairs it holds in BYPASS, its last events. */
export function dpView(w: DpWatch): DpStatus {
  return {
    policy: w.policy,
    state: w.state,
    pid: w.current?.pid ?? null,
    held: [...w.bypassed.values()],
    events: w.events.slice(-20),
  };
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  /** "/v1/pairs/{id}/mode": {name} matches one path segment. */
  path: string;
  /** The call reads a JSON body. */
  body?: boolean;
  /** Changes state (or starts a stream): refused while the service stops. */
  mutating?: boolean;
  /** Writes its response itself (c.res), streamed; handle resolves when it has ended. */
  streams?: boolean;
  handle(c: CallContext): Promise<unknown>;
}

async function withDatapath<T>(pinRoot: string, fn: (dp: Datapath) => Promise<T>): Promise<T> {
  const dp = Datapath.open(pinRoot);
  try {
    return await fn(dp);
  } finally {
    dp.close();
  }
}

/** POST /v1/pairs: one spec object, or an array of them (labelled "pair N" in errors). */
export function pairSpecsOf(body: unknown): { specs: PairSpec[]; labels: string[]; many: boolean } {
  if (Array.isArray(body)) {
    if (body.length === 0) throw new UsageError('no pairs (an empty array)');
    const labels = body.map((_, i) => `pair ${i + 1}`);
    return { specs: body.map((v, i) => parsePairObject(v, labels[i]!)), labels, many: true };
  }
  if (body === undefined) throw new UsageError('POST /v1/pairs needs a body: a pair spec {"in","ex","mac",...} or an array of them');
  return { specs: [parsePairObject(body, 'pair')], labels: ['pair'], many: false };
}

/**
 * The {pair} of /v1/pairs/{pair}/mode and DELETE /v1/pairs/{pair}: a port id,
 * or in:VIN / ex:VEX (the pair by its vin or vex; an interface name never
 * holds ':', so neither is ever an id).
 */
export function pairSelectorOf(s: string): PairSelector {
  if (s.startsWith('in:')) return { in: s.slice(3) };
  if (s.startsWith('ex:')) return { ex: s.slice(3) };
  return { id: parsePortId(s) };
}

/**
 * The body of POST /v1/pairs/delete: {"pairs": [...]}, each a port id or a
 * {pair} string as in the path ("7", "in:VIN", "ex:VEX"), or {"all": true}.
 */
export function pairsToDelete(body: unknown): PairSelector[] | 'all' {
  const o = objectWith(body, ['pairs', 'all'], [], 'delete body');
  if ((o.pairs === undefined) === (o.all === undefined)) throw new UsageError('delete body: give exactly one of "pairs" (an array of ids or "in:VIN"/"ex:VEX") and "all": true');
  if (o.all !== undefined) {
    if (o.all !== true) throw new UsageError(`delete body: all must be true, not ${JSON.stringify(o.all)}`);
    return 'all';
  }
  if (!Array.isArray(o.pairs) || o.pairs.length === 0) throw new UsageError('delete body: pairs must be a non-empty array of ids or "in:VIN"/"ex:VEX"');
  return o.pairs.map((v, i) => {
    if (typeof v === 'number') return { id: parsePortId(v, `pairs[${i}]`) };
    if (typeof v === 'string') return pairSelectorOf(v);
    throw new UsageError(`delete body: pairs[${i}] ${JSON.stringify(v)} is neither a port id nor "in:VIN"/"ex:VEX"`);
  });
}

const TARGET_FIELDS = ['pid', 'netns', 'port'] as const;

/** The container of an intercept/release body: exactly one of pid and netns. */
export function targetOf(o: Record<string, unknown>): Target {
  if ((o.pid === undefined) === (o.netns === undefined)) throw new UsageError('name the container with exactly one of pid and netns');
  if (o.pid !== undefined) {
    if (typeof o.pid !== 'number' || !Number.isSafeInteger(o.pid) || o.pid <= 0) throw new UsageError(`pid ${JSON.stringify(o.pid)} is not a process id`);
    return { pid: o.pid };
  }
  if (typeof o.netns !== 'string' || o.netns === '') throw new UsageError(`netns ${JSON.stringify(o.netns)} is not a path or a name under /var/run/netns`);
  return { netns: o.netns };
}

function portOf(o: Record<string, unknown>): string | undefined {
  if (o.port !== undefined && typeof o.port !== 'string') throw new UsageError(`port ${JSON.stringify(o.port)} must be an interface name`);
  return o.port as string | undefined;
}

function boolOf(v: unknown, what: string): boolean | undefined {
  if (v !== undefined && typeof v !== 'boolean') throw new UsageError(`${what} must be true or false, not ${JSON.stringify(v)}`);
  return v as boolean | undefined;
}

const FLOW_FIELDS = ['id', 'proto', 'src', 'dst'] as const;

/** A flow named in a body (the fields of `flow allow|deny|revoke`). */
export function flowSpecOf(o: Record<string, unknown>): FlowSpec {
  return { id: parsePortId(o.id), proto: o.proto as FlowSpec['proto'], src: o.src as FlowSpec['src'], dst: o.dst as FlowSpec['dst'] };
}

function offloadOptionsOf(o: Record<string, unknown>): OffloadOptions {
  const secs = (v: unknown, what: string): number | undefined => {
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw new UsageError(`${what} ${JSON.stringify(v)} is not a positive number of seconds`);
    return v;
  };
  if (o.verdict !== undefined && o.verdict !== 'allow' && o.verdict !== 'deny') throw new UsageError(`verdict ${JSON.stringify(o.verdict)} (expected allow or deny)`);
  return { verdict: o.verdict as OffloadOptions['verdict'], timeoutS: secs(o.timeoutS, 'timeoutS'), idleS: secs(o.idleS, 'idleS') };
}

/** GET /v1/trace: how long a stream lasts when the call gives no duration. */
export const TRACE_DEFAULT_S = 60;
/** Past this many bytes not yet taken by the client, events are dropped (counted in the end line) rather than buffered. */
export const TRACE_BUFFER_BYTES = 4 << 20;
const TRACE_QUERY = ['pair', 'in', 'count', 'duration'] as const;

/**
 * GET /v1/trace: the datapath trace as NDJSON (one TraceView per line, as
 * `trace --json`), then one end line {end, records, lost, dropped}: until
 * count events, duration seconds (default TRACE_DEFAULT_S), the client
 * closing the connection, or the service stopping.
 */
async function streamTrace(c: CallContext): Promise<void> {
  const unknown = [...c.query.keys()].filter((k) => !(TRACE_QUERY as readonly string[]).includes(k));
  if (unknown.length) throw new UsageError(`unknown query parameter '${unknown[0]}' (expected ${TRACE_QUERY.join(', ')})`);
  const q = (k: (typeof TRACE_QUERY)[number]) => c.query.get(k) ?? undefined;
  const req = traceRequest(
    { pair: q('pair'), in: q('in'), count: q('count'), duration: q('duration') ?? TRACE_DEFAULT_S },
    { pair: 'pair', in: 'in', count: 'count', duration: 'duration' },
  );
  const res = c.res!;
  let dropped = 0;
  // Starts the session first: a refusal (another tracer, no datapath, no such pair) is still a JSON error.
  const t = boundedTrace({
    pinRoot: c.pinRoot,
    ...req,
    onView: (v) => {
      if (res.writableLength > TRACE_BUFFER_BYTES) dropped++;
      else res.write(JSON.stringify(v) + '\n');
    },
  });
  res.writeHead(200, { 'Content-Type': 'application/x-ndjson', 'Cache-Control': 'no-store' });
  const onClose = () => t.stop('client closed', true);
  res.once('close', onClose);
  const onStop = () => t.stop('service stopping');
  c.stopping?.addEventListener('abort', onStop, { once: true });
  if (c.stopping?.aborted) onStop();
  try {
    const end = await t.done;
    res.removeListener('close', onClose);
    if (!res.destroyed) res.end(JSON.stringify({ end: end.why, records: end.records, lost: end.lost, dropped }) + '\n');
  } catch (e) {
    if (!res.destroyed) res.end(JSON.stringify({ error: oneLine(e), code: ExitCode.FAILURE }) + '\n');
  } finally {
    c.stopping?.removeEventListener('abort', onStop);
  }
}

export const ROUTES: Route[] = [
  {
    method: 'GET',
    path: '/v1/health',
    handle: async (c) => {
      if (!isLoaded(c.pinRoot)) throw notLoaded(c.pinRoot);
      return {
        status: 'ok', pinRoot: c.pinRoot, version: packageVersion(), pid: process.pid, uptimeSeconds: Math.round((Date.now() - c.started) / 1000),
        ...(c.watch ? { dp: { policy: c.watch.policy, state: c.watch.state } } : {}),
        ...(c.runtime ? { runtime: { name: c.runtime.name, state: c.runtime.state } } : {}),
      };
    },
  },
  {
    method: 'GET',
    path: '/v1/runtime',
    handle: async (c) => {
      if (!c.runtime) throw new NotFoundError('this service follows no container runtime (serve --runtime podman|docker)');
      const w = c.runtime;
      return { name: w.name, ...(w.socket ? { socket: w.socket } : {}), state: w.state, defaultMode: w.defaultMode, stats: { ...w.stats }, recent: w.recent.slice(-20) };
    },
  },
  {
    method: 'GET',
    path: '/v1/dp',
    handle: async (c) => {
      if (!c.watch) throw new NotFoundError('this service supervises no DP (serve --dp local|PIDFILE)');
      return dpView(c.watch);
    },
  },
  {
    method: 'GET',
    path: '/v1/offload',
    handle: async (c) => offloadView(offloaderOf(c)),
  },
  {
    method: 'PUT',
    path: '/v1/offload',
    body: true,
    mutating: true,
    handle: async (c) => {
      const f = offloaderOf(c);
      const o = objectWith(c.body, ['rule'], ['rule'], 'offload body');
      if (typeof o.rule !== 'string') throw new UsageError(`rule ${JSON.stringify(o.rule)} must be a string such as "after=20,ports=80:443" or "off"`);
      f.setRule(parseOffloadRule(o.rule, 'rule'));
      return offloadView(f);
    },
  },
  {
    method: 'DELETE',
    path: '/v1/offload',
    mutating: true,
    handle: async (c) => {
      const f = offloaderOf(c);
      f.setRule(undefined);
      return offloadView(f);
    },
  },
  {
    method: 'GET',
    path: '/v1/pairs',
    handle: (c) => withDatapath(c.pinRoot, (dp) => dp.show()),
  },
  {
    method: 'POST',
    path: '/v1/pairs',
    body: true,
    mutating: true,
    handle: async (c) => {
      const { specs, labels, many } = pairSpecsOf(c.body);
      const rs = await withDatapath(c.pinRoot, (dp) => dp.addPairs(specs, { labels }));
      return many ? rs : rs[0];
    },
  },
  {
    method: 'PUT',
    path: '/v1/pairs/{pair}/mode',
    body: true,
    mutating: true,
    handle: async (c) => {
      const sel = pairSelectorOf(c.params.pair!);
      const o = objectWith(c.body, ['mode'], ['mode'], 'mode body');
      const mode = parseModeName(o.mode);
      return withDatapath(c.pinRoot, (dp) => dp.setMode(sel, mode));
    },
  },
  {
    method: 'POST',
    path: '/v1/pairs/delete',
    body: true,
    mutating: true,
    handle: async (c) => {
      const sels = pairsToDelete(c.body);
      return withDatapath(c.pinRoot, (dp) => dp.delPairs(sels));
    },
  },
  {
    method: 'DELETE',
    path: '/v1/pairs/{pair}',
    mutating: true,
    handle: async (c) => {
      const sel = pairSelectorOf(c.params.pair!);
      return withDatapath(c.pinRoot, (dp) => dp.delPair(sel));
    },
  },
  {
    method: 'GET',
    path: '/v1/stats',
    handle: (c) => withDatapath(c.pinRoot, (dp) => dp.stats()),
  },
  {
    method: 'GET',
    path: '/v1/trace',
    mutating: true,
    streams: true,
    handle: streamTrace,
  },
  {
    method: 'POST',
    path: '/v1/intercept',
    body: true,
    mutating: true,
    handle: async (c) => {
      const o = objectWith(c.body, [...TARGET_FIELDS, 'mode', 'id', 'ipv6ToDp'], [], 'intercept body');
      const target = targetOf(o);
      const mode = o.mode === undefined ? undefined : (MODE_NAMES[parseModeName(o.mode)] as ModeName);
      return interceptRegistered(c.registrar, {
        pinRoot: c.pinRoot,
        target,
        port: portOf(o),
        mode,
        id: o.id === undefined ? undefined : parsePortId(o.id),
        ipv6ToDp: boolOf(o.ipv6ToDp, 'ipv6ToDp'),
      });
    },
  },
  {
    method: 'POST',
    path: '/v1/release',
    body: true,
    mutating: true,
    handle: async (c) => {
      const o = objectWith(c.body, [...TARGET_FIELDS, 'netnsInode'], [], 'release body');
      if (o.netnsInode === undefined) return released(c.registrar, await release({ pinRoot: c.pinRoot, target: targetOf(o), port: portOf(o) }));
      // A container named by its journal record (its netns may be gone): the OCI hook's poststop.
      if (o.pid !== undefined || o.netns !== undefined) throw new UsageError('name the container with exactly one of pid, netns and netnsInode');
      const ino = o.netnsInode;
      if (typeof ino !== 'number' || !Number.isSafeInteger(ino) || ino <= 0) throw new UsageError(`netnsInode ${JSON.stringify(ino)} is not an inode number`);
      return released(c.registrar, await releaseRecorded({ pinRoot: c.pinRoot, netnsInode: ino, port: portOf(o) }));
    },
  },
  {
    method: 'GET',
    path: '/v1/flows',
    handle: async (c) => {
      const id = c.query.get('id');
      return withFlows(c.pinRoot, (f) => f.list({ id: id === null ? undefined : parsePortId(id) }));
    },
  },
  {
    method: 'POST',
    path: '/v1/flows',
    body: true,
    mutating: true,
    handle: async (c) => {
      const o = objectWith(c.body, [...FLOW_FIELDS, 'verdict', 'timeoutS', 'idleS'], FLOW_FIELDS, 'flow body');
      const spec = flowSpecOf(o);
      const opts = offloadOptionsOf(o);
      return withFlows(c.pinRoot, (f) => f.offload(spec, opts));
    },
  },
  {
    method: 'DELETE',
    path: '/v1/flows',
    body: true,
    mutating: true,
    handle: async (c) => {
      const spec = flowSpecOf(objectWith(c.body, FLOW_FIELDS, FLOW_FIELDS, 'flow body'));
      return { revoked: withFlows(c.pinRoot, (f) => f.revoke(spec)) ? 1 : 0 };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/pairs/{id}/flows',
    mutating: true,
    handle: async (c) => {
      const id = parsePortId(c.params.id);
      return { id, revoked: withFlows(c.pinRoot, (f) => f.clearPair(id)) };
    },
  },
];

/** A route matched against a request's method and path. */
export type Match = { route: Route; params: Record<string, string> } | { allowed: string[] } | undefined;

const compiled = ROUTES.map((r) => ({
  route: r,
  names: [...r.path.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!),
  re: new RegExp('^' + r.path.replace(/\{\w+\}/g, '([^/]+)') + '$'),
}));

/**
 * The route of (method, path); `{ allowed }` when the path exists for other
 * methods only; undefined when no route has the path.
 */
export function matchRoute(method: string, path: string): Match {
  const allowed: string[] = [];
  for (const c of compiled) {
    const m = c.re.exec(path);
    if (!m) continue;
    if (c.route.method !== method) {
      allowed.push(c.route.method);
      continue;
    }
    const params: Record<string, string> = {};
    c.names.forEach((n, i) => {
      try {
        params[n] = decodeURIComponent(m[i + 1]!);
      } catch {
        throw new UsageError(`path segment '${m[i + 1]}' is not valid percent-encoding`);
      }
    });
    return { route: c.route, params };
  }
  return allowed.length ? { allowed } : undefined;
}
