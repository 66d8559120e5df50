/**
 * Scenario 1: forwarding throughput through one intercepted pair, TCP
 * (iperf3) and 64-byte frames (trafgen, counted at the receiver), for:
 *
 *   plain         a plain veth pair, host <-> workload: the limit
 *   nv-pass       NeuVector's catch-all filters (u32 + mirred): how it forwards what it does not send to the DP
 *   nv-tap        NeuVector's TapPortPair vin/vex filters (u32 + mirred; no pedit, so the copy keeps DA = M)
 *   nv-fwd-leg    NeuVector's FwdPortPair without pedit: frames reach the DP port with DA = M, so no DP can
 *                 hand them back; measured up to the DP port (vth-neuv rx) only
 *   bpf-redirect  neuv-bpf BYPASS, bpf_redirect (NEUV_BPF_NO_REDIRECT_PEER=1 at pair add)
 *   bpf-peer      neuv-bpf BYPASS, bpf_redirect_peer
 *   bpf-peer-tcx  the same with the vin/vex hooks attached as tcx links (NEUV_BPF_ATTACH=tcx) instead of
 *                 clsact + cls_bpf, the default for ports (what the attach kind costs per frame)
 *   bpf-tap       neuv-bpf TAP (copies to vbr-neuv)
 *   bpf-fwd-leg   neuv-bpf FWD up to the DP port (vth-neuv rx), no DP running: the same leg as nv-fwd-leg
 *   bpf-fwd-dp    neuv-bpf FWD through the stub DP (build/stub-dp) and back to the workload
 *   ref-peer      the floor of BYPASS: a bare `bpf_redirect_peer(vin)` program on vex (bench/floor.ts),
 *                 clsact + cls_bpf like bpf-peer: what the extra hop costs whatever the program does
 *
 * After the rounds, one more 64-byte measurement of bpf-peer and ref-peer with
 * kernel.bpf_stats_enabled (restored after) gives each program's own run time
 * per frame in real traffic.
 *
 * Every variant has its own namespaces, all built first; then each round
 * measures every variant once (the order rotates each round), so drift and
 * other load on the machine hit all of them alike. Ratios are taken per
 * round (paired) and their median reported.
 *
 * In TAP nothing reads vth-neuv: the copies reach the DP port and die there
 * (the same for both implementations).
 */
import { Datapath } from '../src/pairs';
import {
  Topo,
  bpfAddPairs,
  bpfLoad,
  devRx,
  frameRate,
  ipIn,
  nvInstall,
  pairTopo,
  pingOk,
  plainTopo,
  tcpGbps,
  udpFrameConf,
  VTH,
} from './net';
import { StubDp } from '../harness/stub-dp';
import { Summary, pairedRatio, progress, rt, sh, stubDpPath, summary, tmpDir } from './util';
import { ProgRunStats, refPeerProgram, withBpfStats } from './floor';

export type VariantId = 'plain' | 'nv-pass' | 'nv-tap' | 'nv-fwd-leg' | 'bpf-redirect' | 'bpf-peer' | 'bpf-peer-tcx' | 'bpf-tap' | 'bpf-fwd-leg' | 'bpf-fwd-dp' | 'ref-peer';

export const VARIANT_LABELS: Record<VariantId, string> = {
  plain: '(a) plain veth pair, no interception (the limit)',
  'nv-pass': "(b) NeuVector tc: catch-all u32 + mirred (its pass-through path)",
  'nv-tap': '(b) NeuVector tc: TAP rules, u32 + mirred (no pedit)',
  'nv-fwd-leg': '(f) NeuVector tc: FWD rules without pedit, host -> DP port only',
  'bpf-redirect': '(c) neuv-bpf BYPASS, bpf_redirect',
  'bpf-peer': '(d) neuv-bpf BYPASS, bpf_redirect_peer',
  'bpf-peer-tcx': '(d) neuv-bpf BYPASS, bpf_redirect_peer, vin/vex hooks as tcx links',
  'bpf-tap': '(e) neuv-bpf TAP',
  'bpf-fwd-leg': '(f) neuv-bpf FWD, host -> DP port only',
  'bpf-fwd-dp': '(f) neuv-bpf FWD through the stub DP and back',
  'ref-peer': '(g) floor: a bare bpf_redirect_peer(vin) program on vex (no map, no check, no counter), clsact + cls_bpf',
};

export interface ThroughputOptions {
  quick: boolean;
}

export interface VariantResult {
  id: VariantId;
  label: string;
  /** TCP Gbit/s per round (absent: not measurable for this variant). */
  tcp?: Summary;
  /** Received 64-byte frames per second per round. */
  pps?: Summary;
  /** Frames per second the sender put on the wire (context: the offered load). */
  offered?: Summary;
  /** Where frames were counted. */
  counter: string;
  notes: string[];
}

export interface ThroughputResult {
  params: { rounds: number; ppsRounds: number; tcpSeconds: number; tcpOmit: number; warmMs: number; windowMs: number };
  variants: VariantResult[];
  ratios: Record<string, { metric: 'tcp' | 'pps'; a: VariantId; b: VariantId; ratio: Summary; target?: number }>;
  checks: Record<string, unknown>;
  /** Programs' own run time per frame in real traffic (kernel.bpf_stats_enabled), 64-byte frames. */
  bpfStats?: Record<string, ProgRunStats>;
  notes: string[];
}

interface Variant {
  id: VariantId;
  topo: Topo;
  tcp: boolean;
  conf: string;
  counter: string;
  count: () => number;
  alt?: () => number;
  notes: string[];
  stop?: () => Promise<void>;
  dp?: Datapath;
  /** The program on vex whose run time bpf_stats reads. */
  vexProgId?: number;
}

export async function runThroughput(o: ThroughputOptions): Promise<ThroughputResult> {
  const params = o.quick
    ? { rounds: 2, ppsRounds: 3, tcpSeconds: 1, tcpOmit: 0, warmMs: 200, windowMs: 500 }
    : { rounds: 5, ppsRounds: 8, tcpSeconds: 3, tcpOmit: 1, warmMs: 300, windowMs: 1000 };
  const dir = tmpDir();
  const variants: Variant[] = [];
  const checks: Record<string, unknown> = {};
  const frameTo = (t: Topo) => udpFrameConf(dir, { da: t.wlMac, sa: t.hostMac, src: t.hostAddr, dst: t.wlAddr });

  progress('throughput: building topologies');
  {
    const t = await plainTopo('thr-plain');
    variants.push({ id: 'plain', topo: t, tcp: true, conf: frameTo(t), counter: 'workload Ip InReceives', count: ipIn(t.wl), alt: devRx(t.wl, 'eth0'), notes: [] });
  }
  for (const v of ['pass', 'tap', 'fwd'] as const) {
    const t = await pairTopo(`thr-nv${v}`);
    nvInstall(t, v);
    const id: VariantId = v === 'pass' ? 'nv-pass' : v === 'tap' ? 'nv-tap' : 'nv-fwd-leg';
    const leg = v === 'fwd';
    variants.push({
      id,
      topo: t,
      tcp: !leg,
      conf: frameTo(t),
      counter: leg ? 'vth-neuv rx packets (the DP port)' : 'workload Ip InReceives',
      count: leg ? devRx(t.enf!, VTH) : ipIn(t.wl),
      notes: [],
    });
  }
  for (const id of ['bpf-redirect', 'bpf-peer', 'bpf-peer-tcx', 'bpf-tap', 'bpf-fwd-leg', 'bpf-fwd-dp'] as const) {
    const t = await pairTopo(`thr-${id}`);
    const { dp, pinRoot } = bpfLoad(t.enf!);
    const mode = id === 'bpf-tap' ? 'tap' : id.startsWith('bpf-fwd') ? 'fwd' : 'bypass';
    const attachOld = process.env.NEUV_BPF_ATTACH;
    if (id === 'bpf-peer-tcx') process.env.NEUV_BPF_ATTACH = 'tcx';
    let added;
    try {
      [added] = await bpfAddPairs(dp, [{ in: t.vin!, ex: t.vex!, mac: t.wlMac, mode }], id === 'bpf-redirect');
    } finally {
      if (attachOld === undefined) delete process.env.NEUV_BPF_ATTACH;
      else process.env.NEUV_BPF_ATTACH = attachOld;
    }
    checks[`${id}.redirectPeer`] = added!.redirectPeer;
    const leg = id === 'bpf-fwd-leg';
    const v: Variant = {
      id,
      topo: t,
      tcp: !leg,
      conf: frameTo(t),
      counter: leg ? 'vth-neuv rx packets (the DP port)' : 'workload Ip InReceives',
      count: leg ? devRx(t.enf!, VTH) : ipIn(t.wl),
      alt: id === 'bpf-peer' ? devRx(t.wl, 'eth0') : undefined,
      notes: [],
      dp,
      vexProgId: id === 'bpf-peer' ? (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'pinned', `${pinRoot}/prog_vex`])) as { id: number }).id : undefined,
    };
    if (id === 'bpf-fwd-dp') {
      // As the traffic around it: SCHED_FIFO unless NEUV_BENCH_RT=0 (it blocks in poll() when idle).
      const stub = await StubDp.start(t.enf!.name, { bin: stubDpPath(), under: rt(), intervalMs: 1000 });
      v.stop = async () => {
        checks['bpf-fwd-dp.stubDp'] = await stub.counts();
        stub.stop();
      };
    }
    variants.push(v);
  }

  {
    const t = await pairTopo('thr-ref-peer');
    const progId = refPeerProgram(t.enf!, t.vex!, t.vinIfindex!);
    refPeerProgram(t.enf!, t.vin!, t.vexIfindex!); // the way back (TCP's ACKs, the ping's reply)
    variants.push({ id: 'ref-peer', topo: t, tcp: true, conf: frameTo(t), counter: 'workload Ip InReceives', count: ipIn(t.wl), notes: [], vexProgId: progId });
  }

  // Smoke: every variant that should deliver does (one ping each).
  for (const v of variants) {
    if (!v.tcp) continue;
    const ok = pingOk(v.topo.host, v.topo.wlAddr);
    checks[`${v.id}.ping`] = ok;
    if (!ok) throw new Error(`throughput: ${v.id}: no ping reply from the workload; the topology is broken`);
  }

  const tcp = new Map<VariantId, number[]>();
  const pps = new Map<VariantId, number[]>();
  const offered = new Map<VariantId, number[]>();
  const alt = new Map<VariantId, number[]>();
  const altBase = new Map<VariantId, number[]>();
  const push = (m: Map<VariantId, number[]>, id: VariantId, x: number) => m.set(id, [...(m.get(id) ?? []), x]);

  const rotate = (r: number) => variants.map((_, i) => variants[(i + r) % variants.length]!);
  for (let r = 0; r < params.rounds; r++) {
    progress(`throughput: TCP round ${r + 1}/${params.rounds}`);
    for (const v of rotate(r)) {
      if (!v.tcp) continue;
      push(tcp, v.id, await tcpGbps(v.topo.host, v.topo.wl, v.topo.wlAddr, params.tcpSeconds, params.tcpOmit));
    }
  }
  for (let r = 0; r < params.ppsRounds; r++) {
    progress(`throughput: 64-byte frames round ${r + 1}/${params.ppsRounds}`);
    for (const v of rotate(r)) {
      const res = await frameRate(v.topo.host, v.topo.hostIf, v.conf, v.count, { warmMs: params.warmMs, windowMs: params.windowMs, alt: v.alt });
      push(pps, v.id, res.pps);
      push(offered, v.id, res.offered);
      if (res.alt !== undefined) {
        push(alt, v.id, res.alt);
        push(altBase, v.id, res.mean);
      }
    }
  }
  // The programs' own cost per frame in real traffic: one more 64-byte measurement each with BPF stats on.
  const statsOf = variants.filter((v) => v.vexProgId !== undefined);
  let bpfStats: Record<string, ProgRunStats> | undefined;
  if (statsOf.length) {
    progress('throughput: 64-byte frames with kernel.bpf_stats_enabled (program run time per frame)');
    bpfStats = (
      await withBpfStats(Object.fromEntries(statsOf.map((v) => [v.id, v.vexProgId!])), async () => {
        for (const v of statsOf) await frameRate(v.topo.host, v.topo.hostIf, v.conf, v.count, { warmMs: params.warmMs, windowMs: params.windowMs });
      })
    ).stats;
  }
  for (const v of variants) await v.stop?.();

  // Device rx counters against the IP layer's count: do they see redirect_peer traffic on this kernel?
  for (const id of ['plain', 'bpf-peer'] as const) {
    const a = alt.get(id);
    const b = altBase.get(id);
    if (a && b) checks[`${id}.eth0RxOverIpIn`] = pairedRatio(a, b).median;
  }
  if (variants.some((v) => v.dp)) {
    for (const v of variants) {
      if (!v.dp) continue;
      const s = await v.dp.stats();
      const p = s.pairs[0];
      if (p) checks[`${v.id}.counters`] = JSON.parse(JSON.stringify(p.counters, (_k, x) => (typeof x === 'bigint' ? Number(x) : x)));
      v.dp.close();
    }
  }

  const results: VariantResult[] = variants.map((v) => ({
    id: v.id,
    label: VARIANT_LABELS[v.id],
    tcp: tcp.has(v.id) ? summary(tcp.get(v.id)!) : undefined,
    pps: summary(pps.get(v.id)!),
    offered: summary(offered.get(v.id)!),
    counter: v.counter,
    notes: v.notes,
  }));
  const ratio = (metric: 'tcp' | 'pps', a: VariantId, b: VariantId, target?: number) => {
    const m = metric === 'tcp' ? tcp : pps;
    return { metric, a, b, ratio: pairedRatio(m.get(a)!, m.get(b)!), ...(target !== undefined ? { target } : {}) };
  };
  const ratios: ThroughputResult['ratios'] = {
    'bypass-peer/plain tcp': ratio('tcp', 'bpf-peer', 'plain', 1.0),
    'bypass-peer/plain 64B': ratio('pps', 'bpf-peer', 'plain', 0.95),
    'ref-peer/plain tcp': ratio('tcp', 'ref-peer', 'plain'),
    'ref-peer/plain 64B': ratio('pps', 'ref-peer', 'plain'),
    'bypass-peer/ref-peer 64B': ratio('pps', 'bpf-peer', 'ref-peer'),
    'bypass-redirect/plain tcp': ratio('tcp', 'bpf-redirect', 'plain'),
    'bypass-redirect/plain 64B': ratio('pps', 'bpf-redirect', 'plain'),
    'bypass-tcx/plain tcp': ratio('tcp', 'bpf-peer-tcx', 'plain'),
    'bypass-tcx/plain 64B': ratio('pps', 'bpf-peer-tcx', 'plain'),
    'bypass-peer/nv-pass tcp': ratio('tcp', 'bpf-peer', 'nv-pass'),
    'bypass-peer/nv-pass 64B': ratio('pps', 'bpf-peer', 'nv-pass'),
    'tap/nv-tap tcp': ratio('tcp', 'bpf-tap', 'nv-tap'),
    'tap/nv-tap 64B': ratio('pps', 'bpf-tap', 'nv-tap'),
    'fwd-leg/nv-fwd-leg 64B': ratio('pps', 'bpf-fwd-leg', 'nv-fwd-leg'),
    'fwd-dp/plain tcp': ratio('tcp', 'bpf-fwd-dp', 'plain'),
    'fwd-dp/plain 64B': ratio('pps', 'bpf-fwd-dp', 'plain'),
  };
  return {
    params,
    variants: results,
    ratios,
    checks,
    bpfStats,
    notes: [
      'NeuVector variants are built from src/migrate/nvtc.ts without `action pedit` (act_pedit is not in this kernel) and without `action drop` (no act_gact): TAP copies keep DA = M, and the two vbr-neuv filters of TapPortPair are left out.',
      "NeuVector's FWD without pedit cannot round-trip through a DP: its frames reach vth-neuv with DA = M instead of the pair's UCMAC, so the DP cannot tell the pair and its vbr-neuv filters (match on the UCMAC) never fire. Only the host -> DP port leg is compared.",
      'mirred "mirror" (what tc.go writes) also lets the original frame go on up the enforcer netns stack, where it is dropped (DA is not a local MAC): part of what NeuVector costs.',
      'All interfaces keep their default offloads (TSO/GRO on the veths) in every variant; vbr-neuv/vth-neuv have rx/tx checksum offload off in both implementations, as NeuVector sets them.',
    ],
  };
}
