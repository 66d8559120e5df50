/**
 * A supervisor of the enforcer DP with a per-node failure policy
 * (docs/neuvector-dp.md, "When the DP dies"):
 *
 *  - fail-closed (the default, and what NeuVector's tc pipe does): pairs in
 *    FWD stay in FWD while the DP is gone, so their traffic is black-holed
 *    until it returns. The watcher only reports.
 *  - fail-open: when the DP is gone, every FWD pair is switched to BYPASS
 *    (the pair mode API: one map update per port, no frame dropped by the
 *    switch); when it is back, the pairs this watcher switched go back to
 *    FWD. Pairs someone else changed meanwhile are left alone.
 *
 * How "gone" is told: a ctrl_keep_alive over the control socket every
 * intervalMs (200), failing after timeoutMs (300), plus the DP's packet
 * socket on vth-neuv (its ring, in /proc/net/packet of the enforcer netns).
 * The keep-alive catches a dead or hung control thread, and a SIGKILLed DP
 * at once (its socket file stays behind, but sending to it is refused); the
 * ring catches a DP that answers but reads nothing, and is what tells that
 * a restarted DP is ready for frames again (it opens the ring only when its
 * agent sends ctrl_add_srvc_port). The process id alone says neither, and
 * the socket file outlives a SIGKILL. Worst case from death to BYPASS:
 * intervalMs + timeoutMs + one switch per pair.
 *
 * The pairs a watcher put in BYPASS outlive it: they are kept in a state file
 * (watchStatePath: /run/neuv-bpf/<pin root>.watch.json, rewritten atomically
 * at every change, removed when empty). A watcher that starts reads it and
 * puts those pairs back in FWD once the DP answers, so a supervisor killed
 * while the DP was down does not leave them in BYPASS for good. A pair is
 * named by id and MAC: an id reused by another container is left alone.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { LOCK_DIR, lockDirFile } from '../lock';
import { log } from '../log';
import { Datapath } from '../pairs';
import { VTH_IFINDEX } from '../layout';
import { DpClient } from './client';

export type FailPolicy = 'closed' | 'open';
export const FAIL_POLICIES: readonly FailPolicy[] = ['closed', 'open'];

export interface WatchEvent {
  /** Date.now() when it was seen. */
  time: number;
  state: 'up' | 'down';
  /** Why: "keep-alive: ...", "no ring on vth-neuv", "back". */
  why: string;
  /** Pair ids this event switched (to bypass on down, to fwd on up; fail-open only). */
  switched: number[];
  /** How long the switches took, ms. */
  switchMs: number;
}

export interface WatchOptions {
  pinRoot: string;
  /** The enforcer netns (name or path) when this process is not in it. */
  netns?: string;
  /**
   * The DP's filesystem root as seen from here: '' when it shares this
   * /tmp (NeuVector's agent and DP do), /proc/<pid>/root for one with a
   * private /tmp; a function when it changes (a restarted DP has a new pid),
   * returning undefined when there is no DP process.
   */
  dpRoot?: string | (() => string | undefined);
  policy?: FailPolicy;
  intervalMs?: number;
  timeoutMs?: number;
  /** Also require the DP's ring on vth-neuv (default true). */
  checkRing?: boolean;
  /**
   * Runs when the DP is back, before the pairs return to FWD: an agent
   * re-sends the DP its configuration here (srvc port, endpoints inline,
   * policies). Resolve false to try again at the next probe.
   */
  onBack?: (client: DpClient) => Promise<boolean | void>;
  onEvent?: (e: WatchEvent) => void;
}

/** Packet sockets bound to ifindex in the netns (this one, or `netns` through nsenter). */
export function ringsOn(ifindex: number, netns?: string): number {
  let text = '';
  if (!netns) {
    try {
      text = fs.readFileSync('/proc/thread-self/net/packet', 'utf8');
    } catch {
      return 0;
    }
  } else {
    const path = netns.includes('/') ? netns : `/run/netns/${netns}`;
    text = spawnSync('nsenter', [`--net=${path}`, '--', 'cat', '/proc/net/packet'], { encoding: 'utf8' }).stdout ?? '';
  }
  return text.split('\n').slice(1).filter((l) => Number(l.trim().split(/\s+/)[4]) === ifindex).length;
}

/** Where the pairs a watcher put in BYPASS are kept, per pin root (beside its lock and journal). */
export function watchStatePath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'watch.json');
}

/** A pair a watcher put in BYPASS: its id and its workload MAC. */
export interface BypassedPair {
  id: number;
  mac: string;
}

const STATE_VERSION = 1;

/** The pairs in the state file; none when there is none, or (logged) when it cannot be read. */
export function readWatchState(pinRoot: string): BypassedPair[] {
  const p = watchStatePath(pinRoot);
  let text: string;
  try {
    text = fs.readFileSync(p, 'utf8');
  } catch {
    return [];
  }
  try {
    const j = JSON.parse(text) as { version?: number; bypassed?: unknown };
    if (j.version !== STATE_VERSION || !Array.isArray(j.bypassed)) throw new Error(`not a version ${STATE_VERSION} state`);
    return j.bypassed.filter(
      (b): b is BypassedPair => typeof b === 'object' && b !== null && Number.isInteger((b as BypassedPair).id) && typeof (b as BypassedPair).mac === 'string',
    );
  } catch (e) {
    log('watch').warn({ path: p }, `ignoring the watch state file ${p}: ${(e as Error).message}`);
    return [];
  }
}

/** Rewrites the state file atomically (a temporary file renamed over it); removes it when no pair is left. */
export function writeWatchState(pinRoot: string, pairs: BypassedPair[]): void {
  const p = watchStatePath(pinRoot);
  if (pairs.length === 0) {
    fs.rmSync(p, { force: true });
    return;
  }
  fs.mkdirSync(LOCK_DIR, { recursive: true, mode: 0o700 });
  const tmp = `${p}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify({ version: STATE_VERSION, bypassed: pairs }) + '\n', { mode: 0o600 });
  fs.renameSync(tmp, p);
}

export class DpWatch {
  state: 'up' | 'down' | 'unknown' = 'unknown';
  readonly events: WatchEvent[] = [];
  /** Pairs this watcher (or one before it, from the state file) put in BYPASS and will put back in FWD: id -> MAC. */
  readonly bypassed = new Map<number, string>();
  private client: DpClient | undefined;
  private clientRoot: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly dp: Datapath;
  private readonly lg = log('watch');

  private constructor(private readonly o: WatchOptions) {
    this.dp = Datapath.open(o.pinRoot, o.netns ? { netns: o.netns } : {});
    for (const b of readWatchState(o.pinRoot)) this.bypassed.set(b.id, b.mac);
    if (this.bypassed.size) {
      this.lg.info({ ids: [...this.bypassed.keys()] }, `${this.bypassed.size} pairs a previous watcher put in bypass go back to fwd when the DP answers`);
    }
  }

  private saveState(): void {
    writeWatchState(this.o.pinRoot, [...this.bypassed].map(([id, mac]) => ({ id, mac })));
  }

  get policy(): FailPolicy {
    return this.o.policy ?? 'closed';
  }

  /** Starts probing at once and every intervalMs. */
  static start(o: WatchOptions): DpWatch {
    const w = new DpWatch(o);
    const tick = () => {
      if (w.stopped) return;
      w.running = w.probeOnce().catch((e: Error) => w.lg.error({ err: e }, `probe failed: ${e.message}`));
      void w.running.then(() => {
        if (!w.stopped) w.timer = setTimeout(tick, o.intervalMs ?? 200);
      });
    };
    tick();
    return w;
  }

  /** Resolves with the first event of that state (or at once if it is the state now). */
  async until(state: 'up' | 'down', timeoutMs = 10000): Promise<WatchEvent | undefined> {
    const n = this.events.length;
    const end = Date.now() + timeoutMs;
    if (this.state === state) return this.events[this.events.length - 1];
    while (Date.now() < end) {
      const e = this.events.slice(n).find((x) => x.state === state);
      if (e) return e;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`the watcher saw no '${state}' within ${timeoutMs} ms (state ${this.state})`);
  }

  /** Stops probing. Pairs it switched to BYPASS stay there (logged): FWD without a DP would black-hole them. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    this.client?.close();
    this.client = undefined;
    if (this.bypassed.size) {
      this.lg.warn({ ids: [...this.bypassed.keys()], state: watchStatePath(this.o.pinRoot) }, `stopping with ${this.bypassed.size} pairs still in bypass (the DP is gone); the next watcher puts them back`);
    }
    this.dp.close();
  }

  private root(): string | undefined {
    const r = this.o.dpRoot ?? '';
    return typeof r === 'function' ? r() : r;
  }

  /** Why the DP is not usable now, or undefined when it is. */
  private async check(): Promise<string | undefined> {
    const root = this.root();
    if (root === undefined) return 'no DP process';
    if (root && !fs.existsSync(`${root}/tmp`)) return `no DP at ${root}`;
    if (!this.client || this.clientRoot !== root) {
      this.client?.close();
      this.client = DpClient.open({ root });
      this.clientRoot = root;
    }
    try {
      await this.client.keepAlive(this.o.timeoutMs ?? 300);
    } catch (e) {
      // A reply socket in a DP's /tmp dies with that DP: bind again next time.
      this.client.close();
      this.client = undefined;
      return `keep-alive: ${(e as Error).message}`;
    }
    if (this.o.checkRing !== false && ringsOn(VTH_IFINDEX, this.o.netns) === 0) return 'no DP ring on vth-neuv';
    return undefined;
  }

  private emit(state: 'up' | 'down', why: string, switched: number[], switchMs: number): void {
    const e: WatchEvent = { time: Date.now(), state, why, switched, switchMs };
    this.state = state;
    this.events.push(e);
    this.lg.info({ ...e, policy: this.policy }, `DP ${state}: ${why}${switched.length ? `; ${switched.length} pairs to ${state === 'down' ? 'bypass' : 'fwd'} in ${switchMs.toFixed(1)} ms` : ''}`);
    this.o.onEvent?.(e);
  }

  /** One probe: reads the DP's state and applies the policy. */
  async probeOnce(): Promise<void> {
    const t0 = Date.now();
    const why = await this.check();
    if (why) {
      // Down (also: still down; a pair put in FWD meanwhile is bypassed too).
      const switched: number[] = [];
      const s0 = process.hrtime.bigint();
      if (this.policy === 'open') {
        for (const p of (await this.dp.show()).pairs) {
          if (p.mode !== 'fwd') continue;
          // Recorded before the switch: a watcher killed between the two leaves a
          // FWD pair in the file, which the next one finds in FWD and leaves alone.
          this.bypassed.set(p.id, p.mac ?? '');
          this.saveState();
          await this.dp.setMode({ id: p.id }, 'bypass');
          switched.push(p.id);
        }
      }
      const ms = Number(process.hrtime.bigint() - s0) / 1e6;
      if (this.state !== 'down' || switched.length) this.emit('down', why, switched, ms);
      return;
    }
    if (this.state === 'up') return;
    if (this.o.onBack && (await this.o.onBack(this.client!)) === false) return;
    const switched: number[] = [];
    const s0 = process.hrtime.bigint();
    if (this.bypassed.size) {
      const now = new Map((await this.dp.show()).pairs.map((p) => [p.id, p]));
      for (const [id, mac] of [...this.bypassed]) {
        const p = now.get(id);
        // Gone, changed by someone else, or the id now another container's: left alone.
        if (p && p.mode === 'bypass' && p.mac === mac) {
          await this.dp.setMode({ id }, 'fwd');
          switched.push(id);
        }
        this.bypassed.delete(id);
        this.saveState();
      }
    }
    const ms = Number(process.hrtime.bigint() - s0) / 1e6;
    this.emit('up', this.state === 'unknown' ? 'answering' : `back after ${t0 - (this.events[this.events.length - 1]?.time ?? t0)} ms`, switched, ms);
  }
}
