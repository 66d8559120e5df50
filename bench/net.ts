/**
 * Topologies and traffic for the benchmarks: the plain veth pair (the
 * limit), the intercepted pair of docs/datapath.md §1 set up either with
 * NeuVector's tc rules (src/migrate/nvtc.ts) or with neuv-bpf, a TCP stream (iperf3)
 * and a 64-byte frame flood (trafgen) counted at the receiver.
 *
 * Every namespace, pin root and child process registers its cleanup when it
 * is created (bench/util.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Datapath, PairSpec } from '../src/pairs';
import { NvPair, nvAttachRules, nvPairRules, NV_VBR } from '../src/migrate/nvtc';
import { nvConnect, nvPair } from '../harness/nvpipe';
import { addAddrs, staticNeighbours, TRAFGEN_QUIET, veth } from '../harness/net';
import { addPair } from '../harness/pair';
import { BenchNetns, bounded, cli, netns, nowMs, objArgs, outputOf, pinRoot, rt, shResult, sleep, spawnGroup } from './util';

export { VBR, VTH } from '../src/link';

const hx = (n: number) => n.toString(16).padStart(2, '0');
export const macText = (m: Uint8Array) => Array.from(m, hx).join(':');

/** A locally administered unicast MAC from a number (02:00:..). */
export function macOf(n: number): string {
  return ['02', '00', hx((n >>> 24) & 0xff), hx((n >>> 16) & 0xff), hx((n >>> 8) & 0xff), hx(n & 0xff)].join(':');
}

// ---------------------------------------------------------------- topologies

export interface Topo {
  label: string;
  host: BenchNetns;
  wl: BenchNetns;
  /** The enforcer netns (absent for the plain pair). */
  enf?: BenchNetns;
  hostIf: string;
  wlIf: string;
  hostAddr: string;
  wlAddr: string;
  hostMac: string;
  /** The workload MAC M (eth0 in the workload). */
  wlMac: string;
  vin?: string;
  vex?: string;
  vinIfindex?: number;
  vexIfindex?: number;
}

const SUBNET = '10.201.0';

/** (a) host netns <-> workload netns over one veth pair: no interception. Static neighbours: no ARP in the way. */
export async function plainTopo(label: string): Promise<Topo> {
  const host = netns(`${label}-h`);
  const wl = netns(`${label}-w`);
  const hostAddr = `${SUBNET}.1`;
  const wlAddr = `${SUBNET}.2`;
  const { a, b } = veth({ ns: host, name: 'hA' }, { ns: wl, name: 'eth0' });
  await Promise.all([host.ready(), wl.ready()]);
  addAddrs(host, 'hA', `${hostAddr}/24`);
  addAddrs(wl, 'eth0', `${wlAddr}/24`);
  staticNeighbours({ ns: host, dev: 'hA', addr: hostAddr }, { ns: wl, dev: 'eth0', addr: wlAddr });
  return { label, host, wl, hostIf: 'hA', wlIf: 'eth0', hostAddr, wlAddr, hostMac: a.address, wlMac: b.address };
}

/**
 * host (hA) ==veth== vex [enforcer] vin ==veth== eth0 (workload): the
 * harness's addPair (harness/pair.ts). Nothing forwards between vex and vin
 * until rules or programs are installed.
 */
export async function pairTopo(label: string): Promise<Topo> {
  const host = netns(`${label}-h`);
  const enf = netns(`${label}-e`);
  const wl = netns(`${label}-w`);
  await Promise.all([host.ready(), enf.ready(), wl.ready()]);
  const w = addPair({ host, enforcer: enf, workload: wl }, { vin: 'vin0', vex: 'vex0', hostIf: 'hA', wlIf: 'eth0', hostAddr: `${SUBNET}.1`, wlAddr: `${SUBNET}.2` });
  return { label, host, enf, wl, ...w };
}

// ---------------------------------------------------------------- NeuVector's tc pipe

export { nvConnect, nvPair };

export type NvVariant = 'pass' | 'tap' | 'fwd';

/**
 * The tc commands of a pair in a variant, without pedit (this kernel has no
 * act_pedit) and without gact (`action drop`: no act_gact either):
 *   pass: the two catch-all filters only (pref 10002 on vex and vin: mirror
 *         to the other port), NeuVector's path for traffic it does not send
 *         to the DP: the closest thing it has to BYPASS;
 *   tap:  TapPortPair's four vin/vex filters (the two vbr-neuv filters are
 *         `action drop`, which cannot be installed here);
 *   fwd:  FwdPortPair's six filters, mirred only.
 */
export function nvVariantRules(p: NvPair, v: NvVariant): string[][] {
  if (v === 'fwd') return nvPairRules(p, 'fwd', { pedit: false });
  const r = nvPairRules(p, 'tap', { pedit: false }).slice(0, 4);
  return v === 'tap' ? r : r.filter((a) => a[a.indexOf('pref') + 1] === '10002');
}

export function nvInstall(t: Topo, v: NvVariant): NvPair {
  const enf = t.enf!;
  nvConnect(enf);
  const p = nvPair(t.vin!, t.vex!, t.vinIfindex!, t.vexIfindex!, t.wlMac, new Set());
  enf.tcBatch([...nvAttachRules(p), ...nvVariantRules(p, v)]);
  return p;
}

// ---------------------------------------------------------------- neuv-bpf

export interface BpfSetup {
  pinRoot: string;
  dp: Datapath;
}

/** `neuv-bpf load` in the enforcer netns with a pin root of this run. */
export function bpfLoad(enf: BenchNetns): BpfSetup {
  const pins = pinRoot('pins');
  cli(['--netns', enf.name, '--bpffs', pins, 'load', ...objArgs()]);
  const dp = Datapath.open(pins, { netns: enf.name });
  return { pinRoot: pins, dp };
}

/** Failures of addPairs that a retry got past, for the results ("ENOMEM at pair N ..."). */
export const addPairsIncidents: string[] = [];

/**
 * Adds pairs through the API; NEUV_BPF_NO_REDIRECT_PEER=1 while they are
 * added when noPeer. A failed batch is undone whole by addPairs; an ENOMEM
 * (seen from the per-CPU neuv_stats map when the kernel's per-CPU allocator
 * lags behind under load) is retried after a pause, up to 3 times, and
 * recorded in addPairsIncidents.
 */
export async function bpfAddPairs(dp: Datapath, specs: PairSpec[], noPeer = false): Promise<Awaited<ReturnType<Datapath['addPairs']>>> {
  const old = process.env.NEUV_BPF_NO_REDIRECT_PEER;
  if (noPeer) process.env.NEUV_BPF_NO_REDIRECT_PEER = '1';
  else delete process.env.NEUV_BPF_NO_REDIRECT_PEER;
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        return await dp.addPairs(specs);
      } catch (e) {
        const msg = (e as Error).message;
        if (!/ENOMEM/.test(msg) || attempt > 3) throw e;
        addPairsIncidents.push(`addPairs of ${specs.length} pair(s) (${specs[0]?.in}..): ${msg}; retried after 500 ms (attempt ${attempt + 1})`);
        await sleep(500);
      }
    }
  } finally {
    if (old === undefined) delete process.env.NEUV_BPF_NO_REDIRECT_PEER;
    else process.env.NEUV_BPF_NO_REDIRECT_PEER = old;
  }
}

// ---------------------------------------------------------------- traffic

let portSeq = 5201;

/** Whether a process in `pid`'s netns, not this one, listens on TCP `port` there (/proc/<pid>/net/tcp{,6}). */
function listensIn(pid: number, port: number): boolean {
  try {
    if (fs.readlinkSync(`/proc/${pid}/ns/net`) === fs.readlinkSync('/proc/self/ns/net')) return false; // not entered yet
    const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
    const tcp = fs.readFileSync(`/proc/${pid}/net/tcp`, 'utf8') + fs.readFileSync(`/proc/${pid}/net/tcp6`, 'utf8');
    return tcp.split('\n').some((l) => l.includes(`:${hexPort} `) && / 0A /.test(l));
  } catch {
    return false; // gone
  }
}

/**
 * TCP goodput from client to server (iperf3, one stream), Gbit/s as received.
 * Both under SCHED_FIFO unless `realtime: false` (or NEUV_BENCH_RT=0).
 */
export async function tcpGbps(client: { name: string }, server: { name: string }, dst: string, seconds: number, omit: number, o: { realtime?: boolean } = {}): Promise<number> {
  const port = portSeq++;
  if (portSeq > 5900) portSeq = 5201;
  const limit = bounded(seconds + omit + 20);
  const prio = o.realtime === false ? [] : rt();
  const srv = spawnGroup('ip', ['netns', 'exec', server.name, ...limit, ...prio, 'iperf3', '-s', '-1', '-p', String(port)]);
  try {
    // The server's own pid: `ip netns exec` enters the netns, then execs what runs there.
    let listening = false;
    for (let i = 0; i < 400 && !listening; i++) {
      listening = listensIn(srv.pid!, port);
      if (!listening) await sleep(5);
    }
    if (!listening) throw new Error(`iperf3 server did not listen: ${outputOf(srv).err.trim()}`);
    const args = ['netns', 'exec', client.name, ...limit, ...prio, 'iperf3', '-c', dst, '-p', String(port), '-t', String(seconds), '-O', String(omit), '-J'];
    const r = shResult('ip', args, { allowFail: true });
    let j: { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
    try {
      j = JSON.parse(r.stdout) as typeof j;
    } catch {
      throw new Error(`iperf3 client: ${r.stderr.trim() || r.stdout.slice(0, 200)}`);
    }
    if (j.error) throw new Error(`iperf3: ${j.error}`);
    const bps = j.end?.sum_received?.bits_per_second;
    if (!bps) throw new Error('iperf3 reported no received bits');
    return bps / 1e9;
  } finally {
    await srv.stop();
  }
}

/** A trafgen configuration: one 64-byte IPv4/UDP frame (14 + 20 + 8 + 22 bytes, FCS not counted). */
export function udpFrameConf(dir: string, o: { da: string; sa: string; src: string; dst: string; dport?: number }): string {
  const f = path.join(dir, `frame-${o.da.replace(/:/g, '')}-${o.dst}.cfg`);
  fs.writeFileSync(
    f,
    [
      '{',
      `  eth(da=${o.da}, sa=${o.sa}, type=0x0800),`,
      `  ipv4(saddr=${o.src}, daddr=${o.dst}, ttl=64),`,
      `  udp(sport=40000, dport=${o.dport ?? 9}),`,
      '  fill(0x00, 22)',
      '}',
      '',
    ].join('\n'),
  );
  return f;
}

export interface RateResult {
  /**
   * Frames per second counted at the receiver: the 90th percentile of the
   * rates of SLICE_MS slices of the window. Other load on the machine can
   * only take CPU time away from the path, so a high percentile is the rate
   * while the path had the CPU, and is far steadier than a mean when the
   * machine is shared.
   */
  pps: number;
  /** Mean rate over the whole window. */
  mean: number;
  /** Frames per second the sender's device transmitted (90th percentile of the same slices). */
  offered: number;
  /** The second counter's mean rate, when one was given (for cross-checks). */
  alt?: number;
  slices: number[];
}

export const SLICE_MS = 100;

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (!s.length) return NaN;
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  const hi = Math.ceil(i);
  return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
}

/**
 * Floods 64-byte frames with trafgen (one worker) out of `dev` in `sender`
 * and counts them with `count` over a window after a warm-up, in slices.
 * `trafgen`: more arguments (`-b RATE` makes it send with sendto(), whole
 * frames in the skb's linear data, instead of its TX ring's page fragments).
 */
export async function frameRate(
  sender: BenchNetns,
  dev: string,
  conf: string,
  count: () => number,
  o: { warmMs: number; windowMs: number; alt?: () => number; trafgen?: string[] },
): Promise<RateResult> {
  const tx = () => sender.devStat(dev, 'tx_packets');
  const tx00 = tx();
  const limit = bounded((o.warmMs + o.windowMs) / 1000 + 15);
  const gen = spawnGroup('ip', ['netns', 'exec', sender.name, ...limit, ...rt(), 'trafgen', '--dev', dev, '--conf', conf, '--cpus', '1', '-n', '0', ...TRAFGEN_QUIET, ...(o.trafgen ?? [])]);
  try {
    // Started when frames flow, then the warm-up.
    for (let i = 0; i < 400 && tx() === tx00; i++) {
      if (gen.exitCode !== null) throw new Error(`trafgen exited: ${outputOf(gen).err.trim()}`);
      await sleep(5);
    }
    await sleep(o.warmMs);
    // A sample: the counters bracketed by two clock reads; a sample that took long (we were preempted) is read again.
    const sample = () => {
      for (let i = 0; ; i++) {
        const ta = nowMs();
        const c = count();
        const x = tx();
        const a = o.alt?.() ?? 0;
        const tb = nowMs();
        if (tb - ta < 3 || i >= 4) return { t: (ta + tb) / 2, c, x, a };
      }
    };
    const first = sample();
    let prev = first;
    const slices: number[] = [];
    const sent: number[] = [];
    const end = first.t + o.windowMs;
    while (prev.t < end - 1) {
      await sleep(Math.min(SLICE_MS, end - prev.t));
      const cur = sample();
      const s = (cur.t - prev.t) / 1000;
      if (s > 0.02) {
        slices.push((cur.c - prev.c) / s);
        sent.push((cur.x - prev.x) / s);
      }
      prev = cur;
    }
    const total = (prev.t - first.t) / 1000;
    if (gen.exitCode !== null) throw new Error(`trafgen exited early: ${outputOf(gen).err.trim()}`);
    return {
      pps: percentile(slices, 0.9),
      mean: (prev.c - first.c) / total,
      offered: percentile(sent, 0.9),
      ...(o.alt ? { alt: (prev.a - first.a) / total } : {}),
      slices,
    };
  } finally {
    await gen.stop();
  }
}

/** IPv4 datagrams that reached the IP layer of a netns (Ip InReceives), independent of device counters. */
export const ipIn = (ns: BenchNetns) => () => ns.snmp()['IpInReceives'] ?? 0;
/** rx packets of a device, from /proc/<anchor>/net/dev. */
export const devRx = (ns: BenchNetns, dev: string) => () => ns.devStat(dev, 'rx_packets');

/** One ICMP echo: true if answered (a smoke test before measuring). */
export function pingOk(from: BenchNetns, to: string): boolean {
  const r = from.exec('ping', ['-c', '1', '-W', '1', '-q', to], { allowFail: true });
  return / 1 received/.test(r);
}

export { macText as formatMacText, NV_VBR };
