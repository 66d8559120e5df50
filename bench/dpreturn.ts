/**
 * Scenario 2: the DP return path as the number of pairs grows.
 *
 * 64-byte IPv4/UDP frames are injected into vth-neuv (trafgen, as the DP
 * would write them) with DA = the UCMAC of the pair added last, and counted
 * at the workload behind that pair's vin (Ip InReceives of its netns).
 *
 *   nv      NeuVector: two u32 filters per pair on vbr-neuv ingress, each at
 *           its own pref (ifindex % 65536), mirred only (pedit is missing
 *           here, so the DA stays the UCMAC: the measured workload's eth0
 *           gets the UCMAC as its MAC so those frames are still its own and
 *           it does the same work as with the rewrite).
 *   bpf     neuv-bpf with N pairs (Datapath.addPairs), mode FWD.
 *   bpf-1   neuv-bpf with only the measured pair, measured in the same round
 *           as `bpf`: the reference that makes "flat" a paired ratio.
 *
 * The measured pair has the highest ifindexes (vin 60000, vex 60001), so in
 * NeuVector's chain its filters come last, as for the container added last.
 * The other pairs are cheap: a veth pair inside the enforcer netns (vin and
 * vex are each other's peer), created in batches with `ip -b`, all in one
 * link group so one `ip link del group` removes them synchronously.
 * After the largest common size NeuVector gets more pairs, one at a time,
 * until `tc filter add` fails (u32 runs out of hash-table ids), and neuv-bpf
 * alone goes on to 4096 pairs.
 */
import { PairSpec } from '../src/pairs';
import { formatMac, ucmac } from '../src/mac';
import { NvPair, nvPairRules } from '../src/migrate/nvtc';
import { BpfSetup, VTH, addPairsIncidents, bpfAddPairs, bpfLoad, frameRate, ipIn, macOf, nvConnect, nvPair, udpFrameConf } from './net';
import { BenchNetns, netns, Summary, pairedRatio, progress, sh, summary, tmpDir, shResult } from './util';

const GROUP = '77';
const VIN_M = 'vinM';
const VEX_M = 'vexM';
const VIN_M_INDEX = 60000;
const VEX_M_INDEX = 60001;
const M_ID = VEX_M_INDEX & 0xffff;
const WL_MAC = '02:00:00:00:ea:61';
const cheapVin = (k: number) => `pi${k}`;
const cheapVex = (k: number) => `pe${k}`;
const cheapVinIndex = (k: number) => 100 + 2 * k;
const cheapVexIndex = (k: number) => 101 + 2 * k;
const cheapMac = (k: number) => macOf(0x10000 + k);

export interface DpReturnOptions {
  quick: boolean;
}

export interface SizePoint {
  pairs: number;
  nv?: Summary;
  bpf?: Summary;
  bpfRef?: Summary;
  /** bpf / nv, per round. */
  bpfOverNv?: Summary;
  /** bpf at N pairs / bpf with 1 pair, per round. */
  bpfOverRef?: Summary;
  /** Direct delivery (trafgen on the measured vin itself: no vbr-neuv, no classifier), same rounds. */
  floor?: Summary;
  /** Per-frame overhead over direct delivery, ns: 1e9/rate - 1e9/floor, per round. */
  nvOverheadNs?: Summary;
  bpfOverheadNs?: Summary;
  /** nvOverheadNs / bpfOverheadNs, per round. */
  overheadRatio?: Summary;
  /** u32 filters on vbr-neuv in NeuVector's chain. */
  nvFilters?: number;
}

export interface DpReturnResult {
  params: { rounds: number; warmMs: number; windowMs: number; sizes: number[]; bpfMax: number };
  points: SizePoint[];
  nvLimit: { lastOk: number; failedAt?: number; error?: string; filters: number };
  /** Largest spread of bpf/bpf-1 over all sizes (the "flat" figure). */
  bpfFlat: { min: number; max: number };
  /** Failures met on the way (and retried), for the record. */
  incidents: string[];
  notes: string[];
}

interface Side {
  enf: BenchNetns;
  wl: BenchNetns;
  pairs: number;
  conf: string;
}

async function side(label: string, wlMac: string, dir: string): Promise<Side> {
  const enf = netns(`ret-${label}-e`);
  const wl = netns(`ret-${label}-w`);
  enf.ip('link', 'add', VIN_M, 'index', String(VIN_M_INDEX), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', wl.name);
  enf.ip('link', 'add', VEX_M, 'index', String(VEX_M_INDEX), 'type', 'veth', 'peer', 'name', 'hM');
  for (const d of [VIN_M, VEX_M, 'hM']) enf.ip('link', 'set', 'dev', d, 'up');
  wl.ip('link', 'set', 'dev', 'eth0', 'address', wlMac);
  wl.ip('addr', 'add', '10.202.0.2/24', 'dev', 'eth0');
  wl.ip('link', 'set', 'dev', 'eth0', 'up');
  await Promise.all([enf.ready(), wl.ready()]);
  const conf = udpFrameConf(dir, { da: formatMac(ucmac(M_ID)), sa: '02:00:00:00:00:01', src: '10.202.0.1', dst: '10.202.0.2' });
  return { enf, wl, pairs: 0, conf };
}

/** Creates cheap pairs [from, to) in the enforcer netns. */
function createCheap(enf: BenchNetns, from: number, to: number): void {
  const lines: string[] = [];
  for (let k = from; k < to; k++) {
    lines.push(`link add ${cheapVin(k)} index ${cheapVinIndex(k)} group ${GROUP} type veth peer name ${cheapVex(k)} index ${cheapVexIndex(k)} group ${GROUP}`);
  }
  for (let i = 0; i < lines.length; i += 500) enf.ipBatch(lines.slice(i, i + 500));
}

export async function runDpReturn(o: DpReturnOptions): Promise<DpReturnResult> {
  const params = o.quick
    ? { rounds: 2, warmMs: 200, windowMs: 600, sizes: [1, 1000], bpfMax: 4096 }
    : { rounds: 6, warmMs: 300, windowMs: 1000, sizes: [1, 64, 256, 1000], bpfMax: 4096 };
  const dir = tmpDir();
  progress('dp return: building topologies');

  // NeuVector: vbr-neuv/vth-neuv as Connect makes them, filters added per pair.
  const nv = await side('nv', formatMac(ucmac(M_ID)), dir);
  nvConnect(nv.enf);
  const prefs = new Set<number>();
  const mPair = nvPair(VIN_M, VEX_M, VIN_M_INDEX, VEX_M_INDEX, WL_MAC, prefs);
  const vbrRules = (p: NvPair) => nvPairRules(p, 'fwd', { pedit: false }).slice(4);
  nv.enf.tcBatch(vbrRules(mPair));
  nv.pairs = 1;
  const nvAdd = (to: number) => {
    createCheap(nv.enf, nv.pairs - 1, to - 1);
    const rules: string[][] = [];
    for (let k = nv.pairs - 1; k < to - 1; k++) {
      rules.push(...vbrRules(nvPair(cheapVin(k), cheapVex(k), cheapVinIndex(k), cheapVexIndex(k), cheapMac(k), prefs)));
    }
    for (let i = 0; i < rules.length; i += 1000) nv.enf.tcBatch(rules.slice(i, i + 1000));
    nv.pairs = to;
  };

  // neuv-bpf, N pairs, and the 1-pair reference.
  const mSpec: PairSpec = { in: VIN_M, ex: VEX_M, mac: WL_MAC, mode: 'fwd' };
  const incidents = addPairsIncidents;
  incidents.length = 0;
  const bpf = await side('bpf', WL_MAC, dir);
  const bpfDp: BpfSetup = bpfLoad(bpf.enf);
  await bpfAddPairs(bpfDp.dp, [mSpec]);
  bpf.pairs = 1;
  const bpfAdd = async (to: number) => {
    createCheap(bpf.enf, bpf.pairs - 1, to - 1);
    const specs: PairSpec[] = [];
    for (let k = bpf.pairs - 1; k < to - 1; k++) specs.push({ in: cheapVin(k), ex: cheapVex(k), mac: cheapMac(k), mode: 'fwd' });
    for (let i = 0; i < specs.length; i += 512) await bpfAddPairs(bpfDp.dp, specs.slice(i, i + 512));
    bpf.pairs = to;
  };
  const ref = await side('ref', WL_MAC, dir);
  const refDp = bpfLoad(ref.enf);
  await bpfAddPairs(refDp.dp, [mSpec]);
  ref.pairs = 1;
  // The floor: the same frames sent straight out of the measured vin (to M), in the reference's namespaces.
  const floor: Side = { ...ref, conf: udpFrameConf(dir, { da: WL_MAC, sa: '02:00:00:00:00:01', src: '10.202.0.1', dst: '10.202.0.2' }) };

  const measure = (s: Side) => frameRate(s.enf, s === floor ? VIN_M : VTH, s.conf, ipIn(s.wl), { warmMs: params.warmMs, windowMs: params.windowMs });
  // u32 lists a hash-table entry ("fh 800:") and the filter itself ("fh 800::800") per pref: count the filters.
  const nvFilterCount = () =>
    (JSON.parse(sh('tc', ['-n', nv.enf.name, '-j', 'filter', 'show', 'dev', 'vbr-neuv', 'ingress']) || '[]') as Array<{ options?: { fh?: string } }>).filter((f) => f.options?.fh?.includes('::')).length;

  const points: SizePoint[] = [];
  const round = async (n: number, withNv: boolean) => {
    const xs = { nv: [] as number[], bpf: [] as number[], ref: [] as number[], floor: [] as number[] };
    const sides: Array<['nv' | 'bpf' | 'ref' | 'floor', Side]> = [['bpf', bpf], ['ref', ref]];
    // Direct delivery where it is compared with NeuVector (and always in a full run).
    if (withNv || !o.quick) sides.push(['floor', floor]);
    if (withNv) sides.unshift(['nv', nv]);
    for (let r = 0; r < params.rounds; r++) {
      for (let i = 0; i < sides.length; i++) {
        const [k, s] = sides[(i + r) % sides.length]!;
        xs[k].push((await measure(s)).pps);
      }
    }
    const over = (a: number[]) => summary(a.map((x, i) => 1e9 / x - 1e9 / xs.floor[i]!));
    const p: SizePoint = { pairs: n, bpf: summary(xs.bpf), bpfRef: summary(xs.ref), bpfOverRef: pairedRatio(xs.bpf, xs.ref) };
    if (xs.floor.length) {
      p.floor = summary(xs.floor);
      p.bpfOverheadNs = over(xs.bpf);
    }
    if (withNv) {
      p.nv = summary(xs.nv);
      p.bpfOverNv = pairedRatio(xs.bpf, xs.nv);
      p.nvFilters = nvFilterCount();
      p.nvOverheadNs = over(xs.nv);
      p.overheadRatio = pairedRatio(p.nvOverheadNs.samples, p.bpfOverheadNs!.samples);
    }
    points.push(p);
    progress(
      `dp return: ${n} pairs: ${withNv ? `nv ${(p.nv!.median / 1e3).toFixed(1)} kpps, ` : ''}bpf ${(p.bpf!.median / 1e3).toFixed(1)} kpps (1-pair ref ${(p.bpfRef!.median / 1e3).toFixed(1)}${p.floor ? `, direct ${(p.floor.median / 1e3).toFixed(1)}` : ''})`,
    );
  };

  for (const n of params.sizes) {
    progress(`dp return: adding pairs up to ${n}`);
    nvAdd(n);
    await bpfAdd(n);
    await round(n, true);
  }

  // NeuVector past its largest common size: one pair at a time until tc refuses.
  progress("dp return: adding NeuVector pairs until u32 refuses");
  const nvLimit: DpReturnResult['nvLimit'] = { lastOk: nv.pairs, filters: 0 };
  for (let n = nv.pairs + 1; n <= 1100; n++) {
    const k = n - 2;
    createCheap(nv.enf, k, k + 1);
    const p = nvPair(cheapVin(k), cheapVex(k), cheapVinIndex(k), cheapVexIndex(k), cheapMac(k), prefs);
    let err: string | undefined;
    for (const rule of vbrRules(p)) {
      const r = shResult('tc', ['-n', nv.enf.name, ...rule], { allowFail: true });
      if (r.code !== 0) {
        err = `tc ${rule.join(' ')}: ${r.stderr.trim().split('\n').join(' ')} (exit ${r.code})`;
        break;
      }
    }
    if (err) {
      nvLimit.failedAt = n;
      nvLimit.error = err;
      break;
    }
    nvLimit.lastOk = n;
    nv.pairs = n;
  }
  nvLimit.filters = nvFilterCount();
  progress(`dp return: NeuVector: ${nvLimit.lastOk} pairs ok${nvLimit.failedAt ? `, pair ${nvLimit.failedAt} refused` : ''}`);
  // Free NeuVector's side before the large neuv-bpf sizes.
  progress("dp return: removing NeuVector's pairs");
  nv.enf.ip('link', 'del', 'group', GROUP);
  nv.enf.del();
  nv.wl.del();

  for (const n of [params.bpfMax]) {
    progress(`dp return: adding neuv-bpf pairs up to ${n}`);
    await bpfAdd(n);
    await round(n, false);
  }
  const ratios = points.map((p) => p.bpfOverRef!.median);
  progress("dp return: removing neuv-bpf's pairs");
  bpf.enf.ip('link', 'del', 'group', GROUP);
  progress('dp return: done');
  bpfDp.dp.close();
  refDp.dp.close();
  return {
    params,
    points,
    nvLimit,
    bpfFlat: { min: Math.min(...ratios), max: Math.max(...ratios) },
    incidents,
    notes: [
      'Frames: 64-byte IPv4/UDP (to a port nobody listens on), DA = the measured pair\'s UCMAC, written into vth-neuv by trafgen (one worker), counted as Ip InReceives in the workload behind the pair\'s vin.',
      "NeuVector's vbr-neuv filters are mirred only (no act_pedit, no act_gact here). To keep the workload's work equal, its eth0 has the UCMAC as its MAC in NeuVector's topology, so the unrewritten frames are still its own.",
      "mirred 'mirror' also passes the original up the enforcer netns stack, where it is dropped: part of NeuVector's cost per frame.",
      'The measured pair has the highest ifindexes, so its two filters are the last of the u32 chain (the container added last).',
      'Direct delivery: the same frames sent by trafgen straight out of the measured vin to the workload (no vbr-neuv hop, no classifier), in the same rounds. Overhead = 1/rate - 1/direct rate: what the return path costs per frame beyond delivering it; a ratio of rates understates the classifier difference by the cost both share (sending and delivering the frame), which on this machine is several microseconds.',
    ],
  };
}
