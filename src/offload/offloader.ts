/**
 * Automatic offload of what NeuVector's DP decided (`serve --offload RULE`,
 * docs/flow-offload.md "Automatic offload"): every rule.everyMs the DP's
 * sessions are read over its control socket (ctrl_list_session), and each
 * session the rule takes (decideSession) of a pair in FWD gets its decision
 * written into neuv_flows: allow (the kernel carries its later frames), deny
 * (the kernel drops them). Nothing is decided here: only sessions the DP has
 * listed, so decided, with the packets the rule asks for already through
 * it; a new session has no entry and reaches the DP first.
 *
 * An entry is written once per session and not again while the DP sees no
 * new packet of it (rewriting would reset its counters). When the entry ends
 * (FIN/RST, idle, the recheck deadline, the LRU) the flow's frames go to the
 * DP again, which applies its policy of now; the session is offloaded again
 * if the rule still takes it, or dropped in the kernel if the DP now denies it.
 */
import { DpClient, DpSession } from '../dp/client';
import type { DpProcess } from '../dp/watch';
import { Flows } from '../flows';
import { log } from '../log';
import { OffloadRule, decideSession, ruleText, writeOffloadRule } from './rule';

export interface OffloaderOptions {
  pinRoot: string;
  /** The DP to read, or undefined while there is none (the supervisor's DP while it is up). */
  locate: () => DpProcess | undefined;
  rule?: OffloadRule;
}

/** How long a session offloaded once must be missing from the DP's list before it counts as ended. */
const FORGET_MS = 5000;

/** One session offloaded: its pair, endpoints, verdict, and what the DP had seen of it then. */
export interface Offloaded {
  time: number;
  id: number;
  proto: 'tcp' | 'udp';
  client: string;
  server: string;
  verdict: 'allow' | 'deny';
  /** Packets the DP had seen each way when the entry was written (the rule's after=N or more). */
  dpClientPkts: number;
  dpServerPkts: number;
  application: number;
}

export interface OffloadStats {
  polls: number;
  /** Entries written, by verdict. */
  allow: number;
  deny: number;
  /** Polls that failed (the DP's control socket unanswered, a map unreadable); the last error. */
  errors: number;
  lastError?: string;
}

const RECENT = 100;

export class Offloader {
  private rule_: OffloadRule | undefined;
  readonly stats: OffloadStats = { polls: 0, allow: 0, deny: 0, errors: 0 };
  /** The last RECENT sessions offloaded. */
  readonly recent: Offloaded[] = [];
  /** Sessions offloaded: key -> the DP's packet count then (no rewrite until it grows). */
  private readonly done = new Map<string, number>();
  /** Since when (ms) each key of `done` has been missing from the DP's list. */
  private readonly missing = new Map<string, number>();
  private client: DpClient | undefined;
  private clientOf = '';
  private flows: Flows | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly lg = log('offload');
  private readonly listeners: Array<(o: Offloaded) => void> = [];

  private constructor(private readonly o: OffloaderOptions) {
    this.rule_ = o.rule;
  }

  static start(o: OffloaderOptions): Offloader {
    const f = new Offloader(o);
    f.schedule(0);
    if (o.rule) f.lg.info({ rule: ruleText(o.rule) }, 'offloading what the DP decided');
    return f;
  }

  get rule(): OffloadRule | undefined {
    return this.rule_;
  }

  /** Calls fn for each entry written. */
  onOffload(fn: (o: Offloaded) => void): void {
    this.listeners.push(fn);
  }

  /** A new rule (undefined: off), kept for the next service first. Entries written stay until they end. */
  setRule(r: OffloadRule | undefined): void {
    writeOffloadRule(this.o.pinRoot, r);
    this.rule_ = r;
    this.done.clear();
    this.lg.info({ rule: r ? ruleText(r) : 'off' }, r ? 'offload rule set' : 'offload off');
    if (this.timer) clearTimeout(this.timer);
    this.schedule(0);
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.poll().catch((e: Error) => {
        if (this.stats.lastError !== e.message) this.lg.warn(`offload poll failed: ${e.message}`);
        this.stats.errors++;
        this.stats.lastError = e.message;
      });
      void this.running.then(() => this.schedule(this.rule_?.everyMs ?? 1000));
    }, ms);
  }

  private closeClient(): void {
    this.client?.close();
    this.client = undefined;
    this.clientOf = '';
  }

  /** One round: the DP's sessions read, the ones the rule takes offloaded. */
  async poll(): Promise<void> {
    const r = this.rule_;
    const d = r && this.o.locate();
    if (!r || !d) {
      this.closeClient();
      return;
    }
    const of = `${d.pid}:${d.root}`;
    if (this.clientOf !== of) {
      this.closeClient();
      this.client = DpClient.open({ root: d.root });
      this.clientOf = of;
      this.done.clear(); // another DP: its sessions are new
      this.missing.clear();
    }
    let sessions: DpSession[];
    try {
      sessions = await this.client!.listSessions();
    } catch (e) {
      this.closeClient(); // its reply socket may be gone with its /tmp
      throw e;
    }
    this.stats.polls++;
    this.flows ??= Flows.open(this.o.pinRoot);
    const pairs = this.flows.pairsByMac();
    const seen = new Set<string>();
    for (const s of sessions) {
      const verdict = decideSession(s, r);
      if (!verdict) continue;
      const p = pairs.get(s.epMac);
      if (!p || p.mode !== 'fwd') continue; // entries apply to FWD only
      const proto = s.ipProto === 6 ? 'tcp' : 'udp';
      const client = `${s.clientIp}:${s.clientPort}`;
      const server = `${s.serverIp}:${s.serverPort}`;
      const key = `${p.id}/${proto}/${client}/${server}`;
      seen.add(key);
      const pkts = s.clientPkts + s.serverPkts;
      const before = this.done.get(key);
      if (before !== undefined && pkts <= before) continue; // offloaded, and the DP has seen nothing of it since
      const spec = { id: p.id, proto, src: client, dst: server } as const;
      this.done.set(key, pkts);
      if (this.flows.get(spec)) continue; // written by someone else (the DP itself, an agent)
      this.flows.offload(spec, { verdict, idleS: r.idleS, timeoutS: r.recheckS });
      this.stats[verdict]++;
      const o: Offloaded = { time: Date.now(), id: p.id, proto, client, server, verdict, dpClientPkts: s.clientPkts, dpServerPkts: s.serverPkts, application: s.application };
      this.recent.push(o);
      if (this.recent.length > RECENT) this.recent.shift();
      for (const fn of this.listeners) fn(o);
    }
    // Sessions the DP ended, once it has not listed them for FORGET_MS: a session missing from one list
    // (the offload-nvdp suite saw a TCP session whose FIN had retired its entry written again, with 0
    // packets, seconds after it ended) is not taken for a new one.
    const now = Date.now();
    for (const k of this.done.keys()) {
      if (seen.has(k)) this.missing.delete(k);
      else if (!this.missing.has(k)) this.missing.set(k, now);
      else if (now - this.missing.get(k)! >= FORGET_MS) {
        this.done.delete(k);
        this.missing.delete(k);
      }
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    this.closeClient();
    this.flows?.close();
    this.flows = undefined;
  }
}
