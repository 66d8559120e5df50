/**
 * Scenario `nvdp`: FWD through NeuVector's real enforcer DP (built from its
 * source tarball, harness/nvdp.ts), TCP (iperf3) and 64-byte frames
 * (trafgen), host -> workload through one intercepted pair, for:
 *
 *   plain        a plain veth pair: the limit
 *   nv-fwd       NeuVector's tc pipe in FWD (its FwdPortPair rules, src/migrate/nvtc.ts) with the real DP on vth-neuv.
 *                This kernel has no act_pedit: each u32 match + pedit rewrite is done by a small cls_bpf
 *                classifier instead (the same match, the same 6-byte rewrite), followed by NeuVector's own
 *                `action mirred` (bench/nvpedit.ts)
 *   bpf-fwd      neuv-bpf FWD with the same real DP
 *   bpf-offload  neuv-bpf FWD with the same real DP and `neuv-bpf serve --dp PIDFILE --offload RULE`
 *                (src/offload/): the service offloads each session the DP has decided, after OFFLOAD_AFTER
 *                packets each way (one-way for the 64-byte flow); the DP sees the first frames only
 *
 * Each variant has its own namespaces and its own DP (`dp -s 1 -n 1`, one
 * data thread); each round measures all of them, the order rotating; ratios
 * per round, medians. The DP's CPU time (all threads, and its busiest
 * thread) is read from /proc/<pid>/task/<tid>/stat around every
 * measurement: a busiest thread at ~100% says the DP is the ceiling.
 * Skipped, with the paths looked at, when the DP's tarball is absent.
 */
import * as fs from 'node:fs';
import { NvDp, buildNvdp, nvdpUnavailable } from '../harness/nvdp';
import { Flows } from '../src/flows';
import { ServiceClient } from '../src/service/client';
import type { OffloadStatus } from '../src/service/client';
import { bcmac, formatMac, ucmac } from '../src/mac';
import { Topo, VTH, bpfAddPairs, bpfLoad, frameRate, ipIn, nvConnect, nvPair, pairTopo, pingOk, plainTopo, tcpGbps, udpFrameConf } from './net';
import { nvPeditRules } from './nvpedit';
import { RT_PRIORITY, Summary, cliPath, onCleanup, pairedRatio, progress, rtEnabled, sh, sleep, spawnGroup, summary, tmpDir } from './util';

export type NvdpVariant = 'plain' | 'nv-fwd' | 'bpf-fwd' | 'bpf-offload';
export const NVDP_VARIANTS: NvdpVariant[] = ['plain', 'nv-fwd', 'bpf-fwd', 'bpf-offload'];
export const NVDP_LABELS: Record<NvdpVariant, string> = {
  plain: 'plain veth pair, no interception (the limit)',
  'nv-fwd': "NeuVector's tc pipe, FWD (u32 match + pedit as a cls_bpf classifier, mirred), real DP",
  'bpf-fwd': 'neuv-bpf FWD, real DP',
  'bpf-offload': 'neuv-bpf FWD, real DP, sessions the DP decided offloaded by `neuv-bpf serve --offload`',
};

/** CPU time of a process, all threads and per thread (clock ticks). */
export interface CpuSample {
  t: number;
  total: number;
  threads: Map<number, { name: string; ticks: number }>;
}

export const CLK_TCK = 100;

export function cpuSample(pid: number): CpuSample {
  const threads = new Map<number, { name: string; ticks: number }>();
  let total = 0;
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const s = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'));
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(f[11]) + Number(f[12]);
      threads.set(Number(tid), { name, ticks });
      total += ticks;
    } catch {
      /* thread gone */
    }
  }
  return { t: Date.now(), total, threads };
}

/** CPU use between two samples, as a fraction of one core: the whole process and its busiest thread. */
export function cpuUse(a: CpuSample, b: CpuSample): { total: number; busiest: number; busiestName: string } {
  const s = Math.max(1e-3, (b.t - a.t) / 1000);
  let busiest = 0;
  let busiestName = '';
  for (const [tid, x] of b.threads) {
    const d = x.ticks - (a.threads.get(tid)?.ticks ?? 0);
    if (d > busiest) {
      busiest = d;
      busiestName = x.name;
    }
  }
  return { total: (b.total - a.total) / CLK_TCK / s, busiest: busiest / CLK_TCK / s, busiestName };
}

/** VmRSS of a process, KiB. */
export function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
}

/** A DP in a bench netns, killed at cleanup. */
export async function benchDp(ns: string, o: { noPort?: boolean } = {}): Promise<NvDp> {
  const dp = await NvDp.start({ netns: ns, noPort: o.noPort });
  onCleanup(() => dp.kill(), `NeuVector DP ${dp.pid}`);
  // As the stub DP and the traffic around it: every thread SCHED_FIFO unless NEUV_BENCH_RT=0 (it sleeps in epoll when idle).
  if (rtEnabled()) sh('chrt', ['-f', '-a', '-p', String(RT_PRIORITY), String(dp.pid)]);
  return dp;
}

interface Variant {
  id: NvdpVariant;
  topo: Topo;
  conf: string;
  dp?: NvDp;
  /** neuv-bpf pin root and pair id (flow offload). */
  pins?: string;
  pairId?: number;
  /** The service offloading what the DP decided (bpf-offload). */
  service?: ServiceClient;
}

export interface NvdpResult {
  params: { rounds: number; ppsRounds: number; tcpSeconds: number; tcpOmit: number; warmMs: number; windowMs: number };
  labels: Record<NvdpVariant, string>;
  tcp: Record<NvdpVariant, Summary>;
  pps: Record<NvdpVariant, Summary>;
  /** The DP's CPU (fraction of one core) per measurement: whole process, busiest thread. */
  dpCpu: Partial<Record<NvdpVariant, { tcp: Summary; tcpBusiest: Summary; pps: Summary; ppsBusiest: Summary; busiestName: string }>>;
  ratios: Record<string, { metric: 'tcp' | 'pps'; a: NvdpVariant; b: NvdpVariant; ratio: Summary }>;
  /** Sessions offloaded per measurement (bpf-offload). */
  offloaded: number[];
  /** Frames the offloaded entries carried per measurement (their packets counters, both directions). */
  fastFrames: { tcp: number[]; pps: number[] };
  checks: Record<string, unknown>;
  notes: string[];
}

/**
 * trafgen through sendto() (a rate it never reaches), for every variant. Chosen when frames from its
 * TX ring (the default), whose headers sit in page fragments, never took an offloaded entry (the flow
 * lookup read only the skb's linear data; measured: 0 of them did). The lookup now copies such headers
 * (neuv_flow_copy); kept so the figures stay comparable with the runs before.
 */
const SENDTO = ['-b', '10000000pps'];

/** The service's rule: a session offloaded once the DP has seen OFFLOAD_AFTER packets of it each way (one way: the 64-byte flow). */
export const OFFLOAD_AFTER = 20;
const OFFLOAD_RULE = `after=${OFFLOAD_AFTER},oneway,every=20,recheck=60`;

/**
 * `neuv-bpf serve` in a variant's enforcer netns, supervising its DP (a pid
 * file) and offloading what it decided; resolves with its client once it
 * serves and sees the DP up.
 */
async function benchService(t: Topo, pins: string, dp: NvDp, dir: string): Promise<ServiceClient> {
  const pidfile = `${dir}/dp-${dp.pid}.pid`;
  const socket = `${dir}/svc-${dp.pid}.sock`;
  fs.writeFileSync(pidfile, `${dp.pid}\n`);
  const child = spawnGroup(process.execPath, [cliPath(), '--netns', t.enf!.name, '--bpffs', pins, 'serve', '--socket', socket, '--dp', pidfile, '--offload', OFFLOAD_RULE], { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' });
  onCleanup(() => void child.stop(), 'service');
  const client = new ServiceClient({ socket, timeoutMs: 10000 });
  onCleanup(() => client.close(), 'service client');
  const end = Date.now() + 60000;
  for (;;) {
    try {
      if ((await client.dp()).state === 'up') return client;
    } catch {
      /* not serving yet */
    }
    if (child.exitCode !== null || Date.now() > end) throw new Error(`nvdp: neuv-bpf serve did not come up with the DP: ${(child as unknown as { output: () => { err: string } }).output().err.trim()}`);
    await sleep(50);
  }
}

export async function runNvdp(o: { quick: boolean }): Promise<NvdpResult | { skipped: string }> {
  const why = nvdpUnavailable();
  if (why) return { skipped: why };
  buildNvdp({ log: progress });
  const params = o.quick
    ? { rounds: 2, ppsRounds: 2, tcpSeconds: 2, tcpOmit: 1, warmMs: 400, windowMs: 500 }
    : { rounds: 5, ppsRounds: 6, tcpSeconds: 3, tcpOmit: 1, warmMs: 500, windowMs: 1000 };
  const dir = tmpDir();
  const checks: Record<string, unknown> = {};
  const variants: Variant[] = [];
  const frameTo = (t: Topo) => udpFrameConf(dir, { da: t.wlMac, sa: t.hostMac, src: t.hostAddr, dst: t.wlAddr });

  progress('nvdp: building topologies and starting one DP per variant');
  {
    const t = await plainTopo('nvdp-plain');
    variants.push({ id: 'plain', topo: t, conf: frameTo(t) });
  }
  {
    const t = await pairTopo('nvdp-nv');
    nvConnect(t.enf!);
    const p = nvPair(t.vin!, t.vex!, t.vinIfindex!, t.vexIfindex!, t.wlMac, new Set());
    t.enf!.tcBatch(nvPeditRules(p, dir));
    const dp = await benchDp(t.enf!.name);
    const id = t.vexIfindex! & 0xffff;
    dp.client.addMac({ mac: t.wlMac, ucmac: formatMac(ucmac(id)), bcmac: formatMac(bcmac(id)), ips: [t.wlAddr] });
    dp.client.cfgMac([t.wlMac], { tap: false });
    await dp.client.sync();
    variants.push({ id: 'nv-fwd', topo: t, conf: frameTo(t), dp });
  }
  for (const id of ['bpf-fwd', 'bpf-offload'] as const) {
    const t = await pairTopo(`nvdp-${id}`);
    const { dp: datapath, pinRoot } = bpfLoad(t.enf!);
    const [added] = await bpfAddPairs(datapath, [{ in: t.vin!, ex: t.vex!, mac: t.wlMac, mode: 'fwd' }]);
    datapath.close();
    const dp = await benchDp(t.enf!.name);
    dp.client.addMac({ mac: t.wlMac, ucmac: added!.ucmac, bcmac: added!.bcmac, ips: [t.wlAddr] });
    dp.client.cfgMac([t.wlMac], { tap: false });
    await dp.client.sync();
    checks[`${id}.redirectPeer`] = added!.redirectPeer;
    const service = id === 'bpf-offload' ? await benchService(t, pinRoot, dp, dir) : undefined;
    variants.push({ id, topo: t, conf: frameTo(t), dp, pins: pinRoot, pairId: added!.id, service });
  }
  for (const v of variants) {
    const ok = pingOk(v.topo.host, v.topo.wlAddr);
    checks[`${v.id}.ping`] = ok;
    if (!ok) throw new Error(`nvdp: ${v.id}: no ping reply from the workload through ${v.dp ? 'the DP' : 'the pair'}`);
  }

  const tcp = new Map<NvdpVariant, number[]>();
  const pps = new Map<NvdpVariant, number[]>();
  const cpu = new Map<string, number[]>();
  const busiestName = new Map<NvdpVariant, string>();
  const offloaded: number[] = [];
  const fastFrames = new Map<string, number[]>();
  const push = (m: Map<string, number[]>, k: string, x: number) => m.set(k, [...(m.get(k) ?? []), x]);
  const flowsOf = new Map<NvdpVariant, Flows>();
  for (const v of variants) {
    if (v.id !== 'bpf-offload') continue;
    const f = Flows.open(v.pins!);
    onCleanup(() => f.close(), 'flows');
    flowsOf.set(v.id, f);
  }

  /** New sessions: how many reached the DP (its session counter), how many the service offloaded, and whether each offloaded one had OFFLOAD_AFTER packets through the DP first. */
  const firstToDp = { tcpSessions: 0, offloaded: 0, decidedByDpFirst: 0 };

  /** One measurement with the DP's CPU read around it; for bpf-offload, the service offloads meanwhile. */
  const measure = async <T>(v: Variant, metric: 'tcp' | 'pps', fn: () => Promise<T>): Promise<T> => {
    const flows = flowsOf.get(v.id);
    const svc = v.service;
    if (svc && metric === 'pps') {
      // trafgen's one flow, the same every round: 2x OFFLOAD_AFTER of its frames through the DP first, offloaded by
      // the service once the DP lists it, then the flood (a flooded DP answers its control socket late).
      const before = (await svc.offloadStatus()).stats.allow;
      v.topo.host.exec('trafgen', ['--dev', v.topo.hostIf, '--conf', v.conf, '--cpus', '1', '-n', String(2 * OFFLOAD_AFTER), '-q', ...SENDTO]);
      const end = Date.now() + 5000;
      while ((await svc.offloadStatus()).stats.allow === before && Date.now() < end) await sleep(20);
      if (!checks['bpf-offload.udpEntry']) checks['bpf-offload.udpEntry'] = JSON.parse(JSON.stringify(flows!.list({ id: v.pairId! }), (_k, x) => (typeof x === 'bigint' ? Number(x) : x)));
    }
    const s0: OffloadStatus | undefined = svc && (await svc.offloadStatus());
    const dev0 = svc && metric === 'tcp' ? await v.dp!.client.counterDevice() : undefined;
    const a = v.dp ? cpuSample(v.dp.pid) : undefined;
    const r = await fn();
    if (v.dp && a) {
      const u = cpuUse(a, cpuSample(v.dp.pid));
      push(cpu, `${v.id}.${metric}`, u.total);
      push(cpu, `${v.id}.${metric}.busiest`, u.busiest);
      busiestName.set(v.id, u.busiestName);
    }
    if (svc && s0) {
      const s1 = await svc.offloadStatus();
      const n = s1.stats.allow - s0.stats.allow;
      offloaded.push(n + (metric === 'pps' && flows!.list({ id: v.pairId! }).length > 0 ? 1 : 0)); // pps: its flow offloaded just before, if it was
      if (dev0) {
        const fresh = s1.recent.filter((o) => o.time > (s0.recent.at(-1)?.time ?? 0) && o.proto === 'tcp');
        firstToDp.tcpSessions += Number((await v.dp!.client.counterDevice()).tcpSessions - dev0.tcpSessions);
        firstToDp.offloaded += fresh.length;
        firstToDp.decidedByDpFirst += fresh.filter((o) => o.dpClientPkts >= OFFLOAD_AFTER && o.dpServerPkts >= OFFLOAD_AFTER).length;
      }
    }
    if (flows) {
      push(fastFrames, metric, flows.list({ id: v.pairId! }).reduce((n, f) => n + Number(f.packets), 0));
      flows.clearPair(v.pairId!); // the next round goes through the DP first again
    }
    return r;
  };

  const rotate = (r: number) => variants.map((_, i) => variants[(i + r) % variants.length]!);
  for (let r = 0; r < params.rounds; r++) {
    progress(`nvdp: TCP round ${r + 1}/${params.rounds}`);
    for (const v of rotate(r)) {
      push(tcp, v.id, await measure(v, 'tcp', () => tcpGbps(v.topo.host, v.topo.wl, v.topo.wlAddr, params.tcpSeconds, params.tcpOmit)));
    }
  }
  for (let r = 0; r < params.ppsRounds; r++) {
    progress(`nvdp: 64-byte frames round ${r + 1}/${params.ppsRounds}`);
    for (const v of rotate(r)) {
      const res = await measure(v, 'pps', () => frameRate(v.topo.host, v.topo.hostIf, v.conf, ipIn(v.topo.wl), { warmMs: params.warmMs, windowMs: params.windowMs, trafgen: SENDTO }));
      push(pps, v.id, res.pps);
    }
  }
  for (const v of variants) {
    if (!v.dp) continue;
    const c = await v.dp.client.counterDevice();
    checks[`${v.id}.dpCounters`] = { rx: Number(c.rxPackets), rxDrop: Number(c.rxDropPackets), tx: Number(c.txPackets), txDrop: Number(c.txDropPackets) };
    checks[`${v.id}.dpRssKiB`] = rssKiB(v.dp.pid);
    await v.dp.stop();
  }
  for (const f of flowsOf.values()) f.close();
  checks['bpf-offload.newSessions'] = firstToDp;

  const by = <T>(f: (id: NvdpVariant) => T) => Object.fromEntries(NVDP_VARIANTS.map((id) => [id, f(id)])) as Record<NvdpVariant, T>;
  const ratio = (metric: 'tcp' | 'pps', a: NvdpVariant, b: NvdpVariant) => {
    const m = metric === 'tcp' ? tcp : pps;
    return { metric, a, b, ratio: pairedRatio(m.get(a)!, m.get(b)!) };
  };
  const ratios: NvdpResult['ratios'] = {};
  for (const metric of ['tcp', 'pps'] as const) {
    const tag = metric === 'tcp' ? 'tcp' : '64B';
    ratios[`bpf-fwd/nv-fwd ${tag}`] = ratio(metric, 'bpf-fwd', 'nv-fwd');
    ratios[`bpf-fwd/plain ${tag}`] = ratio(metric, 'bpf-fwd', 'plain');
    ratios[`nv-fwd/plain ${tag}`] = ratio(metric, 'nv-fwd', 'plain');
    ratios[`bpf-offload/plain ${tag}`] = ratio(metric, 'bpf-offload', 'plain');
    ratios[`bpf-offload/bpf-fwd ${tag}`] = ratio(metric, 'bpf-offload', 'bpf-fwd');
  }
  const dpCpu: NvdpResult['dpCpu'] = {};
  for (const id of NVDP_VARIANTS) {
    if (!cpu.has(`${id}.tcp`)) continue;
    dpCpu[id] = {
      tcp: summary(cpu.get(`${id}.tcp`)!),
      tcpBusiest: summary(cpu.get(`${id}.tcp.busiest`)!),
      pps: summary(cpu.get(`${id}.pps`)!),
      ppsBusiest: summary(cpu.get(`${id}.pps.busiest`)!),
      busiestName: busiestName.get(id) ?? '',
    };
  }
  return {
    params,
    labels: NVDP_LABELS,
    tcp: by((id) => summary(tcp.get(id)!)),
    pps: by((id) => summary(pps.get(id)!)),
    dpCpu,
    ratios,
    offloaded,
    fastFrames: { tcp: fastFrames.get('tcp') ?? [], pps: fastFrames.get('pps') ?? [] },
    checks,
    notes: [
      `The DP runs as \`dp -s 1 -n 1\` (standalone, one data thread) through build/nvdp-run, its ring on ${VTH}; the workload is its endpoint, inline (ctrl_cfg_mac tap:false), no policy (everything allowed).`,
      "This kernel has no act_pedit, so NeuVector's FWD rules cannot rewrite the MAC as its tc driver writes them; nv-fwd replaces each u32 match + pedit of FwdPortPair with a cls_bpf classifier doing the same match and the same 6-byte rewrite, then NeuVector's own `action mirred` (egress mirror, as tc.go writes it). A program does the match at least as fast as u32 + pedit, so this favours NeuVector, if anything.",
      "64-byte frames: trafgen sending with sendto() (`-b 10000000pps`, a rate it never reaches) in every variant, not from its TX ring, as in the runs before the flow lookup read headers outside the skb's linear data (the ring's frames carry theirs in page fragments; an offloaded entry then never matched them).",
      'DP CPU is its user+system time over each measurement (iperf3/trafgen start-up included), as a fraction of one core: the whole process (all threads) and its busiest thread.',
      `bpf-offload: \`neuv-bpf serve --dp PIDFILE --offload ${OFFLOAD_RULE}\` (src/offload/) reads the DP's sessions (ctrl_list_session) every 20 ms and offloads each one the DP decided once it has seen ${OFFLOAD_AFTER} of its packets each way (TCP established), one way for the 64-byte flow (${2 * OFFLOAD_AFTER} of its frames through the DP before the flood). The flow entries are cleared after each measurement, so every round starts through the DP.`,
      'New sessions reach the DP first: over the TCP measurements of bpf-offload, checks["bpf-offload.newSessions"] counts the new TCP sessions in the DP (its device counter), the sessions the service offloaded, and those of them the DP had seen at least OFFLOAD_AFTER packets of each way (all of them, or the service decided something the DP had not).',
    ],
  };
}
