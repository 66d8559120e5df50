/**
 * `neuv-bpf serve`: one long-running process per enforcer netns that owns
 * the datapath of a pin root and serves the API of src/service/api.ts as
 * HTTP/1.1 + JSON on a unix socket (root only, 0600), and optionally
 * Prometheus metrics on a TCP address (src/service/metrics.ts).
 *
 * Start: loads the datapath if nothing is loaded at the pin root, else
 * adopts it as it is (no reload, no unload: the pinned programs keep
 * forwarding all along, whatever happens to this process). One service per
 * pin root: it holds a flock on the pin root's "service.lock" under
 * /run/neuv-bpf for its lifetime (the kernel drops it when the process
 * dies, even by SIGKILL).
 *
 * Stop (SIGTERM/SIGINT in the CLI): stops accepting connections, refuses
 * new changes with 503, lets the calls in flight finish, removes its
 * socket; the datapath stays as it is.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import { LOCK_EX, LOCK_NB, flock } from '../bpf';
import { ConflictError, ExitCode, NeuvError, NotFoundError, UsageError } from '../errors';
import type { DpClient } from '../dp/client';
import { DpWatch, FailPolicy, WatchOptions } from '../dp/watch';
import { checkHome } from '../home';
import { OffloadRule, Offloader, readOffloadRule, ruleText, writeOffloadRule } from '../offload';
import { releaseRecorded } from '../intercept';
import { ContainerMode, RuntimeName, RuntimeWatcher } from '../runtime';
import { load } from '../loader';
import { ensureLockDir, openLockDirFile, withLock } from '../lock';
import { log } from '../log';
import { isLoaded } from '../pins';
import { matchRoute } from './api';
import { DpRegistrar, EndpointPolicy, interceptRegistered, released, watchRegistrar } from './endpoints';
import { SERVICE_LOCK, defaultSocketPath, listening, serviceLockPath } from './client';
import { HttpError, errorResponse, readJson, sendJson } from './http';
import { ServiceMetrics } from './metrics';

/** The longest path a unix socket can have (sun_path, with its NUL). */
const SUN_PATH_MAX = 107;

/** How long stop() lets calls in flight finish before closing their connections. */
export const STOP_GRACE_MS = 30000;

export interface ListenAddress {
  host: string;
  port: number;
}

/** "127.0.0.1:9469", "[::1]:9469", "localhost:0" (0: any free port). */
export function parseListenAddress(s: string, what = '--metrics'): ListenAddress {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):([0-9]{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`${what} '${s}' is not HOST:PORT (e.g. 127.0.0.1:9469, [::1]:9469)`);
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && net.isIPv6(host) === false) throw new UsageError(`${what} '${s}': ${host} is not an IPv6 address`);
  return { host, port };
}

export interface ServiceOptions {
  pinRoot: string;
  /** Default: defaultSocketPath(pinRoot). */
  socket?: string;
  /** Serve GET /metrics here. */
  metrics?: ListenAddress;
  /** Supervise the DP (the options of `neuv-bpf watch`): fail-open or fail-closed, followed across restarts. */
  dp?: Omit<WatchOptions, 'pinRoot'>;
  /**
   * Offload what the supervised DP decided (needs dp): a rule, 'off', or
   * undefined for the rule kept by the service before (offload.json).
   */
  offload?: OffloadRule | 'off';
  /**
   * With dp: register every container the service intercepts with the DP
   * before the call returns, with this policy (null: none sent).
   */
  dpRegister?: EndpointPolicy | null;
  /** Follow a container runtime's events (serve --runtime): intercept on start, release after died, resync at start. */
  runtime?: { name: RuntimeName; args?: string[]; socket?: string; defaultMode: ContainerMode };
}

export interface ServiceInfo {
  pinRoot: string;
  socket: string;
  /** The address metrics are served on (the port bound when 0 was asked). */
  metrics?: ListenAddress;
  /** 'loaded': this service loaded the datapath; 'adopted': it was loaded already. */
  datapath: 'loaded' | 'adopted';
  /** The DP supervised (--dp), its failure policy, whether containers are registered with it (--dp-register). */
  dp?: { policy: FailPolicy; register?: boolean };
  /** The offload rule (with --dp): its text, or 'off'. */
  offload?: string;
  /** The runtime followed (--runtime; docker: its API's socket) and the mode of containers without the annotation. */
  runtime?: { name: RuntimeName; socket?: string; defaultMode: ContainerMode };
}

/**
 * Opens (creating it 0600, never through a symlink: openLockDirFile) and
 * flocks the pin root's service lock; a ConflictError if another service
 * holds it. It then holds the service's socket path, for the CLI
 * (runningService).
 */
function takeOwnership(pinRoot: string, socket: string): number {
  const p = serviceLockPath(pinRoot);
  const fd = openLockDirFile(pinRoot, SERVICE_LOCK);
  if (!flock(fd, LOCK_EX | LOCK_NB, p)) {
    fs.closeSync(fd);
    throw new ConflictError(`another neuv-bpf serve owns pin root ${pinRoot} (it holds ${p})`);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, JSON.stringify({ pid: process.pid, socket }) + '\n', 0);
  return fd;
}

/**
 * Makes room for the socket: a socket nobody listens on (a killed
 * service's) is removed; anything else there (a live socket, a file, a
 * symlink) is refused.
 */
async function clearSocketPath(p: string): Promise<void> {
  if (!path.isAbsolute(p)) throw new UsageError(`--socket '${p}' must be an absolute path`);
  if (Buffer.byteLength(p) > SUN_PATH_MAX) throw new UsageError(`--socket '${p}' is longer than the ${SUN_PATH_MAX} bytes of a unix socket path`);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new ConflictError(`${p} exists and is not a socket (${st.isSymbolicLink() ? 'a symlink' : 'a file'}): refusing to replace it`);
  if (await listening(p)) throw new ConflictError(`another process serves on ${p}`);
  fs.unlinkSync(p);
  log('service').info({ socket: p }, 'removed the stale socket of a service that is gone');
}

/** Maps a listen error to our classes. */
function listenError(e: NodeJS.ErrnoException, where: string): NeuvError {
  switch (e.code) {
    case 'EADDRINUSE':
      return new ConflictError(`${where} is in use`);
    case 'EACCES':
    case 'EPERM':
      return new NeuvError(`cannot listen on ${where}: permission denied`, ExitCode.PERMISSION);
    case 'ENOENT':
      return new NotFoundError(`cannot listen on ${where}: its directory does not exist`);
    case 'EADDRNOTAVAIL':
    case 'ENOTFOUND':
      return new UsageError(`cannot listen on ${where}: no such local address`);
    default:
      return new NeuvError(`cannot listen on ${where}: ${e.code ?? e.message}`, ExitCode.FAILURE);
  }
}

function listen(server: net.Server, args: { path: string } | { host: string; port: number }, where: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException) => reject(listenError(e, where));
    server.once('error', onError);
    server.listen(args, () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
}

export class Service {
  readonly info: ServiceInfo;
  private readonly started = Date.now();
  private stopping = false;
  private stopped: Promise<void> | undefined;
  private inflight = 0;
  private socketIno = 0;
  private metricsServer: http.Server | undefined;
  /** The DP supervisor (--dp), started once the datapath is there. */
  private watch: DpWatch | undefined;
  /** Aborted by stop(): streams (GET /v1/trace) end. */
  private readonly stopSignal = new AbortController();
  /** The offloader of the supervised DP's decisions (with --dp; its rule may be off). */
  private offloader: Offloader | undefined;
  /** The runtime watcher (--runtime). */
  private runtime: RuntimeWatcher | undefined;
  /** The DP registration of intercepted containers (--dp-register). */
  private registrar: DpRegistrar | undefined;

  private constructor(
    info: ServiceInfo,
    private readonly lockFd: number | undefined,
    private readonly api: http.Server,
    private readonly metrics: ServiceMetrics,
    /** Resolves true once the datapath is loaded or adopted (false: start failed). */
    private readonly ready: Promise<boolean>,
  ) {
    this.info = info;
  }

  /**
   * Takes the pin root, listens, then loads or adopts the datapath; resolves
   * once it serves. Everything that can be refused (another service, the
   * socket path, the metrics address) is checked before the kernel changes;
   * calls arriving meanwhile wait for the datapath.
   */
  static async start(opts: ServiceOptions): Promise<Service> {
    const lg = log('service');
    const { pinRoot } = opts;
    const socket = opts.socket ?? defaultSocketPath(pinRoot);
    if (!opts.dp && opts.offload !== undefined && opts.offload !== 'off') throw new UsageError('--offload needs --dp: the DP whose decisions are offloaded');
    if (!opts.dp && opts.dpRegister !== undefined) throw new UsageError('--dp-register needs --dp: the DP containers are registered with');
    // Under a directory that does not exist nothing can be pinned: load says why, and no file is left.
    const lockFd = fs.existsSync(path.dirname(pinRoot)) ? takeOwnership(pinRoot, socket) : undefined;
    const metrics = new ServiceMetrics(pinRoot);
    const api = http.createServer();
    let ready!: (v: boolean) => void;
    const svc = new Service({ pinRoot, socket, datapath: 'adopted' }, lockFd, api, metrics, new Promise<boolean>((r) => (ready = r)));
    api.on('request', (req, res) => void svc.handle(req, res));
    try {
      if (!opts.socket) ensureLockDir();
      await clearSocketPath(socket);
      // The socket is created 0600 (umask during bind: nobody else can connect in between), then checked.
      const umask = process.umask(0o177);
      try {
        await listen(api, { path: socket }, `socket ${socket}`);
      } finally {
        process.umask(umask);
      }
      const st = fs.lstatSync(socket);
      if (!st.isSocket()) throw new ConflictError(`${socket} is not the socket this service created`);
      fs.chmodSync(socket, 0o600);
      svc.socketIno = st.ino;
      if (opts.metrics) {
        const ms = (svc.metricsServer = http.createServer(metrics.handler()));
        await listen(ms, { host: opts.metrics.host, port: opts.metrics.port }, `--metrics ${opts.metrics.host}:${opts.metrics.port}`);
        const a = ms.address() as net.AddressInfo;
        svc.info.metrics = { host: a.address, port: a.port };
      }
      // Load (under the pin root's lock, like `neuv-bpf load`) unless a datapath is there: then adopt it untouched.
      svc.info.datapath = await withLock(pinRoot, async () => {
        if (isLoaded(pinRoot)) {
          checkHome(pinRoot); // the datapath of this netns only
          return 'adopted' as const;
        }
        await load({ pinRoot });
        return 'loaded' as const;
      });
      // The offload rule given, else the one the service before kept (read before anything starts).
      const rule = opts.offload === undefined ? readOffloadRule(pinRoot) : opts.offload === 'off' ? undefined : opts.offload;
      if (opts.dp) {
        if (opts.offload !== undefined) writeOffloadRule(pinRoot, rule);
        const dp = opts.dp;
        // A DP that is back (restarted: it knows no endpoint) gets every endpoint registered before again, before pairs return to FWD.
        const onBack = async (c: DpClient): Promise<boolean> => {
          if ((await dp.onBack?.(c)) === false) return false;
          try {
            await svc.registrar?.reregister(c);
            return true;
          } catch (e) {
            lg.warn({ err: (e as Error).message }, 'could not register the endpoints again with the DP that is back: trying again');
            return false;
          }
        };
        const w = (svc.watch = DpWatch.start({ ...dp, pinRoot, onBack }));
        metrics.superviseDp(w);
        svc.info.dp = { policy: w.policy, ...(opts.dpRegister !== undefined ? { register: true } : {}) };
        if (opts.dpRegister !== undefined) metrics.registrar((svc.registrar = watchRegistrar(w, opts.dpRegister ?? undefined)));
        const f = (svc.offloader = Offloader.start({ pinRoot, rule, locate: () => (w.state === 'up' ? w.current : undefined) }));
        metrics.offload(f);
        svc.info.offload = rule ? ruleText(rule) : 'off';
      } else if (rule) {
        lg.warn('an offload rule is kept for this pin root, but this service supervises no DP (--dp): nothing is offloaded');
      }
      if (opts.runtime) {
        const rt = opts.runtime;
        svc.runtime = RuntimeWatcher.start({
          pinRoot, runtime: rt.name, args: rt.args, socket: rt.socket, defaultMode: rt.defaultMode,
          intercept: ({ pid, port, mode }) => interceptRegistered(svc.registrar, { pinRoot, target: { pid }, port, mode }),
          release: async (rec) => released(svc.registrar, await releaseRecorded({ pinRoot, netnsInode: rec.netnsInode, port: rec.port })),
          onAction: (a) => metrics.runtimeAction(a),
        });
        metrics.runtime(svc.runtime);
        svc.info.runtime = { name: rt.name, ...(svc.runtime.socket ? { socket: svc.runtime.socket } : {}), defaultMode: rt.defaultMode };
      }
      metrics.hookFailOpen();
      ready(true);
    } catch (e) {
      ready(false);
      api.close();
      api.closeAllConnections();
      svc.metricsServer?.close();
      svc.removeSocket();
      if (lockFd !== undefined) fs.closeSync(lockFd);
      throw e;
    }
    lg.info({ ...svc.info }, 'serving');
    return svc;
  }

  /** Calls in flight now. */
  get busy(): number {
    return this.inflight;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = process.hrtime.bigint();
    const method = req.method ?? 'GET';
    let route = 'unmatched';
    this.inflight++;
    if (this.stopping) res.setHeader('Connection', 'close');
    let status = 200;
    try {
      if (!(await this.ready)) throw new HttpError(503, 'the service did not start', ExitCode.FAILURE);
      const url = new URL(req.url ?? '/', 'http://localhost');
      const m = matchRoute(method, url.pathname);
      if (!m) throw new HttpError(404, `no such call: ${method} ${url.pathname} (see docs/api.md)`, ExitCode.NOT_FOUND);
      if ('allowed' in m) {
        res.setHeader('Allow', m.allowed.join(', '));
        throw new HttpError(405, `${url.pathname} takes ${m.allowed.join(', ')}, not ${method}`, ExitCode.USAGE);
      }
      route = m.route.path;
      if (this.stopping && m.route.mutating) throw new HttpError(503, 'the service is stopping: no more changes', ExitCode.FAILURE);
      let body: unknown;
      if (m.route.body) body = await readJson(req);
      else req.resume();
      const result = await m.route.handle({
        pinRoot: this.info.pinRoot,
        params: m.params,
        query: url.searchParams,
        body,
        started: this.started,
        watch: this.watch,
        offloader: this.offloader,
        runtime: this.runtime,
        registrar: this.registrar,
        res,
        stopping: this.stopSignal.signal,
      });
      if (m.route.streams) status = res.statusCode;
      else sendJson(res, status, result);
    } catch (e) {
      const r = errorResponse(e);
      status = r.status;
      if (res.headersSent) {
        // A stream that failed midway: nothing but closing it is left to say.
        log('service').warn({ method, url: req.url, error: r.body.error }, 'stream failed');
        res.destroy();
        return;
      }
      // A body not read to its end cannot be followed by another request on this connection.
      if (!req.complete) res.setHeader('Connection', 'close');
      log('service').info({ method, url: req.url, status, error: r.body.error }, 'call refused');
      sendJson(res, status, r.body);
    } finally {
      this.inflight--;
      this.metrics.observe(method, route, status, Number(process.hrtime.bigint() - t0) / 1e9);
      if (this.stopping) res.once('finish', () => this.api.closeIdleConnections());
    }
  }

  /**
   * Stops serving: no new connections, changes refused (503), the calls in
   * flight finish (up to graceMs, then their connections are closed), the
   * socket is removed and the pin root released. The datapath stays.
   */
  stop(graceMs = STOP_GRACE_MS): Promise<void> {
    if (this.stopped) return this.stopped;
    this.stopping = true;
    this.stopSignal.abort();
    const lg = log('service');
    lg.info({ inflight: this.inflight }, 'stopping');
    this.stopped = (async () => {
      const closed = new Promise<void>((resolve) => this.api.close(() => resolve()));
      this.api.closeIdleConnections();
      const timer = setTimeout(() => {
        lg.warn({ inflight: this.inflight }, 'calls still in flight after the grace period: closing their connections');
        this.api.closeAllConnections();
      }, graceMs);
      const closedMetrics = this.metricsServer ? new Promise<void>((resolve) => this.metricsServer!.close(() => resolve())) : undefined;
      this.metricsServer?.closeAllConnections();
      await closed;
      await closedMetrics;
      clearTimeout(timer);
      await this.runtime?.stop(); // interceptions stay: released by the hook's poststop or the next watcher
      await this.offloader?.stop(); // its entries stay until they end
      this.registrar?.close();
      await this.watch?.stop(); // pairs it holds in BYPASS stay there, recorded for the next supervisor
      this.removeSocket();
      if (this.lockFd !== undefined) fs.closeSync(this.lockFd);
      lg.info('stopped');
    })();
    return this.stopped;
  }

  /** Removes our socket (only if the path is still the socket we made). */
  private removeSocket(): void {
    try {
      const st = fs.lstatSync(this.info.socket);
      if (st.isSocket() && st.ino === this.socketIno) fs.unlinkSync(this.info.socket);
    } catch {
      /* gone already */
    }
  }
}
