/**
 * Traffic harness for kernel suites: a three-netns topology shaped like an
 * intercepted container, and a UDP stream with sequence numbers
 * (test/tools/udpseq.ts) whose receiver reports what was lost, duplicated or
 * reordered. Everything takes netns names, addresses, port, count and rate as
 * parameters, so interception and reliability tests can reuse it.
 *
 * Every netns and child process is registered with onCleanup() when created,
 * so runCleanups() removes it even when a test fails half way.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as path from 'node:path';
import { makeNetns, Netns, onCleanup, ROOT } from './helpers';

export const UDPSEQ = path.join(ROOT, 'dist', 'test', 'tools', 'udpseq.js');

// ---------------------------------------------------------------- topology

export interface PairTopology {
  /** Host side: holds hostIf (the peer of vex), address hostAddr. */
  host: Netns;
  /** Enforcer netns: holds vin and vex (and vbr-neuv after `load`). */
  enforcer: Netns;
  /** Workload: holds wlIf (the peer of vin), address wlAddr. */
  workload: Netns;
  vin: string;
  vex: string;
  hostIf: string;
  wlIf: string;
  hostAddr: string;
  wlAddr: string;
  hostMac: string;
  /** The workload MAC M of the pair. */
  wlMac: string;
  vinIfindex: number;
  vexIfindex: number;
}

export interface TopologyOptions {
  /** First three octets of a /24, e.g. "10.77.0" (host .1, workload .2). */
  subnet?: string;
  vin?: string;
  vex?: string;
  hostIf?: string;
  wlIf?: string;
  /** Choose the vex ifindex (e.g. to test id derivation). */
  vexIndex?: number;
  mtu?: number;
}

function linkOf(ns: Netns, dev: string): { ifindex: number; address: string } {
  const [l] = JSON.parse(ns.ip('-j', 'link', 'show', 'dev', dev)) as Array<{ ifindex: number; address: string }>;
  if (!l) throw new Error(`no ${dev} in ${ns.name}`);
  return l;
}

/**
 *   host netns            enforcer netns              workload netns
 *   hostIf (.1) ==veth== vex     vin ==veth== wlIf (.2, MAC M)
 *
 * Both ends up, static neighbour entries on both sides (no ARP timing), no
 * forwarding in the enforcer netns: without a pair nothing gets across.
 */
export function makePairTopology(o: TopologyOptions = {}): PairTopology {
  const subnet = o.subnet ?? '10.77.0';
  const vin = o.vin ?? 'vinE';
  const vex = o.vex ?? 'vexE';
  const hostIf = o.hostIf ?? 'hA';
  const wlIf = o.wlIf ?? 'eth0';
  const host = makeNetns();
  const enforcer = makeNetns();
  const workload = makeNetns();
  const mtu = o.mtu ? ['mtu', String(o.mtu)] : [];
  enforcer.ip('link', 'add', vex, ...(o.vexIndex ? ['index', String(o.vexIndex)] : []), ...mtu, 'type', 'veth', 'peer', 'name', hostIf, 'netns', host.name);
  enforcer.ip('link', 'add', vin, ...mtu, 'type', 'veth', 'peer', 'name', wlIf, 'netns', workload.name);
  const hostAddr = `${subnet}.1`;
  const wlAddr = `${subnet}.2`;
  host.ip('addr', 'add', `${hostAddr}/24`, 'dev', hostIf);
  workload.ip('addr', 'add', `${wlAddr}/24`, 'dev', wlIf);
  for (const [ns, dev] of [[host, hostIf], [workload, wlIf], [enforcer, vin], [enforcer, vex]] as const) {
    // No IPv6 chatter (router solicitations, DAD) in the counters.
    ns.exec('sysctl', ['-qw', `net.ipv6.conf.${dev}.disable_ipv6=1`], { allowFail: true });
    ns.ip('link', 'set', 'dev', dev, 'up');
  }
  const hostMac = linkOf(host, hostIf).address;
  const wlMac = linkOf(workload, wlIf).address;
  host.ip('neigh', 'replace', wlAddr, 'lladdr', wlMac, 'dev', hostIf, 'nud', 'permanent');
  workload.ip('neigh', 'replace', hostAddr, 'lladdr', hostMac, 'dev', wlIf, 'nud', 'permanent');
  return {
    host,
    enforcer,
    workload,
    vin,
    vex,
    hostIf,
    wlIf,
    hostAddr,
    wlAddr,
    hostMac,
    wlMac,
    vinIfindex: linkOf(enforcer, vin).ifindex,
    vexIfindex: linkOf(enforcer, vex).ifindex,
  };
}

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
  /** The receiver reports after this long without a datagram (default 1000 ms). */
  idleMs?: number;
  /** The receiver gives up after this long (default 120 s). */
  timeoutMs?: number;
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
}

export interface UdpStream {
  /** Resolves when the sender has handed every datagram to the kernel. */
  sent: Promise<{ sent: number; seconds: number }>;
  /** Resolves with the receiver's report (after its idle timeout). */
  result: Promise<UdpStreamResult>;
  /** Kills both processes. */
  kill(): void;
}

/**
 * Starts a receiver in receiverNs, waits until it is bound, then starts the
 * sender in senderNs. Returns at once; await `sent` to know the stream is
 * over on the sending side and `result` for the receiver's verdict.
 */
export async function startUdpStream(o: UdpStreamOptions): Promise<UdpStream> {
  const run = String((Math.random() * 0xffffffff) >>> 0);
  const recv = spawnInNetns(o.receiverNs, UDPSEQ, [
    'recv', '--port', String(o.port), '--run', run, '--expect', String(o.count),
    '--idle-ms', String(o.idleMs ?? 1000), '--timeout-ms', String(o.timeoutMs ?? 120000),
  ]);
  let report: Record<string, unknown> | undefined;
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  const recvDone = jsonLines(recv, (v) => {
    if (v.ready) ready();
    else report = v;
  });
  await Promise.race([isReady, recvDone.then(() => Promise.reject(new Error('udpseq recv exited before it was ready')))]);

  const sendArgs = ['send', '--to', o.to, '--port', String(o.port), '--count', String(o.count), '--rate', String(o.rate), '--size', String(o.size ?? 64), '--run', run];
  if (o.from) sendArgs.push('--from', o.from);
  const snd = spawnInNetns(o.senderNs, UDPSEQ, sendArgs);
  let sentReport: { sent: number; seconds: number } | undefined;
  const sendDone = jsonLines(snd, (v) => (sentReport = v as unknown as { sent: number; seconds: number }));
  const sent = sendDone.then(() => {
    if (!sentReport) throw new Error('udpseq send printed no report');
    return sentReport;
  });
  const result = Promise.all([sent, recvDone]).then(([s]) => {
    if (!report) throw new Error('udpseq recv printed no report');
    const r = report as Record<string, number>;
    return {
      sent: s.sent,
      senderSeconds: s.seconds,
      received: r.received!,
      unique: r.unique!,
      lost: r.lost!,
      duplicated: r.duplicated!,
      reordered: r.reordered!,
      foreign: r.foreign!,
      bytes: r.bytes!,
      receiverSeconds: r.seconds!,
    };
  });
  // Avoid unhandled rejections when a caller only awaits one of them.
  sent.catch(() => undefined);
  result.catch(() => undefined);
  return {
    sent,
    result,
    kill: () => {
      for (const c of [snd, recv]) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
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
