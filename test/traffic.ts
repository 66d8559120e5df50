/**
 * Traffic harness for kernel suites (their topologies: topology.ts): a UDP
 * stream with sequence numbers (test/tools/udpseq.ts) whose receiver reports
 * what was lost, duplicated or reordered, a TCP transfer with checksums,
 * frames from trafgen's TX ring (the stub DP: harness/stub-dp.ts). Everything
 * takes netns names, addresses, port, count and rate as parameters, so
 * interception and reliability tests can reuse it.
 *
 * Every child process is registered with onCleanup() when created,
 * so runCleanups() removes it even when a test fails half way.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Netns, onCleanup, ROOT, TIME_SCALE } from './helpers';
import { TRAFGEN_QUIET } from '../harness/net';

export const UDPSEQ = path.join(ROOT, 'dist', 'test', 'tools', 'udpseq.js');

// ---------------------------------------------------------------- child processes

/** Spawns `node script args` inside a netns; killed at cleanup if still running. */
export function spawnInNetns(ns: string, script: string, args: string[]): ChildProcess {
  const child = spawn('ip', ['netns', 'exec', ns, process.execPath, script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  onCleanup(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return child;
}

/** Resolves with each JSON line a child prints, through a callback; rejects if it exits non-zero. */
function jsonLines(child: ChildProcess, onLine: (v: Record<string, unknown>) => void): Promise<void> {
  let buf = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) onLine(JSON.parse(line) as Record<string, unknown>);
    }
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, sig) => {
      if (code === 0) resolve();
      else reject(new Error(`${child.spawnargs.slice(3).join(' ')} exited ${code ?? sig}: ${err.trim()}`));
    });
  });
}

/**
 * Waits until a receiver child prints {"ready":true}; `done` settles when it
 * exits (rejects unless 0), `report()` is the last other JSON line it printed.
 */
async function receiverReady(recv: ChildProcess, what: string): Promise<{ done: Promise<void>; report: () => Record<string, unknown> | undefined }> {
  let report: Record<string, unknown> | undefined;
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  const done = jsonLines(recv, (v) => {
    if (v.ready) ready();
    else report = v;
  });
  await Promise.race([isReady, done.then(() => Promise.reject(new Error(`${what} exited before it was ready`)))]);
  return { done, report: () => report };
}

// ---------------------------------------------------------------- UDP stream

export interface UdpStreamOptions {
  senderNs: string;
  receiverNs: string;
  /** Destination address (the receiver's). */
  to: string;
  port: number;
  count: number;
  /** Datagrams per second. */
  rate: number;
  /** Bytes per datagram (default 64). */
  size?: number;
  /** Source address to bind the sender to. */
  from?: string;
  /** The receiver reports this long after the sender has sent its last datagram (default 1000 ms). */
  idleMs?: number;
  /** The receiver gives up after this long (default 120 s x TIME_SCALE: the 6.1 VM under emulation sends 160,000 datagrams in 144 s). */
  timeoutMs?: number;
  /**
   * Send until stop() (count is then ignored): for streams that must outlast
   * a sequence of unknown length. lost is then sent - unique.
   */
  untilStopped?: boolean;
}

export interface UdpStreamResult {
  sent: number;
  senderSeconds: number;
  received: number;
  unique: number;
  lost: number;
  duplicated: number;
  reordered: number;
  foreign: number;
  bytes: number;
  receiverSeconds: number;
  /**
   * Datagrams the receiving netns dropped at a socket whose buffer was full
   * (Udp RcvbufErrors over the stream, all sockets of that netns): lost after
   * delivery, when the receiver was starved of CPU, not on the path.
   */
  socketDrops: number;
  /** The longest pause between two datagrams at the receiver, ms. */
  maxGapMs: number;
  /** The sequence number of the first datagram that arrived (null: none did). */
  first: number | null;
}

export interface UdpStream {
  /** Resolves when the sender is sending (a node process takes seconds to start on a loaded machine). */
  started: Promise<void>;
  /** Resolves when the sender has handed every datagram to the kernel. */
  sent: Promise<{ sent: number; seconds: number }>;
  /** Resolves with the receiver's report (after its idle timeout). */
  result: Promise<UdpStreamResult>;
  /** Kills both processes. */
  kill(): void;
  /** Ends the stream (SIGTERM to the sender, once it has started: before, SIGTERM would kill it unreported); `sent` then says how many went out. */
  stop(): void;
}

/** A counter of a netns's /proc/net/snmp, e.g. ('Udp', 'RcvbufErrors'); 0 if absent. */
export function snmpCounter(ns: string, group: string, name: string): number {
  const r = spawnSync('ip', ['netns', 'exec', ns, 'cat', '/proc/net/snmp'], { encoding: 'utf8' });
  const lines = (r.stdout ?? '').split('\n').filter((l) => l.startsWith(`${group}:`));
  if (lines.length < 2) return 0;
  const k = lines[0]!.split(/\s+/);
  const v = lines[1]!.split(/\s+/);
  return Number(v[k.indexOf(name)] ?? 0);
}

/** Udp RcvbufErrors of a netns: datagrams its sockets dropped for a full receive buffer. */
export const udpRcvbufErrors = (ns: string): number => snmpCounter(ns, 'Udp', 'RcvbufErrors');

/**
 * Starts a receiver in receiverNs, waits until it is bound, then starts the
 * sender in senderNs. Returns at once; await `sent` to know the stream is
 * over on the sending side and `result` for the receiver's verdict.
 */
export async function startUdpStream(o: UdpStreamOptions): Promise<UdpStream> {
  const run = String((Math.random() * 0xffffffff) >>> 0);
  const rcvbuf0 = udpRcvbufErrors(o.receiverNs);
  const count = o.untilStopped ? 1e9 : o.count;
  // The receiver must not end at a pause in the stream (a starved sender on a busy machine, or the
  // interruption being measured): it ends on SIGTERM, sent idleMs after the sender has reported.
  const recv = spawnInNetns(o.receiverNs, UDPSEQ, [
    'recv', '--port', String(o.port), '--run', run, ...(o.untilStopped ? [] : ['--expect', String(o.count)]),
    '--idle-ms', String(o.timeoutMs ?? 120000 * TIME_SCALE), '--timeout-ms', String(o.timeoutMs ?? 120000 * TIME_SCALE),
  ]);
  const { done: recvDone, report: reportOf } = await receiverReady(recv, 'udpseq recv');

  const sendArgs = ['send', '--to', o.to, '--port', String(o.port), '--count', String(count), '--rate', String(o.rate), '--size', String(o.size ?? 64), '--run', run];
  if (o.from) sendArgs.push('--from', o.from);
  const snd = spawnInNetns(o.senderNs, UDPSEQ, sendArgs);
  let sentReport: { sent: number; seconds: number } | undefined;
  let isStarted!: () => void;
  const started = new Promise<void>((r) => (isStarted = r));
  const sendDone = jsonLines(snd, (v) => {
    if (v.started) isStarted();
    else sentReport = v as unknown as { sent: number; seconds: number };
  });
  const sent = sendDone.then(() => {
    if (!sentReport) throw new Error('udpseq send printed no report');
    return sentReport;
  });
  {
    void sent
      .then(() => new Promise((r) => setTimeout(r, o.idleMs ?? 1000)))
      .catch(() => undefined)
      .then(() => {
        if (recv.exitCode === null && recv.signalCode === null) recv.kill('SIGTERM');
      });
  }
  const result = Promise.all([sent, recvDone]).then(([s]) => {
    const report = reportOf();
    if (!report) throw new Error('udpseq recv printed no report');
    const r = report as Record<string, number>;
    return {
      sent: s.sent,
      senderSeconds: s.seconds,
      received: r.received!,
      unique: r.unique!,
      lost: o.untilStopped ? Math.max(0, s.sent - r.unique!) : r.lost!,
      duplicated: r.duplicated!,
      reordered: r.reordered!,
      foreign: r.foreign!,
      bytes: r.bytes!,
      receiverSeconds: r.seconds!,
      maxGapMs: r.maxGapMs ?? 0,
      first: (report.first as number | null | undefined) ?? null,
      socketDrops: udpRcvbufErrors(o.receiverNs) - rcvbuf0,
    };
  });
  // Avoid unhandled rejections when a caller only awaits one of them.
  sent.catch(() => undefined);
  result.catch(() => undefined);
  const startedOrDone = Promise.race([started, sendDone.catch(() => undefined)]);
  return {
    started: startedOrDone,
    sent,
    result,
    kill: () => {
      for (const c of [snd, recv]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    },
    stop: () => {
      void startedOrDone.then(() => {
        if (snd.exitCode === null && snd.signalCode === null) snd.kill('SIGTERM');
      });
    },
  };
}

/** Runs a whole stream and returns the receiver's verdict. */
export async function udpStream(o: UdpStreamOptions): Promise<UdpStreamResult> {
  const s = await startUdpStream(o);
  return s.result;
}

/** `ping -c N` from one netns to an address; returns the number of replies. */
export function ping(ns: Netns, to: string, count = 3, intervalS = 0.05): number {
  const out = ns.exec('ping', ['-c', String(count), '-i', String(intervalS), '-W', '1', '-q', to], { allowFail: true });
  const m = /(\d+) received/.exec(out);
  return m ? Number(m[1]) : 0;
}

// ---------------------------------------------------------------- TCP transfer

export const TCPSUM = path.join(ROOT, 'dist', 'test', 'tools', 'tcpsum.js');

/** TCP counters of one netns (/proc/net/snmp and /proc/net/netstat are per netns). */
export interface TcpCounters {
  /** Tcp RetransSegs: segments this netns sent again (a frame lost, or thought lost). */
  retransSegs: number;
  /** TcpExt TCPOFOQueue: segments that arrived out of order. */
  ofoQueue: number;
  /** TcpExt TCPDSACKOldSent + TCPDSACKOfoSent: duplicate segments received (reported with D-SACK). */
  dsackSent: number;
}

export function tcpCounters(ns: Netns): TcpCounters {
  const values = (text: string, prefix: string): Map<string, number> => {
    const lines = text.split('\n').filter((l) => l.startsWith(prefix + ':'));
    const out = new Map<string, number>();
    for (let i = 0; i + 1 < lines.length; i += 2) {
      const k = lines[i]!.split(/\s+/).slice(1);
      const v = lines[i + 1]!.split(/\s+/).slice(1);
      k.forEach((name, j) => out.set(name, Number(v[j])));
    }
    return out;
  };
  const snmp = values(ns.exec('cat', ['/proc/net/snmp']), 'Tcp');
  const ext = values(ns.exec('cat', ['/proc/net/netstat']), 'TcpExt');
  return {
    retransSegs: snmp.get('RetransSegs') ?? 0,
    ofoQueue: ext.get('TCPOFOQueue') ?? 0,
    dsackSent: (ext.get('TCPDSACKOldSent') ?? 0) + (ext.get('TCPDSACKOfoSent') ?? 0),
  };
}

export interface TcpTransferOptions {
  sender: Netns;
  receiver: Netns;
  /** The receiver's address. */
  to: string;
  port: number;
  /** Bytes to send, or until stop(). */
  bytes?: number;
  untilStopped?: boolean;
  /** Bytes per second (default: as fast as it goes). */
  rate?: number;
  seed?: string;
  /** The receiver gives up after this long (default 4 h). */
  timeoutMs?: number;
}

export interface TcpTransferResult {
  sentBytes: number;
  receivedBytes: number;
  /** The SHA-256 of the sent and of the received stream are equal. */
  intact: boolean;
  sha256: string;
  seconds: number;
  /** Segments the sender had to send again (a lost frame, or one thought lost). */
  retransmitted: number;
  /**
   * Retransmissions the receiver had not got before (retransmitted minus the
   * duplicates it reported): frames that were really lost. A retransmission of
   * a segment that was only late arrives twice and is not counted here.
   */
  lost: number;
  /** Segments the receiver got out of order. */
  reordered: number;
  /** Duplicate segments the receiver got. */
  duplicated: number;
}

export interface TcpTransfer {
  result: Promise<TcpTransferResult>;
  /** Ends an untilStopped transfer (the sender closes after its current chunk). */
  stop(): void;
  kill(): void;
}

/**
 * A TCP transfer with a SHA-256 of the bytes on both ends (test/tools/tcpsum.ts),
 * with the frames TCP had to repair read from the two netns's TCP counters
 * around it (so run one transfer per direction per pair of netns at a time).
 */
export async function startTcpTransfer(o: TcpTransferOptions): Promise<TcpTransfer> {
  // No tail loss probes (TLP) from the sender's netns: a paced, application-limited
  // sender on a busy machine fires them without any loss, and each counts as a
  // retransmission. Without them a retransmission means a frame was lost (or
  // held up for longer than the 200 ms minimum RTO).
  o.sender.exec('sysctl', ['-qw', 'net.ipv4.tcp_early_retrans=0']);
  // And a 1 s minimum RTO towards the receiver: on an overloaded machine an ACK
  // can take longer than the default 200 ms (a spurious retransmission, which the
  // receiver then reports as a duplicate: see `lost` below).
  const dev = /\bdev (\S+)/.exec(o.sender.ip('route', 'get', o.to))?.[1];
  if (dev) o.sender.ip('route', 'replace', `${o.to}/32`, 'dev', dev, 'rto_min', '1000ms');
  const before = { snd: tcpCounters(o.sender), rcv: tcpCounters(o.receiver) };
  const recv = spawnInNetns(o.receiver.name, TCPSUM, ['recv', '--port', String(o.port), '--timeout-ms', String(o.timeoutMs ?? 4 * 3600e3)]);
  const { done: recvDone, report: reportOf } = await receiverReady(recv, 'tcpsum recv');
  const args = ['send', '--to', o.to, '--port', String(o.port), '--seed', o.seed ?? String(o.port)];
  if (o.untilStopped) args.push('--until-stopped');
  else args.push('--bytes', String(o.bytes ?? 1 << 20));
  if (o.rate) args.push('--rate', String(Math.round(o.rate)));
  const snd = spawnInNetns(o.sender.name, TCPSUM, args);
  let sent: Record<string, unknown> | undefined;
  const sendDone = jsonLines(snd, (v) => (sent = v));
  const result = Promise.all([sendDone, recvDone]).then(() => {
    const report = reportOf();
    if (!sent || !report) throw new Error('tcpsum printed no report');
    const after = { snd: tcpCounters(o.sender), rcv: tcpCounters(o.receiver) };
    return {
      sentBytes: sent.bytes as number,
      receivedBytes: report.bytes as number,
      intact: sent.sha256 === report.sha256 && sent.bytes === report.bytes,
      sha256: report.sha256 as string,
      seconds: report.seconds as number,
      retransmitted: after.snd.retransSegs - before.snd.retransSegs,
      lost: Math.max(0, after.snd.retransSegs - before.snd.retransSegs - (after.rcv.dsackSent - before.rcv.dsackSent)),
      reordered: after.rcv.ofoQueue - before.rcv.ofoQueue,
      duplicated: after.rcv.dsackSent - before.rcv.dsackSent,
    };
  });
  result.catch(() => undefined);
  return {
    result,
    stop: () => {
      if (snd.exitCode === null && snd.signalCode === null) snd.kill('SIGTERM');
    },
    kill: () => {
      for (const c of [snd, recv]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    },
  };
}

// ---------------------------------------------------------------- frames from an AF_PACKET TX ring

/** Throws when trafgen (netsniff-ng) is missing: a kernel suite must not pass without it (scripts/deps.sh installs it). */
export function requireTrafgen(): void {
  if (spawnSync('trafgen', ['-v']).error) throw new Error('trafgen (netsniff-ng) is needed: make deps');
}

/**
 * Sends `count` frames out of `dev` in `ns` with trafgen (netsniff-ng), the
 * given frames in turn, from its TX ring (PACKET_TX_RING: no --gap or --rate,
 * either of which makes it send with sendto()). The kernel builds such an skb
 * with the link-layer header alone in its linear data, the rest in page
 * fragments of the ring: frames whose IP and L4 headers a program cannot
 * read in place. Throws when trafgen is missing (requireTrafgen).
 */
export function trafgenRing(ns: Netns, dev: string, frames: Uint8Array[], count: number): void {
  requireTrafgen();
  const conf = frames.map((f) => `{ ${Array.from(f, (b) => `0x${b.toString(16).padStart(2, '0')}`).join(', ')} }`).join(' ');
  ns.exec('trafgen', ['--dev', dev, '--cpus', '1', '--num', String(count), ...TRAFGEN_QUIET, '-C', conf]);
}
