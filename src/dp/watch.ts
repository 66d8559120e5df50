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
 * Which DP: `locate` says where it is now (its pid and filesystem root),
 * asked again whenever there is none, so a DP restarted under a new pid is
 * found again (a pid file re-read; or the process holding its control
 * socket). Nothing fails open before a DP was seen alive once: until then
 * the watcher waits ('waiting').
 *
 * How "gone" is told: a pidfd of the DP (PidFd, src/bpf/pidfd.ts), whose
 * exit is an event, not a probe: a SIGKILLed DP is failed open in a few ms.
 * Besides, a ctrl_keep_alive over the control socket every intervalMs (200),
 * failing after timeoutMs (300), catches a hung control thread, and the DP's
 * packet socket on vth-neuv (its ring, in /proc/<pid>/net/packet) a DP that
 * answers but reads nothing; the ring is also what tells that a restarted DP
 * is ready for frames again (it opens it only when its agent sends
 * ctrl_add_srvc_port).
 *
 * The switch (Datapath.switchWatched) is a few map updates done at once in
 * the pidfd's callback: on maps held open since start, under the pin root's
 * lock taken without waiting (tryLockSync; withLock only when someone holds
 * it), with no netns switch, pin lookup or process. The CLI also raises its
 * priority (src/cli/watch.ts), so that on a loaded machine its wake-ups do
 * not queue behind every other runnable thread.
 *
 * The pairs a watcher put in BYPASS outlive it. The switch marks their port
 * entries (WATCH_BYPASS, in the same write as the mode), so the maps
 * themselves say which pairs a watcher holds: `show` marks them and a
 * watcher that starts puts them back in FWD once the DP answers, even when
 * the one before was killed between its switch and anything else. A pair
 * switched by someone else meanwhile (`pair mode`) loses the mark and is
 * left alone; a pair deleted and added again has no mark. Since when is kept
 * in a state file (watchStatePath: /run/neuv-bpf/<pin root>.watch.json,
 * rewritten atomically right after each switch, removed when empty); one that
 * cannot be written never holds up a switch: the error is logged once.
 * While pairs are held in BYPASS, the watcher says so every heldLogMs (a
 * minute).
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { MapFd, PidFd } from '../bpf';
import { UsageError } from '../errors';
import { faultPoint } from '../faults';
import { clearPairFlows } from '../flows';
import { Mode, VTH_IFINDEX } from '../layout';
import { tryLockSync, withLock } from '../lock';
import { log } from '../log';
import { mapPinPath, Pins } from '../pins';
import { readInputFile } from '../input';
import { Datapath } from '../pairs';
import { DP_SOCKET, DpClient, packetSocketsOn } from './client';
import { BypassedPair, readWatchState, watchStatePath, writeWatchState } from './watch-state';

export { BypassedPair, heldByWatch, readWatchState, watchStatePath, writeWatchState } from './watch-state';

export type FailPolicy = 'closed' | 'open';
export const FAIL_POLICIES: readonly FailPolicy[] = ['closed', 'open'];

/** A DP process: its pid and its filesystem root as seen from here ('' when it shares this /tmp). */
export interface DpProcess {
  pid: number;
  root: string;
}

export interface WatchEvent {
  /** Date.now() when it was seen. */
  time: number;
  /**
   * waiting: no DP seen yet (nothing fails open); up: a DP answers; down: the
   * DP seen before is gone; held: a reminder that pairs are still in BYPASS.
   */
  state: 'waiting' | 'up' | 'down' | 'held';
  /** Why: "exited (pid N)", "keep-alive: ...", "no DP ring on vth-neuv", "back after N ms"... */
  why: string;
  /** Pair ids this event switched (to bypass on down, to fwd on up; fail-open only); held: the pairs held. */
  switched: number[];
  /** How long the switches took, ms. */
  switchMs: number;
  /** The DP's pid (up, down). */
  pid?: number;
}

export interface WatchOptions {
  pinRoot: string;
  /** The enforcer netns (name or path) when this process is not in it. */
  netns?: string;
  /**
   * Where the DP is now, or undefined when there is none: asked while there
   * is no live DP (every intervalMs), so a restarted DP is found under its
   * new pid (dpFromPidFile, dpByControlSocket).
   */
  locate: () => DpProcess | undefined;
  policy?: FailPolicy;
  intervalMs?: number;
  timeoutMs?: number;
  /** Keep-alives over the DP's control socket (default true; false for a DP without one, the stub). */
  keepAlive?: boolean;
  /** Also require the DP's ring on vth-neuv (default true). */
  checkRing?: boolean;
  /** How often to say that pairs are still held in BYPASS (default a minute). */
  heldLogMs?: number;
  /**
   * Runs when the DP is back, before the pairs return to FWD: an agent
   * re-sends the DP its configuration here (srvc port, endpoints inline,
   * policies). Resolve false to try again at the next probe.
   */
  onBack?: (client: DpClient) => Promise<boolean | void>;
  onEvent?: (e: WatchEvent) => void;
}

/** The DP whose pid is in `file` now (a restarted DP, or its supervisor, rewrites it); its root is /proc/<pid>/root. */
export function dpFromPidFile(file: string): DpProcess | undefined {
  let text: string;
  try {
    text = readInputFile(file, '--dp', 64).trim(); // a regular file of a few bytes: a FIFO there would block for ever
  } catch {
    return undefined;
  }
  if (!/^[0-9]{1,9}$/.test(text) || Number(text) < 1 || !fs.existsSync(`/proc/${text}`)) return undefined;
  return { pid: Number(text), root: `/proc/${text}/root` };
}

function sameFile(a: string, b: string): boolean {
  try {
    const x = fs.statSync(a);
    const y = fs.statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/**
 * The DP sharing this /tmp (NeuVector's enforcer container): the process
 * holding the socket bound to /tmp/dp_listen.sock in this netns (from
 * /proc/net/unix, then the /proc/<pid>/fd of each process), whose own
 * /tmp/dp_listen.sock is ours. A socket file left by a dead DP is not in
 * /proc/net/unix, so /proc is scanned only while a DP is listening.
 */
export function dpByControlSocket(): DpProcess | undefined {
  let unix: string;
  try {
    unix = fs.readFileSync('/proc/thread-self/net/unix', 'utf8');
  } catch {
    return undefined;
  }
  const inodes = new Set(
    unix.split('\n').slice(1).map((l) => l.trim().split(/\s+/)).filter((f) => f[7] === DP_SOCKET).map((f) => `socket:[${f[6]}]`),
  );
  if (!inodes.size) return undefined;
  for (const pid of fs.readdirSync('/proc').filter((d) => /^[0-9]+$/.test(d))) {
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let target: string;
      try {
        target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (inodes.has(target) && sameFile(`/proc/${pid}/root${DP_SOCKET}`, DP_SOCKET)) return { pid: Number(pid), root: '' };
    }
  }
  return undefined;
}

/**
 * Where the DP is, asked again whenever there is none, so a restarted DP is
 * followed: 'local' (it shares our /tmp, as NeuVector's agent and DP do: the
 * process holding /tmp/dp_listen.sock) or a pid file (a restarted DP, or its
 * supervisor, writes its new pid there). A bare pid is refused: it cannot
 * follow a restart, and the pairs failed open would stay in BYPASS for good.
 * `what` names the option in errors.
 */
export function dpLocator(dp: string, what = '--dp'): () => DpProcess | undefined {
  if (dp === 'local') return dpByControlSocket;
  if (/^[0-9]+$/.test(dp)) {
    throw new UsageError(`${what} ${dp}: a pid does not follow a restarted DP (the pairs failed open would stay in BYPASS for good); give a pid file the DP's supervisor rewrites, or 'local'`);
  }
  if (!dp.startsWith('/')) throw new UsageError(`${what} '${dp}' is not 'local' or the absolute path of a pid file`);
  return () => dpFromPidFile(dp);
}

/**
 * Whether a process is dying or dead: gone from /proc, or a zombie (Z, X). A SIGKILLed DP's leader is a
 * zombie, its root gone, before its pidfd says so (that waits for every thread of it to exit).
 */
function exiting(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return /^[ZX]/.test(stat.slice(stat.lastIndexOf(')') + 2));
  } catch {
    return true;
  }
}

/** The DP being watched: its process, its pidfd, and a control client once one was needed. */
interface LiveDp extends DpProcess {
  pidfd: PidFd;
  client?: DpClient;
}

function closeDp(d: LiveDp): void {
  d.pidfd.close();
  d.client?.close();
  d.client = undefined;
}

export class DpWatch extends EventEmitter {
  state: 'waiting' | 'up' | 'down' = 'waiting';
  readonly events: WatchEvent[] = [];
  /** Pairs this watcher (or one before it, from the state file) put in BYPASS and will put back in FWD. */
  readonly bypassed = new Map<number, BypassedPair>();
  private cur: LiveDp | undefined;
  private timer: NodeJS.Timeout | undefined;
  private heldTimer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  /** Switches run one at a time (a death seen by the pidfd while a probe switches pairs back waits for it). */
  private switching: Promise<unknown> = Promise.resolve();
  private stopped = false;
  private lastProbeError = '';
  private stateError = '';
  private readonly dp: Datapath;
  /** neuv_ports and neuv_ids, open from start to stop (the switch needs no pin lookup); reopened after a reload. */
  private maps: Pins;
  private readonly lg = log('watch');

  private constructor(private readonly o: WatchOptions) {
    super();
    this.dp = Datapath.open(o.pinRoot, o.netns ? { netns: o.netns } : {});
    this.maps = Pins.open(o.pinRoot, ['ports', 'ids']);
    for (const b of readWatchState(o.pinRoot)) this.bypassed.set(b.id, b);
    // Pairs marked in the maps but not in the state file: a watcher killed between its switch and the file.
    for (const p of this.marked()) if (!this.bypassed.has(p.id)) this.bypassed.set(p.id, { id: p.id, mac: p.mac });
    if (this.bypassed.size) {
      this.lg.info({ ids: [...this.bypassed.keys()] }, `${this.bypassed.size} pairs a previous watcher put in bypass go back to fwd when the DP answers`);
    }
  }

  get policy(): FailPolicy {
    return this.o.policy ?? 'closed';
  }

  /** The DP followed now (its pid and root), or undefined while there is none. */
  get current(): DpProcess | undefined {
    return this.cur && { pid: this.cur.pid, root: this.cur.root };
  }

  /** Starts watching: waits for a DP (nothing fails open before one was seen), then follows it. */
  static start(o: WatchOptions): DpWatch {
    const w = new DpWatch(o);
    w.emitEvent('waiting', 'no DP seen yet: waiting for one (nothing fails open before it was seen alive)', [], 0);
    const tick = () => {
      if (w.stopped) return;
      w.running = w.probe().catch((e: Error) => {
        // Once per distinct failure: a condition that lasts is not worth a line per probe.
        if (e.message !== w.lastProbeError) w.lg.error(`probe failed: ${e.message}`);
        w.lastProbeError = e.message;
      });
      void w.running.then(() => {
        if (!w.stopped) w.timer = setTimeout(tick, o.intervalMs ?? 200);
      });
    };
    tick();
    w.heldTimer = setInterval(() => w.remindHeld(), o.heldLogMs ?? 60000);
    return w;
  }

  /** Resolves with the first event of that state from now (or the last one, if it is the state now). */
  async until(state: 'up' | 'down' | 'held', timeoutMs = 10000): Promise<WatchEvent | undefined> {
    const n = this.events.length;
    const end = Date.now() + timeoutMs;
    if (this.state === state) return this.events.filter((e) => e.state === state).pop();
    while (Date.now() < end) {
      const e = this.events.slice(n).find((x) => x.state === state);
      if (e) return e;
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error(`the watcher saw no '${state}' within ${timeoutMs} ms (state ${this.state})`);
  }

  /** Stops watching. Pairs it switched to BYPASS stay there (logged): FWD without a DP would black-hole them. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.heldTimer) clearInterval(this.heldTimer);
    await this.running;
    await this.switching;
    if (this.cur) closeDp(this.cur);
    this.cur = undefined;
    if (this.bypassed.size) {
      this.lg.warn({ ids: [...this.bypassed.keys()], state: watchStatePath(this.o.pinRoot) }, `stopping with ${this.bypassed.size} pairs still in bypass (the DP is gone); the next watcher puts them back`);
    }
    this.dp.close();
    this.maps.close();
  }

  /** Pairs whose port entries carry the watcher's mark (WATCH_BYPASS) and are in BYPASS. */
  private marked(): Array<{ id: number; mac: string }> {
    return Datapath.heldInMaps(this.heldMaps());
  }

  /** Datapath.switchWatched under the pin root's lock: taken at once when free, else waited for. */
  private async switchWatched(to: typeof Mode.BYPASS | typeof Mode.FWD): Promise<Array<{ id: number; mac: string }>> {
    const run = () => Datapath.switchWatched(this.heldMaps(), to);
    const release = tryLockSync(this.o.pinRoot);
    if (!release) return withLock(this.o.pinRoot, run);
    try {
      return run();
    } finally {
      release();
    }
  }

  /** The maps held, reopened when the pinned neuv_ports is another map (the datapath reloaded since): one map id read. */
  private heldMaps(): Pins {
    const pinned = MapFd.fromPin(mapPinPath(this.o.pinRoot, 'ports'));
    try {
      if (pinned.info.id === this.maps.ports.info.id) return this.maps;
    } finally {
      pinned.close();
    }
    this.maps.close();
    this.maps = Pins.open(this.o.pinRoot, ['ports', 'ids']);
    return this.maps;
  }

  /** The DP's flow decisions of switched pairs belong to the old mode (as setMode clears them). */
  private clearFlows(ids: number[]): void {
    for (const id of ids) {
      try {
        clearPairFlows(this.o.pinRoot, id);
      } catch (e) {
        this.lg.warn({ id, err: (e as Error).message }, 'could not clear the flows of a switched pair');
      }
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.switching.then(fn, fn);
    this.switching = p.catch(() => undefined);
    return p;
  }

  /** Why the DP is not usable now, or undefined when it is; its exit named as such whichever check saw it first. */
  private async health(d: LiveDp): Promise<string | undefined> {
    const why = await this.check(d);
    return why && (d.pidfd.exited() || exiting(d.pid)) ? `exited (pid ${d.pid})` : why;
  }

  private async check(d: LiveDp): Promise<string | undefined> {
    if (d.root && !fs.existsSync(`${d.root}/tmp`)) return `no DP at ${d.root}`;
    if (this.o.keepAlive !== false) {
      d.client ??= DpClient.open({ root: d.root });
      try {
        await d.client.keepAlive(this.o.timeoutMs ?? 300);
      } catch (e) {
        // A reply socket in a DP's /tmp dies with that DP: bind again next time.
        d.client.close();
        d.client = undefined;
        return `keep-alive: ${(e as Error).message}`;
      }
    }
    if (this.o.checkRing !== false && packetSocketsOn(d.pid, VTH_IFINDEX) === 0) return 'no DP ring on vth-neuv';
    return undefined;
  }

  private emitEvent(state: WatchEvent['state'], why: string, switched: number[], switchMs: number, pid?: number): void {
    const e: WatchEvent = { time: Date.now(), state, why, switched, switchMs, ...(pid !== undefined ? { pid } : {}) };
    if (state !== 'held') this.state = state;
    this.events.push(e);
    const what = state === 'held' ? `${switched.length} pairs held in bypass: ${why}` : `DP ${state}: ${why}${switched.length ? `; ${switched.length} pairs to ${state === 'down' ? 'bypass' : 'fwd'} in ${switchMs.toFixed(1)} ms` : ''}`;
    if (state === 'held') this.lg.warn({ ids: switched }, what);
    else this.lg.info({ ...e, policy: this.policy }, what);
    this.o.onEvent?.(e);
    this.emit('event', e);
    this.emit(state, e);
  }

  /** Writes the state file; a failure is logged once (one line) and never stops a switch. */
  private saveState(): void {
    try {
      writeWatchState(this.o.pinRoot, [...this.bypassed.values()]);
      if (this.stateError) this.lg.warn(`the watch state file ${watchStatePath(this.o.pinRoot)} is written again`);
      this.stateError = '';
    } catch (e) {
      const msg = (e as Error).message;
      if (!this.stateError) {
        this.lg.warn({ path: watchStatePath(this.o.pinRoot) }, `cannot write the watch state file (${msg}): the pairs held in bypass are not recorded for a next watcher or show`);
      }
      this.stateError = msg;
    }
  }

  private remindHeld(): void {
    if (this.stopped || this.state === 'up' || !this.bypassed.size) return;
    const since = [...this.bypassed.values()].map((b) => b.since).filter(Boolean).sort()[0];
    this.emitEvent('held', `since ${since ?? 'before this watcher'}, until the DP is back (fail-open)`, [...this.bypassed.keys()], 0);
  }

  /** Fail-open: every FWD pair to BYPASS, recorded after the switch. Returns the ids switched and the time taken. */
  private async bypassFwd(): Promise<{ switched: number[]; ms: number }> {
    const switched: number[] = [];
    const s0 = process.hrtime.bigint();
    let ms = 0;
    if (this.policy === 'open') {
      const since = new Date().toISOString();
      for (const p of await this.switchWatched(Mode.BYPASS)) {
        this.bypassed.set(p.id, { id: p.id, mac: p.mac, since });
        switched.push(p.id);
      }
      ms = Number(process.hrtime.bigint() - s0) / 1e6;
      if (switched.length) {
        faultPoint('watch:after-switch'); // killed here, the marks in the maps still say which pairs are held
        this.saveState();
        this.clearFlows(switched);
      }
    }
    return { switched, ms };
  }

  /** The DP watched is gone: fail open (or only report, fail-closed). */
  private goDown(d: LiveDp, why: string): Promise<void> {
    return this.serial(async () => {
      if (this.cur !== d) return; // already handled (pidfd and probe both saw it)
      this.cur = undefined;
      closeDp(d);
      const { switched, ms } = await this.bypassFwd();
      this.emitEvent('down', why, switched, ms, d.pid);
    });
  }

  /** A DP answers: follow it (its pidfd armed), then put back the pairs held in BYPASS. */
  private goUp(d: LiveDp, why: string): Promise<void> {
    return this.serial(async () => {
      this.cur = d;
      void d.pidfd.wait().then(
        (r) => (r === 'exited' && !this.stopped ? this.goDown(d, `exited (pid ${d.pid})`) : undefined),
        (e: Error) => this.lg.error(`waiting for the DP's exit: ${e.message}`),
      );
      const switched: number[] = [];
      const s0 = process.hrtime.bigint();
      if (this.bypassed.size || this.marked().length) {
        // The marked pairs: gone, changed by someone else, or the id now another container's are not.
        for (const p of await this.switchWatched(Mode.FWD)) switched.push(p.id);
        this.bypassed.clear();
        this.saveState();
        this.clearFlows(switched);
      }
      const ms = Number(process.hrtime.bigint() - s0) / 1e6;
      this.emitEvent('up', why, switched, ms, d.pid);
    });
  }

  /** One probe: the DP followed still healthy, or (none followed) one found and taken up. */
  async probe(): Promise<void> {
    const d = this.cur;
    if (d) {
      const why = await this.health(d);
      if (why) await this.goDown(d, why);
      return;
    }
    if (this.state === 'down') {
      // Still down: a pair put in FWD meanwhile is bypassed too.
      const { switched, ms } = await this.serial(() => this.bypassFwd());
      if (switched.length) this.emitEvent('down', 'still down', switched, ms);
    }
    const loc = this.o.locate();
    const pidfd = loc && PidFd.open(loc.pid);
    if (!loc || !pidfd) return;
    const cand: LiveDp = { ...loc, pidfd };
    const t0 = Date.now();
    const why = await this.health(cand);
    let ok = !why && !this.stopped;
    if (ok && this.o.onBack) {
      cand.client ??= DpClient.open({ root: cand.root });
      ok = (await this.o.onBack(cand.client)) !== false;
    }
    if (!ok || pidfd.exited()) {
      closeDp(cand);
      return;
    }
    const last = this.events.filter((e) => e.state === 'down').pop();
    await this.goUp(cand, this.state === 'waiting' ? `answering (pid ${loc.pid})` : `back (pid ${loc.pid}) after ${t0 - (last?.time ?? t0)} ms`);
  }
}
