/**
 * The datapath trace: per-frame decision records from the neuv_trace ring
 * buffer (struct neuv_trace, one per frame at the programs' single exit).
 *
 * Tracing is switched on by a lease in neuv_config: trace_until is a
 * bpf_ktime_get_ns() deadline (CLOCK_MONOTONIC, the clock of
 * process.hrtime.bigint()), renewed every second to now + 3 s and set to 0
 * when the session stops. If the tracer dies without stopping (SIGKILL), the
 * programs stop emitting within the lease by themselves.
 *
 * A ring buffer has one consumer position, so one session reads it at a time:
 * a session holds an flock next to the pin root's lock for its lifetime.
 */
import * as fs from 'node:fs';
import { LOCK_EX, LOCK_NB, LOCK_UN, MapFd, RingBuffer, flock, ifIndexToName, ifNameToIndex } from './bpf';
import { ConflictError, NeuvError, NotFoundError, UsageError } from './errors';
import {
  ConfigFlag,
  DIR_NAMES,
  HOOK_NAMES,
  MAPS,
  MODE_NAMES,
  REASON_NAMES,
  TraceFlag,
  TraceRecord,
  VERDICT_NAMES,
  decodeConfig,
  decodePort,
  decodeTrace,
  traceFilterFlags,
  u32Key,
} from './layout';
import { lockDirFile, openLockDirFile } from './lock';
import { updateConfig } from './config';
import { Pins, isLoaded, mapPinPath, notLoaded } from './pins';
import { log } from './log';
import { formatMac } from './mac';
import { PORT_ID_HEX, TRACE_COUNT, TRACE_DURATION, parseDecimal, parseInteger } from './numbers';

/** How long a lease lasts, and how often it is renewed. */
export const LEASE_MS = 3000;
export const RENEW_MS = 1000;

// ---------------------------------------------------------------- filters

/** Which frames to trace: every frame, or those of one pair. */
export type TraceFilter = { all: true } | { id: number } | { in: string };

/**
 * The filter and bounds of a trace as given (the CLI's --pair/--in/--count/
 * --duration, the API's ?pair=&in=&count=&duration=), checked: at most one of
 * pair (decimal or 0x hex) and in; count and duration in their ranges.
 * `names` are the words errors use for them.
 */
export function traceRequest(
  o: { pair?: unknown; in?: unknown; count?: unknown; duration?: unknown },
  names: { pair: string; in: string; count: string; duration: string },
): { filter: TraceFilter; count?: number; durationS?: number } {
  if (o.pair !== undefined && o.in !== undefined) throw new UsageError(`give at most one of ${names.pair} ID and ${names.in} VIN`);
  let filter: TraceFilter = { all: true };
  if (o.pair !== undefined) filter = { id: parseInteger(o.pair, names.pair, PORT_ID_HEX) };
  else if (o.in !== undefined) {
    if (typeof o.in !== 'string') throw new UsageError(`${names.in} must be an interface name`);
    filter = { in: o.in };
  }
  return {
    filter,
    count: o.count === undefined ? undefined : parseInteger(o.count, names.count, TRACE_COUNT),
    durationS: o.duration === undefined ? undefined : parseDecimal(o.duration, names.duration, TRACE_DURATION),
  };
}

// ---------------------------------------------------------------- records as data and text

/** TC_ACT_UNSPEC (-1) is what the programs return for a frame they pass on: the next filter, else the stack. */
const ACTIONS: Record<number, string> = { [-1]: 'pass', 0: 'ok', 2: 'drop', 7: 'redirect' };

/** What a record says, with names: the `--json` line and the fields of a trace-level log line. */
export interface TraceView {
  /** Wall-clock time of the decision, ISO 8601 with microseconds. */
  time: string;
  /** bpf_ktime_get_ns() as a decimal string (monotonic, for ordering). */
  ktimeNs: string;
  hook: string;
  ifindex: number;
  ifname: string | null;
  /** Pair id, or null when no pair matched. */
  id: number | null;
  mode: string;
  /** What tc was told: pass (to the stack), drop, redirect. */
  action: string;
  /** Verdicts as counted in neuv_stats (TAP: copy then to_peer) and neuv_flow_stats (fast, flow_drop). */
  verdicts: string[];
  /**
   * FWD flow offload: null when the flow map was not consulted; else 'hit'
   * (an entry decided: verdict fast or flow_drop), 'miss' (no entry, to the
   * DP), 'expired' (deleted, to the DP) or 'end' (TCP FIN/RST ended an
   * allow entry: deleted, to the DP).
   */
  flow: 'hit' | 'miss' | 'expired' | 'end' | null;
  reason: string | null;
  dir: string | null;
  /** Where the frame went (redirects), else null. */
  target: number | null;
  targetName: string | null;
  /** The redirect used bpf_redirect_peer (straight to the peer's ingress). */
  viaPeer: boolean;
  /** TAP: where the copy went. */
  copyTarget: number | null;
  copyTargetName: string | null;
  da: string | null;
  sa: string | null;
  daAfter: string | null;
  saAfter: string | null;
  /** EtherType, "0x0800", or null for a frame shorter than an Ethernet header. */
  ethertype: string | null;
  len: number;
  /** Records lost so far in the kernel (ring full). */
  lost: number;
}

/** Turns CLOCK_MONOTONIC ns into wall-clock ms, from one reading of both clocks. */
export function monoToWall(): (ns: bigint) => number {
  const wallNs = BigInt(Date.now()) * 1_000_000n;
  const mono = process.hrtime.bigint();
  const off = wallNs - mono;
  return (ns: bigint) => Number((ns + off) / 1000n) / 1000;
}

function isoMicro(ms: number): string {
  const d = new Date(Math.floor(ms));
  const micro = Math.round((ms - Math.floor(ms)) * 1000);
  return d.toISOString().replace(/Z$/, `${String(micro).padStart(3, '0')}Z`);
}

/** Interface names by ifindex in the current netns, cached for a few seconds. */
export class IfNames {
  private cache = new Map<number, string | null>();
  private at = Date.now();
  name(ifindex: number): string | null {
    if (!ifindex) return null;
    if (Date.now() - this.at > 5000) {
      this.cache.clear();
      this.at = Date.now();
    }
    let n = this.cache.get(ifindex);
    if (n === undefined) {
      n = ifIndexToName(ifindex) ?? null;
      this.cache.set(ifindex, n);
    }
    return n;
  }
}

const ethertypeNames: Record<number, string> = { 0x0800: 'IPv4', 0x86dd: 'IPv6', 0x0806: 'ARP', 0x8100: 'VLAN', 0x88a8: 'QinQ', 0x88cc: 'LLDP' };

export function viewRecord(r: TraceRecord, names: { name(i: number): string | null }, wall: (ns: bigint) => number): TraceView {
  const d = r.d;
  const short = (d.flags & TraceFlag.SHORT) !== 0;
  const mac = (b: Buffer, off: number) => (short ? null : formatMac(b.subarray(off, off + 6)));
  const verdicts = [d.v1, d.v2].filter((v) => v < VERDICT_NAMES.length).map((v) => VERDICT_NAMES[v]!);
  return {
    time: isoMicro(wall(r.ts)),
    ktimeNs: r.ts.toString(),
    hook: HOOK_NAMES[d.hook] ?? `hook${d.hook}`,
    ifindex: r.ifindex,
    ifname: names.name(r.ifindex),
    id: d.hasId ? d.id : null,
    mode: MODE_NAMES[d.mode] ?? `mode${d.mode}`,
    action: ACTIONS[d.action] ?? `tc_act_${d.action}`,
    verdicts,
    flow: flowOutcome(d.flags, verdicts),
    reason: d.reason ? (REASON_NAMES[d.reason] ?? `reason${d.reason}`) : null,
    dir: d.hasId ? (DIR_NAMES[d.dir] ?? null) : null,
    target: d.target || null,
    targetName: d.target ? names.name(d.target) : null,
    viaPeer: (d.flags & TraceFlag.PEER) !== 0,
    copyTarget: r.copyIfindex || null,
    copyTargetName: r.copyIfindex ? names.name(r.copyIfindex) : null,
    da: mac(r.before, 0),
    sa: mac(r.before, 6),
    daAfter: mac(r.after, 0),
    saAfter: mac(r.after, 6),
    ethertype: short ? null : `0x${r.proto.toString(16).padStart(4, '0')}`,
    len: r.len,
    lost: r.lost,
  };
}

function flowOutcome(flags: number, verdicts: string[]): TraceView['flow'] {
  if (!(flags & TraceFlag.FLOW)) return null;
  if (flags & TraceFlag.FLOW_EXPIRED) return 'expired';
  if (flags & TraceFlag.FLOW_END) return 'end';
  return verdicts.includes('fast') || verdicts.includes('flow_drop') ? 'hit' : 'miss';
}

const port = (name: string | null, ifindex: number) => `${name ?? '?'}(${ifindex})`;

/**
 * One readable line:
 * `12:00:01.123456 vex nbtx0(7) id 4242 fwd  redirect to_dp -> vbr-neuv(10000000)  DA 02:..:01 => 4e:65:75:56:10:92  SA 02:..:02  IPv4 98B`
 */
export function formatView(v: TraceView): string {
  const t = v.time.slice(11, 26);
  const who = v.id === null ? 'no pair' : `id ${v.id} ${v.mode}`;
  let what = v.action;
  if (v.verdicts.length) what += ' ' + v.verdicts.join('+');
  if (v.reason) what += ` (${v.reason})`;
  if (v.flow && v.flow !== 'hit') what += ` (flow ${v.flow})`;
  if (v.target !== null) what += ` -> ${port(v.targetName, v.target)}${v.viaPeer ? ' via peer' : ''}`;
  else if (v.action === 'pass') what += ' -> stack';
  if (v.copyTarget !== null) what += `, copy -> ${port(v.copyTargetName, v.copyTarget)}`;
  let macs: string;
  if (v.da === null) macs = 'short frame';
  else {
    const ch = (a: string | null, b: string | null) => (a === b ? `${a}` : `${a} => ${b}`);
    const et = parseInt(v.ethertype!, 16);
    macs = `DA ${ch(v.da, v.daAfter)}  SA ${ch(v.sa, v.saAfter)}  ${ethertypeNames[et] ?? v.ethertype}`;
  }
  return `${t} ${v.hook} ${port(v.ifname, v.ifindex)} ${who}  ${what}  ${macs} ${v.len}B`;
}

// ---------------------------------------------------------------- the session

export interface TraceOptions {
  pinRoot: string;
  filter?: TraceFilter;
  /** Called with every record, in ring order. */
  onRecord: (r: TraceRecord) => void;
  /** Called when the kernel reports records lost since the last one (ring full). */
  onLost?: (n: number) => void;
  /** Keep the process alive while tracing (default true); false for a trace that rides along a command. */
  ref?: boolean;
  leaseMs?: number;
  renewMs?: number;
}

function traceLockPath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'trace.lock');
}

/** Resolves a filter to a pair id (undefined: everything). */
function resolveFilter(f: TraceFilter | undefined, pinRoot: string): number | undefined {
  if (!f || 'all' in f) return undefined;
  if ('id' in f) return f.id;
  const ifindex = ifNameToIndex(f.in);
  if (!ifindex) throw new NotFoundError(`interface ${f.in} not found`);
  const v = Pins.with(pinRoot, ['ports'], ({ ports }) => ports.lookup(u32Key(ifindex)), { legacyPorts: true });
  if (!v) throw new NotFoundError(`${f.in} (ifindex ${ifindex}) is not a port of any pair`);
  return decodePort(v).id;
}

/**
 * A running trace: lease held, ring buffer watched from the event loop.
 * stop() (idempotent) switches tracing off, delivers what is left and
 * releases everything.
 */
export class TraceSession {
  readonly pinRoot: string;
  /** The pair id traced, or undefined for every frame. */
  readonly id: number | undefined;
  records = 0;
  lost = 0;
  /** neuv_config (the lease) and neuv_trace (the ring). */
  private pins: Pins;
  private ring: RingBuffer;
  private lockFd: number;
  private timer: NodeJS.Timeout | undefined;
  private lastLost: number | undefined;
  private stopped = false;
  private readonly opts: TraceOptions;
  private readonly onExit = () => this.switchOff();

  private constructor(opts: TraceOptions, id: number | undefined, pins: Pins, ring: RingBuffer, lockFd: number) {
    this.opts = opts;
    this.pinRoot = opts.pinRoot;
    this.id = id;
    this.pins = pins;
    this.ring = ring;
    this.lockFd = lockFd;
  }

  static start(opts: TraceOptions): TraceSession {
    const { pinRoot } = opts;
    if (!isLoaded(pinRoot)) throw notLoaded(pinRoot);
    const ringPath = mapPinPath(pinRoot, 'trace');
    if (!fs.existsSync(ringPath)) {
      throw new NotFoundError(`${ringPath} is missing: the loaded datapath predates tracing; run neuv-bpf load to upgrade it (pairs and maps are kept)`);
    }
    const undo: Array<() => void> = [];
    try {
      const lp = traceLockPath(pinRoot);
      const lockFd = openLockDirFile(pinRoot, 'trace.lock');
      undo.push(() => fs.closeSync(lockFd));
      if (!flock(lockFd, LOCK_EX | LOCK_NB, lp)) {
        const buf = Buffer.alloc(32);
        const holder = buf.subarray(0, fs.readSync(lockFd, buf, 0, buf.length, 0)).toString().trim();
        throw new ConflictError(
          `another neuv-bpf is tracing ${pinRoot}${holder ? ` (pid ${holder})` : ''}: the trace ring has one reader at a time`,
        );
      }
      fs.ftruncateSync(lockFd, 0);
      fs.writeSync(lockFd, `${process.pid}\n`, 0);
      const id = resolveFilter(opts.filter, pinRoot);
      const pins = Pins.open(pinRoot, ['config', 'trace']);
      undo.push(() => pins.close());
      const ring = RingBuffer.open(pins.map('trace').fd, `trace ring ${ringPath}`);
      undo.push(() => ring.close());
      // Records left over from an earlier session are not ours.
      ring.consume();
      const s = new TraceSession(opts, id, pins, ring, lockFd);
      s.renew();
      s.timer = setInterval(() => s.renewSafely(), opts.renewMs ?? RENEW_MS);
      if (opts.ref === false) s.timer.unref();
      process.on('exit', s.onExit);
      ring.watch((recs) => s.deliver(recs), {
        ref: opts.ref !== false,
        onError: (e) => log('trace').warn({ err: (e as Error).message }, 'reading the trace ring failed'),
      });
      log('trace').debug({ pinRoot, id }, 'datapath trace on');
      return s;
    } catch (e) {
      for (const f of undo.reverse()) {
        try {
          f();
        } catch {
          /* best effort */
        }
      }
      throw e;
    }
  }

  /** Writes trace_until = now + lease (and the filter), keeping dp_ifindex. */
  private renew(): void {
    const until = process.hrtime.bigint() + BigInt(this.opts.leaseMs ?? LEASE_MS) * 1_000_000n;
    writeLease(this.pinRoot, this.pins.config, until, traceFilterFlags(this.id));
  }

  private renewSafely(): void {
    try {
      this.renew();
    } catch (e) {
      log('trace').warn({ err: (e as Error).message }, 'could not renew the trace lease');
    }
  }

  /** trace_until = 0 and no filter. Synchronous (also runs from process 'exit'). */
  private switchOff(): void {
    try {
      writeLease(this.pinRoot, this.pins.config, 0n, 0);
    } catch (e) {
      log('trace').warn({ err: (e as Error).message }, 'could not switch the datapath trace off (the lease lapses by itself within seconds)');
    }
  }

  private deliver(recs: Buffer[]): void {
    for (const b of recs) {
      let r: TraceRecord;
      try {
        r = decodeTrace(b);
      } catch (e) {
        log('trace').warn({ err: (e as Error).message }, 'malformed trace record skipped');
        continue;
      }
      if (this.lastLost !== undefined && r.lost !== this.lastLost) {
        // The count lives with the programs: a reload starts it again from 0.
        const n = r.lost > this.lastLost ? r.lost - this.lastLost : r.lost;
        this.lost += n;
        if (n > 0) this.opts.onLost?.(n);
      }
      this.lastLost = r.lost;
      this.records++;
      this.opts.onRecord(r);
    }
  }

  get active(): boolean {
    return !this.stopped;
  }

  /** Switches tracing off, delivers the records still in the ring, releases everything. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.switchOff();
    process.removeListener('exit', this.onExit);
    try {
      this.ring.unwatch();
      this.deliver(this.ring.consume());
    } catch (e) {
      log('trace').warn({ err: (e as Error).message }, 'reading the last trace records failed');
    } finally {
      this.ring.close();
      this.pins.close();
      try {
        flock(this.lockFd, LOCK_UN, traceLockPath(this.pinRoot));
      } finally {
        fs.closeSync(this.lockFd);
      }
    }
    log('trace').debug({ records: this.records, lost: this.lost }, 'datapath trace off');
  }
}

// ---------------------------------------------------------------- a bounded trace of views

/** How a bounded trace ended: 'count', 'duration', or the reason given to stop(). */
export interface TraceEnd {
  records: number;
  lost: number;
  why: string;
}

export interface BoundedTrace {
  /** The pair id traced, or undefined for every frame. */
  readonly id: number | undefined;
  /** Resolves when the trace is off: a bound reached or stop() called. */
  readonly done: Promise<TraceEnd>;
  /** Ends the trace; with discard, the records still in the ring are not delivered (the reader is gone). */
  stop(why: string, discard?: boolean): void;
}

/**
 * A trace session whose records reach onView as TraceViews (names of this
 * netns, wall-clock times), until `count` records, `durationS` seconds or
 * stop(): the CLI's `trace` and the API's GET /v1/trace.
 */
export function boundedTrace(o: {
  pinRoot: string;
  filter: TraceFilter;
  count?: number;
  durationS?: number;
  onView: (v: TraceView) => void;
  onLost?: (n: number) => void;
}): BoundedTrace {
  const count = o.count ?? Infinity;
  const names = new IfNames();
  const wall = monoToWall();
  let seen = 0;
  let discarding = false;
  let finish!: (why: string) => void;
  const ended = new Promise<string>((resolve) => (finish = resolve));
  const session = TraceSession.start({
    pinRoot: o.pinRoot,
    filter: o.filter,
    onRecord: (r) => {
      if (seen >= count || discarding) return;
      seen++;
      o.onView(viewRecord(r, names, wall));
      if (seen >= count) finish('count');
    },
    onLost: o.onLost,
  });
  const timer = o.durationS !== undefined ? setTimeout(() => finish('duration'), o.durationS * 1000) : undefined;
  const done = ended.then((why) => {
    if (timer) clearTimeout(timer);
    session.stop();
    return { records: seen, lost: session.lost, why };
  });
  return {
    id: session.id,
    done,
    stop: (why, discard = false) => {
      if (discard) discarding = true;
      finish(why);
    },
  };
}

/**
 * The tracer's part of neuv_config: trace_until and the filter bits of flags
 * (filterFlags: traceFilterFlags()), the rest kept, under the config lock
 * (src/config.ts). until 0 and filter 0 switch tracing off.
 */
export function writeLease(pinRoot: string, config: MapFd, until: bigint, filterFlags: number): void {
  updateConfig(pinRoot, config, (c) => ({ ...c, flags: (c.flags & ~(ConfigFlag.TRACE_ID | ConfigFlag.TRACE_ID_MASK)) | filterFlags, traceUntil: until }));
}

/** Reads neuv_config.trace_until and flags (for tests and `show`-like tools). */
export function traceState(pinRoot: string): { traceUntil: bigint; flags: number; now: bigint } {
  return Pins.with(pinRoot, ['config'], ({ config }) => {
    const v = config.lookup(u32Key(0));
    if (!v) throw new NeuvError(`${pinRoot}/${MAPS.config.name} has no entry 0`);
    const c = decodeConfig(v);
    return { traceUntil: c.traceUntil, flags: c.flags, now: process.hrtime.bigint() };
  });
}

// ---------------------------------------------------------------- riding along a command (--log-level trace)

let rideAlong: TraceSession | undefined;

/**
 * `--log-level trace`: the datapath trace is on while the command runs and
 * every record is a trace-level log line (module "dp"). Never fails the
 * command: if the datapath is not loaded or another tracer reads the ring, it
 * says so at debug level and carries on.
 */
export function startCommandTrace(pinRoot: string): void {
  if (rideAlong) return;
  const lg = log('dp');
  const names = new IfNames();
  const wall = monoToWall();
  try {
    rideAlong = TraceSession.start({
      pinRoot,
      ref: false,
      onRecord: (r) => {
        const v = viewRecord(r, names, wall);
        // pino has its own "time": keep the record's as the line's text and ktimeNs.
        const { time: _time, ...fields } = v;
        lg.trace(fields, formatView(v));
      },
      onLost: (n) => lg.warn({ lost: n }, `${n} trace records lost (ring full)`),
    });
  } catch (e) {
    lg.debug({ err: (e as Error).message }, 'datapath trace not available for this command');
  }
}

/** Ends the ride-along trace (idempotent): what is left in the ring is logged first. */
export function stopCommandTrace(): void {
  const s = rideAlong;
  rideAlong = undefined;
  s?.stop();
}
