/**
 * The service's Prometheus metrics (prom-client, names prefixed neuv_),
 * read from the pinned maps when scraped (collect callbacks), never polled:
 * per pair the frames and bytes of each direction and action (the counters
 * `stats` reads, through Datapath.stats), pairs by mode, the global reason
 * counters, flow map occupancy, and the API's request latency.
 */
import * as http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { DpWatch, WatchEvent } from '../dp/watch';
import { Flows } from '../flows';
import type { Offloader } from '../offload';
import { RuntimeAction, RuntimeWatcher, readFailOpenCount } from '../runtime';
import { DIR_NAMES, REASON_NAMES, VERDICT_NAMES } from '../layout';
import { log } from '../log';
import type { DpRegistrar } from './endpoints';
import { isLoaded } from '../pins';
import { Datapath, MODES, StatsSnapshot } from '../pairs';

/** What one scrape reads, once for every metric of the scrape. */
interface Reading {
  stats?: StatsSnapshot;
  flows?: { count: number; capacity: number };
}

export class ServiceMetrics {
  readonly registry = new Registry();
  private readonly latency: Histogram<'method' | 'route' | 'status'>;
  private reading: Promise<Reading> | undefined;
  private interceptDelay: Histogram | undefined;

  constructor(readonly pinRoot: string) {
    // Not prom-client's default metrics: promtool's lint refuses three of its names (gauges ending in _total).
    const registers = [this.registry];
    new Counter({
      name: 'neuv_process_cpu_seconds_total',
      help: 'CPU time of the service process (user + system)',
      registers,
      collect() {
        const u = process.cpuUsage();
        this.reset();
        this.inc((u.user + u.system) / 1e6);
      },
    });
    new Gauge({
      name: 'neuv_process_resident_memory_bytes',
      help: 'Resident memory of the service process',
      registers,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
    this.latency = new Histogram({
      name: 'neuv_api_request_duration_seconds',
      help: 'Latency of the API calls of neuv-bpf serve, by method, route and HTTP status',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    const read = () => this.read();
    const pairLabels = ['id', 'in', 'ex', 'direction', 'action'] as const;
    for (const [name, field, help] of [
      ['neuv_pair_frames_total', 'packets', 'Frames of a pair by direction (to_wl, from_wl) and action (the verdicts of neuv_stats and neuv_flow_stats)'],
      ['neuv_pair_bytes_total', 'bytes', 'Bytes of a pair by direction and action'],
    ] as const) {
      new Counter({
        name,
        help,
        labelNames: pairLabels,
        registers,
        async collect() {
          const { stats } = await read();
          this.reset();
          for (const p of stats?.pairs ?? []) {
            for (const d of DIR_NAMES) {
              for (const v of VERDICT_NAMES) {
                this.inc({ id: String(p.id), in: p.in ?? '', ex: p.ex ?? '', direction: d, action: v }, Number(p.counters[d][v][field]));
              }
            }
          }
        },
      });
    }
    new Gauge({
      name: 'neuv_pairs',
      help: 'Port pairs by mode (mixed: its two port entries disagree; none: no port entry)',
      labelNames: ['mode'],
      registers,
      async collect() {
        const { stats } = await read();
        this.reset();
        if (!stats) return;
        const n = new Map<string, number>([...MODES, 'mixed', 'none'].map((m) => [m, 0]));
        for (const p of stats.pairs) n.set(p.mode ?? 'none', (n.get(p.mode ?? 'none') ?? 0) + 1);
        for (const [mode, count] of n) this.set({ mode }, count);
      },
    });
    new Counter({
      name: 'neuv_frames_by_reason_total',
      help: "Frames the programs passed or dropped outside a pair's verdicts, by reason (neuv_global)",
      labelNames: ['reason'],
      registers,
      async collect() {
        const { stats } = await read();
        this.reset();
        for (const r of REASON_NAMES) if (r !== 'none' && stats) this.inc({ reason: r }, Number(stats.global[r]));
      },
    });
    new Gauge({
      name: 'neuv_flows',
      help: 'Entries in the flow offload map neuv_flows',
      registers,
      async collect() {
        const { flows } = await read();
        this.reset();
        if (flows) this.set(flows.count);
      },
    });
    new Gauge({
      name: 'neuv_flows_capacity',
      help: 'Size (max_entries) of the flow offload map neuv_flows',
      registers,
      async collect() {
        const { flows } = await read();
        this.reset();
        if (flows) this.set(flows.capacity);
      },
    });
    new Gauge({
      name: 'neuv_datapath_loaded',
      help: '1 when the datapath is loaded at the pin root the service serves',
      registers,
      collect() {
        this.set(isLoaded(pinRoot) ? 1 : 0);
      },
    });
  }

  /**
   * The DP supervisor's metrics (serve --dp): up/down, pairs held in BYPASS,
   * and counters of the DP losses it failed open or closed and of its
   * returns. Counted from its events as they happen, so none is missed
   * between two scrapes.
   */
  superviseDp(w: DpWatch): void {
    const registers = [this.registry];
    new Gauge({
      name: 'neuv_dp_up',
      help: '1 while the supervised DP answers; 0 while it is down or not seen yet',
      registers,
      collect() {
        this.set(w.state === 'up' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'neuv_dp_pairs_held',
      help: 'Pairs the supervisor holds in BYPASS while the DP is gone (fail-open)',
      registers,
      collect() {
        this.set(w.bypassed.size);
      },
    });
    const lost = new Counter({
      name: 'neuv_dp_fail_open_total',
      help: 'DP losses failed open: its FWD pairs switched to BYPASS',
      registers,
    });
    const lostClosed = new Counter({
      name: 'neuv_dp_fail_closed_total',
      help: 'DP losses failed closed: its FWD pairs left black-holed until it is back',
      registers,
    });
    const back = new Counter({
      name: 'neuv_dp_returns_total',
      help: 'A DP answering again after a loss (a restart followed)',
      registers,
    });
    const switched = new Counter({
      name: 'neuv_dp_pair_switches_total',
      help: 'Pair mode switches by the supervisor, by target mode (bypass: failed open; fwd: back)',
      labelNames: ['to'],
      registers,
    });
    for (const to of ['bypass', 'fwd']) switched.inc({ to }, 0);
    w.on('event', (e: WatchEvent) => {
      if (e.state === 'down') {
        // A loss has the pid of the DP lost; a 'still down' event only bypasses a pair put in FWD meanwhile.
        if (e.pid !== undefined) (w.policy === 'open' ? lost : lostClosed).inc();
        switched.inc({ to: 'bypass' }, e.switched.length);
      } else if (e.state === 'up') {
        if (w.events.some((x) => x.state === 'down')) back.inc();
        switched.inc({ to: 'fwd' }, e.switched.length);
      }
    });
  }

  /** The offloader's metrics (serve --dp, --offload): entries written by verdict, failed polls, its rule on or off. */
  offload(f: Offloader): void {
    const registers = [this.registry];
    new Gauge({
      name: 'neuv_offload_enabled',
      help: '1 while an offload rule is set (serve --offload, PUT /v1/offload)',
      registers,
      collect() {
        this.set(f.rule ? 1 : 0);
      },
    });
    new Counter({
      name: 'neuv_offload_flows_total',
      help: "Flow entries written for sessions the DP decided, by verdict (allow: carried by the kernel; deny: dropped in it)",
      labelNames: ['verdict'],
      registers,
      collect() {
        this.reset();
        this.inc({ verdict: 'allow' }, f.stats.allow);
        this.inc({ verdict: 'deny' }, f.stats.deny);
      },
    });
    new Counter({
      name: 'neuv_offload_poll_errors_total',
      help: "Reads of the DP's sessions that failed (its control socket unanswered, a map unreadable)",
      registers,
      collect() {
        this.reset();
        this.inc(f.stats.errors);
      },
    });
  }

  /**
   * The runtime watcher's metrics (serve --runtime): containers by what was
   * done, events read, whether it follows the runtime's events, and how long
   * after a container's start event its intercept landed.
   */
  runtime(w: RuntimeWatcher): void {
    const registers = [this.registry];
    new Gauge({
      name: 'neuv_runtime_following',
      help: "1 while the runtime watcher follows the runtime's events (0: starting, restarting its event stream)",
      registers,
      collect() {
        this.set(w.state === 'following' ? 1 : 0);
      },
    });
    new Counter({
      name: 'neuv_runtime_containers_total',
      help: 'Containers the runtime watcher handled, by action (intercepted, released, done: intercepted already, skipped, failed)',
      labelNames: ['action'],
      registers,
      collect() {
        this.reset();
        for (const a of ['intercepted', 'released', 'done', 'skipped', 'failed'] as const) this.inc({ action: a }, w.stats[a]);
      },
    });
    new Counter({
      name: 'neuv_runtime_events_total',
      help: "Container events read from the runtime's event stream",
      registers,
      collect() {
        this.reset();
        this.inc(w.stats.events);
      },
    });
    this.interceptDelay = new Histogram({
      name: 'neuv_runtime_intercept_delay_seconds',
      help: "From a container's start event to the watcher's intercept done: the window event-driven interception leaves open",
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
      registers,
    });
  }

  /** One action of the runtime watcher (its delay, for an intercept of a start event). */
  runtimeAction(a: RuntimeAction): void {
    if (a.delayMs !== undefined) this.interceptDelay?.observe(a.delayMs / 1000);
  }

  /**
   * Containers the OCI hook let start unintercepted (fail-open), read at
   * scrape from the count the hook keeps for this pin root: it counts
   * whether or not the service was reachable then.
   */
  /** The DP registration of intercepted containers (serve --dp-register). */
  registrar(r: DpRegistrar): void {
    const registers = [this.registry];
    new Gauge({
      name: 'neuv_dp_endpoints_registered',
      help: 'Container endpoints registered with the DP by the service (--dp-register) and not removed since',
      registers,
      collect() {
        this.set(r.size);
      },
    });
    new Counter({
      name: 'neuv_dp_endpoints_reregistered_total',
      help: 'Endpoints registered again with a DP that came back (restarted under a new pid, or answering again)',
      registers,
      collect() {
        this.reset();
        this.inc(r.reregistered);
      },
    });
  }

  hookFailOpen(): void {
    const pinRoot = this.pinRoot;
    new Counter({
      name: 'neuv_hook_fail_open_total',
      help: 'Containers the OCI hook let start unintercepted because it failed (--on-failure open)',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(readFailOpenCount(pinRoot).count);
      },
    });
  }

  /** Records one API call. */
  observe(method: string, route: string, status: number, seconds: number): void {
    this.latency.observe({ method, route, status: String(status) }, seconds);
  }

  /** The maps as of this scrape: one read shared by the metrics of one scrape. */
  private read(): Promise<Reading> {
    if (!this.reading) {
      this.reading = this.readNow();
      void this.reading.finally(() => setImmediate(() => (this.reading = undefined)));
    }
    return this.reading;
  }

  private async readNow(): Promise<Reading> {
    if (!isLoaded(this.pinRoot)) return {};
    const out: Reading = {};
    try {
      const dp = Datapath.open(this.pinRoot);
      try {
        out.stats = await dp.stats();
      } finally {
        dp.close();
      }
      if (Flows.available(this.pinRoot)) {
        const f = Flows.open(this.pinRoot);
        try {
          out.flows = { count: f.count(), capacity: f.capacity };
        } finally {
          f.close();
        }
      }
    } catch (e) {
      log('service').warn({ err: (e as Error).message }, 'metrics: reading the maps failed');
    }
    return out;
  }

  /** The /metrics endpoint (anything else: 404). */
  handler(): http.RequestListener {
    return (req, res) => {
      const url = (req.url ?? '/').split('?')[0];
      if (url !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
        res.writeHead(404, { 'Content-Type': 'text/plain' });
        res.end('not found: metrics are at GET /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'Content-Type': this.registry.contentType });
          res.end(req.method === 'HEAD' ? undefined : text);
        },
        (e: Error) => {
          res.writeHead(500, { 'Content-Type': 'text/plain' });
          res.end(`metrics failed: ${e.message}\n`);
        },
      );
    };
  }
}
