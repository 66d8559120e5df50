/**
 * Scenario `taptap`: TAP with NeuVector's real DP for N containers, one
 * packet ring against a ring per container. The same containers and the
 * same traffic for both:
 *
 *   ours  the containers' pairs in TAP (neuv-bpf copies to vbr-neuv), the DP's
 *         one ring on vth-neuv (ctrl_add_srvc_port), each container its
 *         endpoint in tap (ctrl_add_mac)
 *   nv    NeuVector's own TAP: the DP told ctrl_add_tap_port for each
 *         container's eth0 (its netns, as /proc/<pid>/ns/net), one AF_PACKET
 *         ring per container; the pairs in BYPASS (the copy to vbr-neuv off;
 *         only the forwarding is kernel work, as for `ours`)
 *
 * Topology, built once for the largest N: a host netns with a bridge (the
 * containers' vex peers its ports, static FDB and neighbour entries), one
 * enforcer netns with neuv-bpf loaded, N container netns behind vin/eth0.
 * Traffic: trafgen on the bridge at a fixed total rate, 64-byte UDP frames
 * round-robin over the N containers (one flow each). Per N and side a fresh
 * DP: VmRSS after set-up and after the traffic, its CPU over the
 * traffic (all threads, busiest thread), its ring counters; the sides
 * alternate over the rounds. The packet-ring sizes come from the DP's source
 * (dp/ring.c, dp/pkt.c), printed with the measured figures.
 */
import { NvDp, buildNvdp, ifindexIn, nvdpUnavailable } from '../harness/nvdp';
import { packetSocketsOn } from '../src/dp/client';
import type { Datapath, PairAdded } from '../src/pairs';
import { VTH, bpfAddPairs, bpfLoad, macOf } from './net';
import { benchDp, cpuSample, cpuUse } from './nvdp';
import { BenchNetns, netns, bounded, outputOf, progress, rt, rtEnabled, sh, sleep, spawnGroup, summary, tmpDir } from './util';
import { linkOf } from '../harness/net';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The DP's rings (its source): TPACKET_V1, 2 KiB frames, 4 frames a block. */
export const DP_RINGS = {
  /** ctrl_add_srvc_port: INLINE_BLOCK 2048 blocks of BLOCK_SIZE_V1 8 KiB, an RX and a TX ring, mmapped MAP_LOCKED. */
  inlineBytes: 2048 * 8192 * 2,
  /** ctrl_add_tap_port: TAP_BLOCK 512 blocks of 8 KiB, RX only, MAP_LOCKED. */
  tapBytes: 512 * 8192,
};

type Side = 'ours' | 'nv';

interface Container {
  ns: BenchNetns;
  mac: string;
  addr: string;
  vin: string;
  vex: string;
}

export interface TapPoint {
  containers: number;
  side: Side;
  /** KiB, after set-up (idle) and after the traffic. */
  rssIdleKiB: number[];
  rssKiB: number[];
  /** Fraction of one core over the traffic: all threads, busiest thread. */
  cpu: number[];
  cpuBusiest: number[];
  /** Packet sockets the DP has open for it (vth-neuv, or the containers' eth0). */
  rings: number;
  ringBytes: number;
  /** Per second over the window: frames received at the containers (Ip InReceives), sent by trafgen (br0 tx). */
  delivered: number[];
  sent: number[];
  /** Per second: the DP's ring counters (ctrl_counter_device: rx, rx drops), neuv-bpf's TAP copies (`copy`, ours). */
  dpRx: number[];
  dpRxDrop: number[];
  copies: number[];
  setupMs: number[];
}

export interface TapTapResult {
  params: { sizes: number[]; rounds: number; pps: number; seconds: number };
  points: TapPoint[];
  /** Per size: nv / ours, medians of the rounds. */
  ratios: Array<{ containers: number; rss: number; cpu: number }>;
  errors: string[];
  notes: string[];
}

const SUBNET = '10.210';
const addrOf = (i: number) => `${SUBNET}.${1 + Math.floor(i / 200)}.${10 + (i % 200)}`;

function statusKiB(pid: number, field: string): number {
  return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

async function build(n: number): Promise<{ host: BenchNetns; enf: BenchNetns; cs: Container[]; dp: Datapath; pairs: PairAdded[] }> {
  const host = netns('tap-h');
  const enf = netns('tap-e');
  await Promise.all([host.ready(), enf.ready()]);
  // A MAC of its own: a bridge without one takes its lowest port's, changing as ports join, and the
  // containers' replies (their ICMP port unreachables) to a stale one are flooded into every container.
  const brMac = macOf(0x2000);
  host.ipBatch([`link add br0 address ${brMac} type bridge`, 'link set br0 up', `addr add ${SUBNET}.0.1/16 dev br0`]);
  const cs: Container[] = [];
  for (let i = 0; i < n; i++) {
    const ns = netns(`tap-c${i}`);
    cs.push({ ns, mac: macOf(0x2100 + i), addr: addrOf(i), vin: `vin${i}`, vex: `vex${i}` });
  }
  await Promise.all(cs.map((c) => c.ns.ready()));
  const enfLines: string[] = [];
  const hostLines: string[] = [];
  cs.forEach((c, i) => {
    enfLines.push(`link add vex${i} type veth peer name h${i} netns ${host.name}`, `link add vin${i} type veth peer name eth0 netns ${c.ns.name}`, `link set vex${i} up`, `link set vin${i} up`);
    hostLines.push(`link set h${i} master br0`, `link set h${i} up`);
  });
  enf.ipBatch(enfLines);
  host.ipBatch(hostLines);
  cs.forEach((c, i) => {
    c.ns.ipBatch([
      `link set eth0 address ${c.mac}`,
      `addr add ${c.addr}/16 dev eth0`,
      'link set eth0 up',
      `neigh replace ${SUBNET}.0.1 lladdr ${brMac} dev eth0 nud permanent`,
    ]);
  });
  host.ipBatch(cs.map((c) => `neigh replace ${c.addr} lladdr ${c.mac} dev br0 nud permanent`));
  sh('bridge', ['-n', host.name, '-b', '-'], { input: cs.map((c, i) => `fdb replace ${c.mac} dev h${i} master static`).join('\n') + '\n' });
  const { dp } = bpfLoad(enf);
  const added = await bpfAddPairs(dp, cs.map((c) => ({ in: c.vin, ex: c.vex, mac: c.mac, mode: 'bypass' as const })));
  return { host, enf, cs, dp, pairs: added };
}

/** trafgen: 64-byte UDP frames, one per container in turn, at `pps` in total. */
function trafgenConf(dir: string, host: BenchNetns, cs: Container[]): string {
  const hostMac = linkOf(host, 'br0').address;
  const f = path.join(dir, `taptap-${cs.length}.cfg`);
  fs.writeFileSync(
    f,
    cs
      .map((c) => `{ eth(da=${c.mac}, sa=${hostMac}, type=0x0800), ipv4(saddr=${SUBNET}.0.1, daddr=${c.addr}, ttl=64), udp(sport=40000, dport=9), fill(0x00, 22) }`)
      .join('\n') + '\n',
  );
  return f;
}

const ipInAll = (cs: Container[]) => cs.reduce((s, c) => s + (c.ns.snmp()['IpInReceives'] ?? 0), 0);

export async function runTapTap(o: { quick: boolean }): Promise<TapTapResult | { skipped: string }> {
  const why = nvdpUnavailable();
  if (why) return { skipped: why };
  buildNvdp({ log: progress });
  const sizes = o.quick ? [1, 10] : (process.env.NEUV_BENCH_TAP_SIZES ?? '1,10,50,100').split(',').map(Number);
  const params = { sizes, rounds: o.quick ? 1 : 2, pps: 20000, seconds: o.quick ? 2 : 4 };
  const dir = tmpDir();
  const max = Math.max(...sizes);
  progress(`taptap: building ${max} containers`);
  const { host, enf, cs, dp: datapath, pairs } = await build(max);
  const ids = pairs.map((p) => p.id);
  const vthIndex = ifindexIn(enf.name, VTH);
  const points = new Map<string, TapPoint>();
  const errors: string[] = [];

  const one = async (n: number, side: Side): Promise<void> => {
    const sub = cs.slice(0, n);
    const t0 = Date.now();
    if (side === 'ours') for (const id of ids.slice(0, n)) await datapath.setMode({ id }, 'tap');
    let dp: NvDp | undefined;
    try {
      dp = await benchDp(enf.name, { noPort: side === 'nv' });
      let rings = 0;
      if (side === 'ours') {
        await dp.openPort(VTH);
        sub.forEach((c, i) => dp!.client.addMac({ mac: c.mac, ucmac: pairs[i]!.ucmac, bcmac: pairs[i]!.bcmac, ips: [c.addr] }));
        await dp.client.sync();
        rings = packetSocketsOn(dp.pid, vthIndex);
      } else {
        for (const c of sub) dp.client.addTapPort(`/proc/${c.ns.anchorPid}/ns/net`, 'eth0', c.mac);
        await dp.client.sync();
        const eth0 = (c: Container) => ifindexIn(c.ns.name, 'eth0');
        const idx = new Map(sub.map((c) => [c, eth0(c)]));
        for (let k = 0; k < 100; k++) {
          rings = sub.reduce((s, c) => s + packetSocketsOn(c.ns.anchorPid, idx.get(c)!), 0);
          if (rings >= n) break;
          await sleep(50);
        }
        if (rings < n) throw new Error(`ctrl_add_tap_port: the DP opened ${rings} of ${n} rings; it printed: ${dp.log.trim().split('\n').slice(-3).join(' | ')}`);
      }
      const setupMs = Date.now() - t0;
      await sleep(300);
      const rssIdle = statusKiB(dp.pid, 'VmRSS');
      // Everything over the same window of `seconds` while trafgen runs (its start-up left out).
      const gen = spawnGroup('ip', ['netns', 'exec', host.name, ...bounded(params.seconds + 10), ...rt(), 'trafgen', '--dev', 'br0', '--conf', trafgenConf(dir, host, sub), '--cpus', '1', '-b', `${params.pps}pps`, '-q']);
      const tx = () => host.devStat('br0', 'tx_packets');
      const tx00 = tx();
      for (let k = 0; k < 400 && tx() === tx00; k++) await sleep(5);
      await sleep(200);
      const copies = async () => (await datapath.stats()).pairs.reduce((n, x) => n + Number((x.counters as unknown as Record<string, Record<string, { packets: bigint }>>).to_wl?.copy?.packets ?? 0n), 0);
      // Each counter over its own interval (the asynchronous ones take a while to read).
      const timed = async <T>(f: () => T | Promise<T>) => {
        const t = Date.now();
        const v = await f();
        return { v, t: (t + Date.now()) / 2 };
      };
      const c0 = await timed(() => dp!.client.counterDevice());
      const cp0 = await timed(copies);
      const [in0, tx0, a] = [ipInAll(sub), tx(), cpuSample(dp.pid)];
      await sleep(params.seconds * 1000);
      const [b, in1, tx1] = [cpuSample(dp.pid), ipInAll(sub), tx()];
      const cp1 = await timed(copies);
      const c1 = await timed(() => dp!.client.counterDevice());
      const s = (b.t - a.t) / 1000;
      const cs = (c1.t - c0.t) / 1000;
      const u = cpuUse(a, b);
      if (gen.exitCode !== null) throw new Error(`trafgen exited: ${outputOf(gen).err.trim()}`);
      await gen.stop();
      const delivered = (in1 - in0) / s;
      const p = points.get(`${n}/${side}`) ?? {
        containers: n, side, rssIdleKiB: [], rssKiB: [], cpu: [], cpuBusiest: [], rings, ringBytes: side === 'ours' ? DP_RINGS.inlineBytes : n * DP_RINGS.tapBytes,
        delivered: [], dpRx: [], dpRxDrop: [], sent: [], copies: [], setupMs: [],
      };
      p.rssIdleKiB.push(rssIdle);
      p.rssKiB.push(statusKiB(dp.pid, 'VmRSS'));
      p.cpu.push(u.total);
      p.cpuBusiest.push(u.busiest);
      p.delivered.push(delivered);
      p.dpRx.push(Number(c1.v.rxPackets - c0.v.rxPackets) / cs);
      p.dpRxDrop.push(Number(c1.v.rxDropPackets - c0.v.rxDropPackets) / cs);
      p.sent.push((tx1 - tx0) / s);
      p.copies.push((cp1.v - cp0.v) / ((cp1.t - cp0.t) / 1000));
      p.setupMs.push(setupMs);
      points.set(`${n}/${side}`, p);
    } finally {
      await dp?.stop();
      if (side === 'ours') for (const id of ids.slice(0, n)) await datapath.setMode({ id }, 'bypass');
    }
  };

  for (const n of sizes) {
    for (let r = 0; r < params.rounds; r++) {
      const order: Side[] = r % 2 ? ['nv', 'ours'] : ['ours', 'nv'];
      for (const side of order) {
        progress(`taptap: ${n} containers, ${side === 'ours' ? 'one ring (neuv-bpf TAP)' : "a ring per container (NeuVector's TAP)"}, round ${r + 1}/${params.rounds}`);
        try {
          await one(n, side);
        } catch (e) {
          errors.push(`${n} containers, ${side}: ${(e as Error).message.split('\n')[0]}`);
          progress(`taptap: ${(e as Error).message}`);
        }
      }
    }
  }
  datapath.close();
  const med = (xs: number[]) => summary(xs).median;
  const ratios = sizes
    .map((n) => {
      const a = points.get(`${n}/ours`);
      const b = points.get(`${n}/nv`);
      return a && b ? { containers: n, rss: med(b.rssKiB) / med(a.rssKiB), cpu: med(b.cpu) / Math.max(1e-6, med(a.cpu)) } : undefined;
    })
    .filter((x): x is { containers: number; rss: number; cpu: number } => !!x);
  return {
    params,
    points: [...points.values()],
    ratios,
    errors,
    notes: [
      `The DP runs as \`dp -s 1 -n 1\` (one data thread), ${rtEnabled() ? 'all its threads SCHED_FIFO like the traffic (NEUV_BENCH_RT=0: not)' : 'not real-time (NEUV_BENCH_RT=0)'}; a fresh DP for every N and side.`,
      `Ring sizes from the DP's source: ctrl_add_srvc_port opens a TPACKET_V1 RX and TX ring of 2048 blocks x 8 KiB (${DP_RINGS.inlineBytes / 1048576} MiB), ctrl_add_tap_port an RX ring of 512 x 8 KiB (${DP_RINGS.tapBytes / 1048576} MiB) per container, all mmapped MAP_LOCKED; VmRSS counts their pages (VmLck does not: the kernel inserts them).`,
      "NeuVector's TAP side keeps the pairs in neuv-bpf BYPASS: something must forward the containers' traffic, and BYPASS sends nothing to vth-neuv, so the DP sees only what its rings on the containers' eth0 see.",
      `Traffic: trafgen on the host bridge, ${params.pps} frames/s in total, round-robin over the N containers; delivered = Ip InReceives summed over them.`,
    ],
  };
}
