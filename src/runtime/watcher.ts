/**
 * The runtime watcher of `neuv-bpf serve --runtime podman|docker`
 * (docs/containers.md): for containers already running when the service
 * starts, or started without the OCI hook. It follows the runtime's events
 * and
 *  - at a container's start, intercepts it in the mode it asks for (the
 *    hook's resolution: src/runtime/container.ts), unless it is intercepted
 *    already (the hook did it: its journal record says so), all under the
 *    intercept lock, so it never races the hook or the CLI;
 *  - once it died, releases it by its record, after the runtime's own
 *    network teardown (its cleanup or remove event; at the latest
 *    releaseGraceMs after died), so the release never races that teardown;
 *  - at start-up (and whenever the event stream had to be restarted),
 *    resyncs: every running container not intercepted is intercepted, every
 *    record whose container is gone is released.
 *
 * Event-driven interception comes after the container's process started:
 * the window the OCI hook closes stays open for the time the event and the
 * intercept take (measured in docs/containers.md). The watcher is the
 * net under the hook, not a replacement for it.
 *
 * Events of one container are handled in order, one at a time; how the
 * intercept and release are done is the service's (it registers the
 * container with the DP too).
 */
import * as fs from 'node:fs';
import { oneLine } from '../errors';
import { InterceptResult, ReleaseResult } from '../intercept';
import { findNetns, findRecord, halfDone, INTERCEPT_LOCK, recordProblem } from '../intercept/journal';
import { INTERCEPT_LOCK_WAIT_MS } from '../intercept/steps';
import { withLock } from '../lock';
import { log } from '../log';
import { ModeName } from '../pairs';
import {
  ContainerMode, ContainerOutcome, ContainerRecord, containerRecordIds, interceptContainer, readContainerRecord, releaseContainer,
} from './container';
import { DOCKER_SOCKET, DockerApi } from './docker';
import { PodmanCli, RuntimeClient, RuntimeContainer, RuntimeEvent } from './podman';

/** The runtimes the watcher follows: podman's CLI; the Docker Engine API on a socket (dockerd's, or podman's service). */
export const RUNTIMES = ['podman', 'docker'] as const;
export type RuntimeName = (typeof RUNTIMES)[number];

export interface RuntimeWatchOptions {
  pinRoot: string;
  runtime: RuntimeName;
  /** podman: global options given to every call of its CLI. */
  args?: string[];
  /** docker: the API's unix socket (default /var/run/docker.sock). */
  socket?: string;
  /** The mode of a container without the annotation (none: not intercepted). */
  defaultMode: ContainerMode;
  /** Intercepts a container's port (the service's intercept: in this process, DP registration included). */
  intercept: (r: { pid: number; port: string; mode: ModeName }) => Promise<InterceptResult>;
  /** Releases a container by its record (its netns may be gone). */
  release: (rec: ContainerRecord) => Promise<ReleaseResult>;
  /** After died, how long to wait for the runtime's cleanup before releasing anyway (default 10 s). */
  releaseGraceMs?: number;
  /** Each action, as it is done (metrics). */
  onAction?: (a: RuntimeAction) => void;
}

export type RuntimeActionName = 'intercepted' | 'released' | 'done' | 'skipped' | 'failed';

export interface RuntimeAction {
  /** Date.now() when it was done. */
  time: number;
  id: string;
  name: string;
  /** What started it: an event's status (start, died, cleanup, remove) or resync. */
  cause: string;
  action: RuntimeActionName;
  line: string;
  /** An intercept of a start event: ms from the event's time to the intercept done. */
  delayMs?: number;
}

/** Container states in which a container is still alive (its record stays). */
const ALIVE = new Set(['created', 'configured', 'initialized', 'running', 'paused', 'stopping', 'restarting']);

export class RuntimeWatcher {
  state: 'starting' | 'following' | 'restarting' | 'stopped' = 'starting';
  readonly stats: Record<RuntimeActionName, number> & { events: number } = { events: 0, intercepted: 0, released: 0, done: 0, skipped: 0, failed: 0 };
  readonly recent: RuntimeAction[] = [];
  private readonly cli: RuntimeClient;
  private child: { stop(): void } | undefined;
  private readonly chains = new Map<string, Promise<void>>();
  private readonly graceTimers = new Map<string, NodeJS.Timeout>();
  private restartTimer: NodeJS.Timeout | undefined;
  private stopping = false;
  /** Resolves once the first resync is done. */
  readonly ready: Promise<void>;
  private resolveReady!: () => void;

  get name(): RuntimeName {
    return this.o.runtime;
  }

  /** docker: the API's socket. */
  get socket(): string | undefined {
    return this.o.runtime === 'docker' ? (this.o.socket ?? DOCKER_SOCKET) : undefined;
  }

  get defaultMode(): ContainerMode {
    return this.o.defaultMode;
  }

  private constructor(private readonly o: RuntimeWatchOptions) {
    this.cli = o.runtime === 'docker' ? new DockerApi(o.socket ?? DOCKER_SOCKET) : new PodmanCli(o.args ?? []);
    this.ready = new Promise((r) => (this.resolveReady = r));
  }

  /** Starts following (events first, then the resync, so nothing falls in between). */
  static start(o: RuntimeWatchOptions): RuntimeWatcher {
    const w = new RuntimeWatcher(o);
    w.follow();
    return w;
  }

  private follow(): void {
    const lg = log('runtime');
    // From a second ago: podman's file backend starts reading where the file ends when it opens it (docker's since is in seconds).
    this.child = this.cli.follow(Date.now() - 1000, (e) => this.onEvent(e), (why) => {
      this.child = undefined;
      if (this.stopping) return;
      lg.warn({ why }, 'the runtime\'s event stream ended: restarting it in 1 s (then a resync)');
      this.state = 'restarting';
      this.restartTimer = setTimeout(() => this.follow(), 1000);
    });
    void this.resync().then(() => {
      if (this.stopping) return;
      if (this.child) this.state = 'following';
      this.resolveReady();
    });
  }

  /** Runs fn after every earlier task of this container. */
  private queue(id: string, fn: () => Promise<void>): Promise<void> {
    const p = (this.chains.get(id) ?? Promise.resolve()).then(fn, fn).catch(() => undefined);
    this.chains.set(id, p);
    void p.then(() => {
      if (this.chains.get(id) === p) this.chains.delete(id);
    });
    return p;
  }

  private record(a: Omit<RuntimeAction, 'time'>): void {
    const full = { time: Date.now(), ...a };
    this.stats[a.action]++;
    this.recent.push(full);
    if (this.recent.length > 100) this.recent.splice(0, this.recent.length - 100);
    const lg = log('runtime');
    if (a.action === 'failed') lg.warn({ id: a.id, name: a.name, cause: a.cause }, a.line);
    else lg.info({ id: a.id, name: a.name, cause: a.cause, delayMs: a.delayMs }, a.line);
    this.o.onAction?.(full);
  }

  private onEvent(e: RuntimeEvent): void {
    if (this.stopping) return;
    this.stats.events++;
    switch (e.status) {
      case 'start':
        void this.queue(e.id, () => this.started(e.id, e.status, e.time));
        break;
      case 'died': {
        // The runtime tears the network down after died: released after its cleanup, or after the grace.
        if (!readContainerRecord(this.o.pinRoot, e.id) || this.graceTimers.has(e.id)) break;
        const t = setTimeout(() => {
          this.graceTimers.delete(e.id);
          void this.queue(e.id, () => this.stopped(e.id, e.name, 'died'));
        }, this.o.releaseGraceMs ?? 10000);
        this.graceTimers.set(e.id, t);
        break;
      }
      case 'cleanup':
      case 'remove': {
        clearTimeout(this.graceTimers.get(e.id));
        this.graceTimers.delete(e.id);
        void this.queue(e.id, () => this.stopped(e.id, e.name, e.status));
        break;
      }
      default:
    }
  }

  /** Whether the journal holds a live interception of this container port (the hook's, the CLI's, ours). */
  private intercepted(netnsInode: number, port: string): boolean {
    const r = findRecord(this.o.pinRoot, netnsInode, port);
    return r !== undefined && !halfDone(r) && recordProblem(r) === undefined;
  }

  /** A container started (an event; or running at a resync, no event time). */
  private async started(id: string, cause: string, eventTime?: number, known?: RuntimeContainer): Promise<void> {
    let name = known?.name ?? '';
    try {
      const c = known ?? (await this.cli.inspect([id]))[0];
      if (!c) return; // another podman's (the events file is shared by every storage root) or removed already
      name = c.name;
      if (!c.running) {
        this.record({ id, name, cause, action: 'skipped', line: `container ${id}: not running any more, nothing to intercept` });
        return; // its died event follows
      }
      const prev = readContainerRecord(this.o.pinRoot, id);
      if (prev && !this.stillHere(prev, c.pid)) await this.stopped(id, name, 'restart');
      const out = await withLock(this.o.pinRoot, () => interceptContainer(
        { id, pid: c.pid, annotations: c.annotations },
        { pinRoot: this.o.pinRoot, defaultMode: this.o.defaultMode, by: 'watcher' },
        async (r) => ({ r: await this.o.intercept(r), via: undefined }),
        (ino, port) => this.intercepted(ino, port),
      ), INTERCEPT_LOCK_WAIT_MS, INTERCEPT_LOCK);
      this.record({ id, name, cause, action: out.action as RuntimeActionName, line: out.line, ...(out.action === 'intercepted' && eventTime !== undefined ? { delayMs: Date.now() - eventTime } : {}) });
    } catch (e) {
      this.record({ id, name, cause, action: 'failed', line: `container ${id}: not intercepted: ${oneLine(e)}` });
    }
  }

  /** Whether a record names the netns the container's process is in now (not one of a run before). */
  private stillHere(rec: ContainerRecord, pid: number): boolean {
    try {
      return fs.statSync(`/proc/${pid}/ns/net`).ino === rec.netnsInode;
    } catch {
      return false;
    }
  }

  /** A container stopped (or is gone): released by its record. */
  private async stopped(id: string, name: string, cause: string): Promise<void> {
    try {
      const out: ContainerOutcome<undefined> = await releaseContainer(this.o.pinRoot, id, async (rec) => ({ r: await this.o.release(rec), via: undefined }));
      if (out.action !== 'skipped' || cause !== 'cleanup') this.record({ id, name, cause, action: out.action as RuntimeActionName, line: out.line });
    } catch (e) {
      this.record({ id, name, cause, action: 'failed', line: `container ${id}: not released: ${oneLine(e)}` });
    }
  }

  /**
   * Running containers not intercepted are intercepted; records whose
   * container is gone (exited, or unknown to the runtime and its netns
   * gone) are released. A record of a container the runtime does not know
   * whose netns is still there is another runtime's: left alone.
   */
  private async resync(): Promise<void> {
    const lg = log('runtime');
    let states: Map<string, string>;
    let running: RuntimeContainer[];
    try {
      states = await this.cli.states();
      running = await this.cli.inspect([...states].filter(([, s]) => s === 'running').map(([id]) => id));
    } catch (e) {
      lg.warn({ err: oneLine(e) }, 'resync: could not list the containers');
      return;
    }
    const tasks: Promise<void>[] = [];
    for (const id of containerRecordIds(this.o.pinRoot)) {
      const s = states.get(id);
      if (s !== undefined && ALIVE.has(s)) continue;
      if (s === undefined) {
        const rec = readContainerRecord(this.o.pinRoot, id);
        const j = rec && findRecord(this.o.pinRoot, rec.netnsInode, rec.port);
        if (j && findNetns(j.target)) continue; // another runtime's container, alive
      }
      tasks.push(this.queue(id, () => this.stopped(id, '', 'resync')));
    }
    for (const c of running) tasks.push(this.queue(c.id, () => this.started(c.id, 'resync', undefined, c)));
    await Promise.all(tasks);
    lg.info({ running: running.length, records: containerRecordIds(this.o.pinRoot).length }, 'resync done');
  }

  /** Stops following; what is in flight finishes. Interceptions stay (the hook's poststop or the next watcher releases them). */
  async stop(): Promise<void> {
    this.stopping = true;
    this.state = 'stopped';
    clearTimeout(this.restartTimer);
    for (const t of this.graceTimers.values()) clearTimeout(t);
    this.graceTimers.clear();
    this.child?.stop();
    await Promise.all([...this.chains.values()]);
    this.resolveReady();
  }
}
