/**
 * BENCHMARKS.md from the results of one run (bench/run.ts), and the one-line
 * summaries printed per scenario. Ratios first; absolute numbers as context.
 */
import type { ControlResult } from './control';
import type { DpReturnResult } from './dpreturn';
import { NvdpOutcome, TapTapOutcome, nvdpMarkdown, nvdpSummary, taptapMarkdown, taptapSummary } from './nvdp-report';
import type { BenchRow as OffloadRow } from './offload';
import { BATCH_TARGET_MS, OnboardResult, onboardMarkdown, onboardSummary } from './onboard';
import type { ProgCostResult } from './progcost';
import type { ThroughputResult, VariantId } from './throughput';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MachineInfo, ROOT, Summary, fmt, fmtRatio } from './util';

export interface KernelProbe {
  tcx: boolean;
  redirectPeer: boolean;
  actPedit: { ok: boolean; error?: string };
  actGact: { ok: boolean; error?: string };
  actMirred: { ok: boolean; error?: string };
}

export interface BenchResults {
  tool: 'neuv-bpf bench';
  command: string;
  quick: boolean;
  only?: string[];
  machine: MachineInfo;
  kernel: KernelProbe;
  startedAt: string;
  seconds: number;
  /** Busy fraction of all CPUs, sampled for 1 s before each scenario (load from other processes). */
  background: Record<string, number>;
  /** What the person who ran it says about the run (`--note`), printed under the machine lines. */
  note?: string;
  /** Load averages (1, 5, 15 min, as `uptime` shows them) before each scenario, and at the end under 'end'. */
  loadavg?: Record<string, number[]>;
  durations: Record<string, number>;
  errors: Record<string, string>;
  /** Nice value of the run and its children. */
  nice: number;
  /** SCHED_FIFO priority of the measured processes, 0 = not used (NEUV_BENCH_RT=0). */
  rt: number;
  /** sha256 of the build/neuv.bpf.o every load of the run used (copied at the start). */
  objSha256: string;
  progcost?: ProgCostResult;
  trace?: unknown;
  throughput?: ThroughputResult;
  dpreturn?: DpReturnResult;
  control?: ControlResult;
  /** Flow offload: TCP of an offloaded flow vs BYPASS vs FWD through the stub DP (bench/offload.ts). */
  offload?: OffloadRow[];
  /** FWD through NeuVector's real DP (bench/nvdp.ts), or why it was skipped. */
  nvdp?: NvdpOutcome;
  /** TAP with the real DP, one ring vs a ring per container (bench/taptap.ts), or why it was skipped. */
  taptap?: TapTapOutcome;
  /** Onboarding through the service: 1,000 pairs in one call, intercept latency (bench/onboard.ts). */
  onboard?: OnboardResult;
}

export interface Target {
  what: string;
  value: number | undefined;
  shown: string;
  target: string;
  met: boolean | undefined;
  section: string;
}

const med = (s: Summary | undefined) => s?.median;
const range = (s: Summary | undefined, scale = 1, digits = 3) =>
  s ? `${fmt(s.median * scale, digits)} (${fmt(s.min * scale, digits)}-${fmt(s.max * scale, digits)})` : 'n/a';
const rr = (s: Summary | undefined) => (s ? `${fmtRatio(s.median)} (${fmt(s.min)}-${fmt(s.max)})` : 'n/a');
const yes = (m: boolean | undefined) => (m === undefined ? '-' : m ? 'yes' : '**no**');

export function targets(r: BenchResults): Target[] {
  const t: Target[] = [];
  const thr = r.throughput;
  if (thr) {
    const a = med(thr.ratios['bypass-peer/plain tcp']?.ratio);
    const b = med(thr.ratios['bypass-peer/plain 64B']?.ratio);
    t.push({ what: 'BYPASS (redirect_peer) TCP throughput / plain veth', value: a, shown: fmtRatio(a), target: '>= 1.0x', met: a === undefined ? undefined : a >= 1.0, section: '1' });
    t.push({ what: 'BYPASS (redirect_peer) 64-byte frame rate / plain veth', value: b, shown: fmtRatio(b), target: '>= 0.95x', met: b === undefined ? undefined : b >= 0.95, section: '1' });
  }
  const dr = r.dpreturn;
  if (dr) {
    const p1000 = dr.points.find((p) => p.pairs === 1000);
    const x = med(p1000?.bpfOverNv);
    t.push({ what: 'DP return path at 1000 pairs: neuv-bpf / NeuVector u32 chain (frame rates)', value: x, shown: fmtRatio(x), target: '>= 15x', met: x === undefined ? undefined : x >= 15, section: '2' });
    const ov = med(p1000?.overheadRatio);
    if (ov !== undefined) {
      t.push({ what: 'DP return path at 1000 pairs: NeuVector / neuv-bpf per-frame overhead beyond direct delivery', value: ov, shown: fmtRatio(ov), target: '(context)', met: undefined, section: '2' });
    }
    const flat = Math.max(Math.abs(1 - dr.bpfFlat.min), Math.abs(dr.bpfFlat.max - 1));
    const sizes = dr.points.map((p) => p.pairs);
    t.push({
      what: `DP return path flat from ${Math.min(...sizes)} to ${Math.max(...sizes)} pairs (neuv-bpf N pairs / 1 pair)`,
      value: flat,
      shown: `${fmt(dr.bpfFlat.min)}-${fmt(dr.bpfFlat.max)}`,
      target: 'within 10%',
      met: flat <= 0.1,
      section: '2',
    });
  }
  const cp = r.control;
  if (cp) {
    const p = cp.onboard.find((o) => o.pairs === 1000);
    const s = med(p?.cliMs);
    t.push({ what: 'Onboard 1,000 pairs (neuv-bpf pair add --file, whole process)', value: s, shown: s === undefined ? 'n/a' : `${fmt(s / 1000)} s`, target: '< 1 s', met: s === undefined ? undefined : s < 1000, section: '3' });
    const x = med(p?.nvOverCli);
    const scaled = p && p.nvPairsRun < p.pairs ? ` (NeuVector scaled from ${p.nvPairsRun} pairs run)` : '';
    t.push({ what: `Onboard 1,000 pairs: NeuVector's tc processes / neuv-bpf pair add --file, wall time${scaled}`, value: x, shown: fmtRatio(x), target: '>= 20x', met: x === undefined ? undefined : x >= 20, section: '3' });
    const xc = med(p?.nvOverCliCpu);
    t.push({ what: 'Onboard 1,000 pairs: the same, CPU time', value: xc, shown: fmtRatio(xc), target: '(context)', met: undefined, section: '3' });
  }
  if (r.onboard) {
    const b = r.onboard.batchMs.median;
    t.push({ what: `Onboard ${r.onboard.params.pairs} pairs in one POST /v1/pairs (the service)`, value: b, shown: `${fmt(b)} ms`, target: `< ${BATCH_TARGET_MS} ms`, met: b < BATCH_TARGET_MS, section: '9' });
  }
  const off = offloadRows(r);
  if (off) {
    const x = off.offloaded.ratio;
    t.push({ what: 'FWD with the flow offloaded, TCP / BYPASS', value: x, shown: fmtRatio(x), target: '>= 0.9x', met: x === undefined ? undefined : x >= 0.9, section: '6' });
  }
  const pc = r.progcost;
  if (pc) {
    for (const [id, s] of Object.entries(pc.ratio)) {
      if (id.startsWith('ref-')) continue;
      const limit = PER_FRAME_TARGETS[id];
      t.push({
        what: `Per-frame cost, ${pc.labels[id]} / empty TC program`,
        value: s.median,
        shown: fmtRatio(s.median),
        target: limit === undefined ? '(context)' : `<= ${limit}x`,
        met: limit === undefined ? undefined : s.median <= limit,
        section: '4',
      });
    }
  }
  return t;
}

/** Per-frame cost targets (x the empty TC program): BYPASS 2.5x, FWD 3.5x; the other paths are context. */
export const PER_FRAME_TARGETS: Record<string, number> = { 'vex-bypass': 2.5, 'vex-fwd': 3.5, 'vin-fwd': 3.5, 'vbr-fwd': 3.5 };

/** One line per scenario, for stdout. */
export function summaryLine(name: string, r: BenchResults): string {
  if (r.errors[name]) return `${name}: FAILED: ${r.errors[name]}`;
  switch (name) {
    case 'progcost': {
      const pc = r.progcost!;
      const parts = Object.entries(pc.ratio).map(([id, s]) => `${id} ${fmtRatio(s.median)}`);
      const ins = pc.insns ? `; verified insns ${Object.entries(pc.insns).map(([p, x]) => `${p} ${x.verified}`).join(', ')}` : '';
      return `per-frame cost (x empty TC program ${fmt(pc.ns.empty!.median)} ns; targets BYPASS <= 2.5x, FWD <= 3.5x; ref-* = bare lookup+redirect floors): ${parts.join(', ')}${ins}`;
    }
    case 'trace':
      return `trace cost: ${traceLine(r.trace)}`;
    case 'throughput': {
      const q = r.throughput!.ratios;
      const g = (k: string) => fmtRatio(med(q[k]?.ratio));
      return (
        `throughput: BYPASS(redirect_peer)/plain TCP ${g('bypass-peer/plain tcp')} (>= 1.0x), 64B ${g('bypass-peer/plain 64B')} (>= 0.95x); ` +
        `floor (bare redirect_peer program)/plain 64B ${g('ref-peer/plain 64B')}, BYPASS/floor 64B ${g('bypass-peer/ref-peer 64B')}; ` +
        `bpf_redirect/plain TCP ${g('bypass-redirect/plain tcp')}, 64B ${g('bypass-redirect/plain 64B')}; tcx hooks/plain TCP ${g('bypass-tcx/plain tcp')}, 64B ${g('bypass-tcx/plain 64B')}; ` +
        `vs NeuVector pass-through TCP ${g('bypass-peer/nv-pass tcp')}, 64B ${g('bypass-peer/nv-pass 64B')}; ` +
        `TAP vs NeuVector TAP TCP ${g('tap/nv-tap tcp')}, 64B ${g('tap/nv-tap 64B')}; FWD to DP vs NeuVector 64B ${g('fwd-leg/nv-fwd-leg 64B')}`
      );
    }
    case 'dpreturn': {
      const d = r.dpreturn!;
      const last = d.points.filter((p) => p.bpfOverNv).pop();
      return (
        `dp return: neuv-bpf/NeuVector at ${last?.pairs} pairs ${fmtRatio(med(last?.bpfOverNv))} (>= 15x), overhead beyond direct delivery ${fmtRatio(med(last?.overheadRatio))} less; ` +
        `neuv-bpf N/1 pair ${fmt(d.bpfFlat.min)}-${fmt(d.bpfFlat.max)} over ${d.points.map((p) => p.pairs).join(', ')} pairs (within 10%); ` +
        `NeuVector ${d.nvLimit.failedAt ? `refuses pair ${d.nvLimit.failedAt}` : `took ${d.nvLimit.lastOk} pairs`}`
      );
    }
    case 'control': {
      const c = r.control!;
      const p = c.onboard.find((o) => o.pairs === 1000)!;
      const m = c.memory;
      return (
        `control plane: 1000 pairs: neuv-bpf CLI ${fmt(med(p.cliMs)! / 1000)} s (< 1 s; CPU ${fmt(med(p.cliCpuMs)! / 1000)} s), API ${fmt(med(p.apiMs)! / 1000)} s, ` +
        `NeuVector tc ${fmt(med(p.nvMs)! / 1000)} s${p.nvPairsRun < p.pairs ? ` (scaled from ${p.nvPairsRun} pairs)` : ''} = ${fmtRatio(med(p.nvOverCli))} (>= 20x; CPU ${fmtRatio(med(p.nvOverCliCpu))}); ` +
        `mode switch: CLI ${fmt(med(c.modeSwitch.cliMs))} ms, API ${fmt(med(c.modeSwitch.apiMs))} ms, NeuVector ${fmt(med(c.modeSwitch.nvMs))} ms` +
        (m ? `; loader peak RSS: load ${fmt(m.loadMaxRssKiB / 1024)} MiB, pair add 1000 ${fmt(m.addPairs1000MaxRssKiB / 1024)} MiB (node -e 0: ${fmt(m.nodeFloorKiB / 1024)} MiB)` : '')
      );
    }
    case 'offload': {
      const o = offloadRows(r)!;
      return (
        `flow offload (TCP, Gbit/s): offloaded ${fmt(o.offloaded.value)}, BYPASS ${fmt(o.bypass.value)}, FWD through the stub DP ${fmt(o.fwdDp.value)}; ` +
        `offloaded/BYPASS ${fmtRatio(o.offloaded.ratio)} (>= 0.9x), offloaded/FWD-through-DP ${fmtRatio(o.vsDp.value)}`
      );
    }
    case 'nvdp':
      return nvdpSummary(r.nvdp);
    case 'taptap':
      return taptapSummary(r.taptap);
    case 'onboard':
      return r.onboard ? onboardSummary(r.onboard) : 'onboard: not run';
    default:
      return `${name}: done`;
  }
}

/** The rows of bench/offload.ts by role (their names carry the labels). */
function offloadRows(r: BenchResults): { offloaded: OffloadRow; bypass: OffloadRow; fwdDp: OffloadRow; vsDp: OffloadRow } | undefined {
  const rows = r.offload;
  if (!rows || rows.length < 4) return undefined;
  const [offloaded, bypass, fwdDp, vsDp] = rows as [OffloadRow, OffloadRow, OffloadRow, OffloadRow];
  return { offloaded, bypass, fwdDp, vsDp };
}

function traceLine(t: unknown): string {
  const x = t as { offVsEmpty?: number; onVsOff?: number; onFilteredVsOff?: number } | undefined;
  if (!x || typeof x !== 'object') return 'not run';
  return `tracing off costs ${fmt(x.offVsEmpty)} ns over the empty program, on +${fmt(x.onVsOff)} ns, on but filtered out +${fmt(x.onFilteredVsOff)} ns`;
}

/** The ratios that matter most, one row each: [against, what, ratio, section]. */
function headline(r: BenchResults): string[][] {
  const rows: string[][] = [];
  const thr = r.throughput;
  const dr = r.dpreturn;
  const cp = r.control;
  const pc = r.progcost;
  if (dr) {
    const p = dr.points.find((x) => x.pairs === 1000);
    if (p?.bpfOverNv) rows.push(['NeuVector tc', 'DP return path, 64-byte frame rate at 1,000 pairs (2,000 u32 filters)', rr(p.bpfOverNv), '2']);
    if (p?.overheadRatio) rows.push(['NeuVector tc', 'DP return path, per-frame overhead beyond direct delivery at 1,000 pairs (NeuVector / neuv-bpf)', rr(p.overheadRatio), '2']);
    rows.push(['NeuVector tc', `pairs one node can hold: NeuVector refuses pair ${dr.nvLimit.failedAt ?? 'n/a'}; neuv-bpf measured flat up to ${Math.max(...dr.points.map((x) => x.pairs))}`, `${fmt(dr.bpfFlat.min)}-${fmt(dr.bpfFlat.max)} (neuv-bpf N / 1 pair)`, '2']);
  }
  if (cp) {
    const p = cp.onboard.find((x) => x.pairs === 1000);
    if (p) {
      rows.push(['NeuVector tc', 'onboarding 1,000 pairs, wall time (NeuVector / `pair add --file`)', rr(p.nvOverCli), '3']);
      rows.push(['NeuVector tc', 'onboarding 1,000 pairs, CPU time', rr(p.nvOverCliCpu), '3']);
    }
    const s = cp.modeSwitch;
    rows.push(['NeuVector tc', 'one mode switch (NeuVector / Datapath.setMode)', fmtRatio((med(s.nvMs) ?? NaN) / (med(s.apiMs) ?? NaN)), '3']);
  }
  if (thr) {
    const q = thr.ratios;
    const row = (against: string, k: string, what: string) => q[k] && rows.push([against, what, rr(q[k]!.ratio), '1']);
    row('NeuVector tc', 'bypass-peer/nv-pass 64B', "BYPASS / NeuVector's pass-through filters, 64-byte frames");
    row('NeuVector tc', 'bypass-peer/nv-pass tcp', "BYPASS / NeuVector's pass-through filters, TCP");
    row('NeuVector tc', 'tap/nv-tap 64B', 'TAP / NeuVector TAP, 64-byte frames');
    row('NeuVector tc', 'tap/nv-tap tcp', 'TAP / NeuVector TAP, TCP');
    row('NeuVector tc', 'fwd-leg/nv-fwd-leg 64B', 'FWD, host -> DP port, 64-byte frames');
    row('plain veth (the limit)', 'bypass-peer/plain tcp', 'BYPASS (redirect_peer), TCP');
    row('plain veth (the limit)', 'bypass-peer/plain 64B', 'BYPASS (redirect_peer), 64-byte frames');
    row('plain veth (the limit)', 'bypass-tcx/plain 64B', 'BYPASS (redirect_peer, tcx hooks), 64-byte frames');
    row('plain veth (the limit)', 'bypass-redirect/plain 64B', 'BYPASS (bpf_redirect), 64-byte frames');
    row('plain veth (the limit)', 'ref-peer/plain 64B', 'the floor of BYPASS: a bare redirect_peer program on vex, 64-byte frames');
    row('that floor', 'bypass-peer/ref-peer 64B', 'BYPASS (redirect_peer), 64-byte frames');
  }
  if (pc) {
    const b = pc.ratio['vex-bypass'];
    const f = pc.ratio['ref-redirect'];
    if (b) rows.push(['an empty TC program', 'per-frame program cost, vex BYPASS', rr(b), '4']);
    if (pc.ratio['vex-fwd']) rows.push(['an empty TC program', 'per-frame program cost, vex FWD (no flow offloaded on the node)', rr(pc.ratio['vex-fwd']), '4']);
    if (pc.ratio['vex-fwd-flows']) rows.push(['an empty TC program', 'per-frame program cost, vex FWD with flow lookups on (a miss)', rr(pc.ratio['vex-fwd-flows']), '4']);
    if (f) rows.push(['an empty TC program', 'per-frame cost of the bare floor (one hash lookup + bpf_redirect)', rr(f), '4']);
  }
  return rows;
}

/** One explanation, with this run's numbers, per target missed. */
function shortfalls(r: BenchResults): string[] {
  const out: string[] = [];
  const missed = new Set(targets(r).filter((t) => t.met === false).map((t) => t.section + ':' + t.what.split(' ')[0]));
  const thr = r.throughput;
  const pc = r.progcost;
  if (thr && (missed.has('1:BYPASS'))) {
    const v = (id: VariantId) => thr.variants.find((x) => x.id === id)?.pps?.median;
    const plain = v('plain');
    const peer = v('bpf-peer');
    const tcx = v('bpf-peer-tcx');
    const floor = v('ref-peer');
    const st = thr.bpfStats;
    if (plain && peer) {
      const extra = 1e9 / peer - 1e9 / plain;
      out.push(
        `BYPASS vs the plain veth pair (section 1): an intercepted frame costs ${fmt(extra)} ns more CPU than a plain one (${fmt(1e9 / plain)} ns), ` +
          `out of a path that is a whole veth hop longer: the host-side frame is received on vex (its receive path and the ingress hook) before the program hands it to the workload's ingress. ` +
          (floor
            ? `The bare program that does only that hand-off (\`return bpf_redirect_peer(vin, 0)\`, no map, no counter, attached the same way) reaches ${fmtRatio(med(thr.ratios['ref-peer/plain 64B']?.ratio))} of the plain pair (${fmt(1e9 / floor - 1e9 / plain)} ns more per frame): that is the bound of any tc program on vex; BYPASS is ${fmtRatio(med(thr.ratios['bypass-peer/ref-peer 64B']?.ratio))} of it. `
            : '') +
          (st?.['bpf-peer'] && st['ref-peer'] ? `Measured with kernel.bpf_stats_enabled in the same traffic, neuv_vex runs ${fmt(st['bpf-peer'].ns)} ns per frame and the bare program ${fmt(st['ref-peer'].ns)} ns. ` : '') +
          (tcx ? `Attached as a tcx link instead of clsact + cls_bpf the gap is ${fmt(1e9 / tcx - 1e9 / plain)} ns (the tcx variant). ` : '') +
          'TCP moves with GSO super-frames, so the per-frame cost matters less there, and its ratio swings more between rounds than its gap to 1.0.',
      );
    }
  }
  const dr = r.dpreturn;
  const p = dr?.points.find((x) => x.pairs === 1000);
  const rateMissed = targets(r).some((t) => t.what.startsWith('DP return path at 1000 pairs: neuv-bpf / NeuVector') && t.met === false);
  if (dr && p?.floor && p.nvOverheadNs && p.bpfOverheadNs && rateMissed) {
    const d = 1e9 / p.floor.median;
    out.push(
      `DP return path rate ratio (section 2): sending a frame and delivering it to the workload costs ${fmt(d)} ns on this machine whatever classifies it (direct delivery), ` +
        `NeuVector's 2,000-filter chain adds ${fmt(p.nvOverheadNs.median)} ns and neuv-bpf ${fmt(p.bpfOverheadNs.median)} ns, so the rate ratio is bounded by (${fmt(d)} + ${fmt(p.nvOverheadNs.median)}) / (${fmt(d)} + ${fmt(p.bpfOverheadNs.median)}). ` +
        `The return path itself is ${fmtRatio(p.overheadRatio?.median)} cheaper; the 15x rate ratio needs the shared part under ${fmt(p.nvOverheadNs.median / 14 - p.bpfOverheadNs.median)} ns per frame (a faster, quieter machine than this one).`,
    );
  }
  const flatMissed = targets(r).some((t) => t.what.startsWith('DP return path flat') && t.met === false);
  const big = dr?.points.find((x) => x.pairs === Math.max(...dr.points.map((y) => y.pairs)));
  if (dr && big && big !== p && flatMissed) {
    const ns = (x: typeof p) => (x?.bpfOverheadNs ? `${fmt(x.bpfOverheadNs.median)} ns` : 'n/a');
    out.push(
      `DP return path at ${big.pairs} pairs (section 2): ${fmtRatio(big.bpfOverRef?.median)} of one pair; the return path costs ${ns(big)} per frame beyond direct delivery there against ${ns(p)} at 1,000 pairs. ` +
        "Not the program: every bpf_redirect_peer looks its target up by ifindex (dev_get_by_index_rcu), a hash of 256 buckets per netns whose lists hold the newest device first, and the enforcer netns holds two devices per pair: at 4,096 pairs 32 per bucket, with the measured pair (created first) last in its list. " +
        '`node dist/bench/devchain.js` measures that walk alone, and perf shows dev_get_by_index_rcu taking over from the program as the pairs grow (docs/benchmarks.md).',
    );
  }
  const cp = r.control;
  const o = cp?.onboard.find((x) => x.pairs === 1000);
  if (cp && o && missed.has('3:Onboard')) {
    out.push(
      `Onboarding 1,000 pairs under 1 s (section 3): \`pair add --file\` took ${fmt(o.cliMs.median / 1000)} s of wall time but ${fmt(o.cliCpuMs.median / 1000)} s of CPU; ` +
        `Node.js start-up alone is ${fmt(cp.cliStartupMs.median)} ms, and the rest is 2,000 hook attaches (netlink under RTNL) and map writes, which wait for the CPU and for RTNL with everything else on this machine (CPU busy ${Math.round((r.background.control ?? 0) * 100)}% before the scenario). ` +
        `Datapath.addPairs in a running process took ${fmt(o.apiMs.median / 1000)} s.`,
    );
  }
  if (pc && [...missed].some((m) => m.startsWith('4:'))) {
    const e = pc.ns.empty?.median;
    const f1 = pc.ns['ref-redirect']?.median;
    const f2 = pc.ns['ref-rewrite']?.median;
    out.push(
      `Per-frame cost targets (BYPASS <= 2.5x, FWD <= 3.5x an empty program; section 4): on this machine BPF_PROG_TEST_RUN costs ${fmt(e)} ns per run with an empty program, and the barest program that looks up a port in a hash map and redirects costs ${fmt(f1)} ns (${fmtRatio(pc.ratio['ref-redirect']?.median)}), ${fmt(f2)} ns with a MAC rewrite (${fmtRatio(pc.ratio['ref-rewrite']?.median)}): ` +
        'Against those floors the datapath\'s paths cost ' +
        Object.entries(pc.overFloor).map(([id, s]) => `${id} ${fmtRatio(s.median)}`).join(', ') +
        '; the rest is the per-pair counters (a per-CPU hash lookup and two counter updates per frame), the config array lookup and the header parse (see the profile in section 4). TAP includes an skb clone and a veth transmit.',
    );
  }
  return out;
}

// ---------------------------------------------------------------- BENCHMARKS.md

const FIRST_PACKET_HEADING = "### First packet: the hook against the runtime's start event";

/**
 * Section 10, not a scenario of this run: the first-packet figures of the OCI
 * hook against event-driven interception, measured by test/oci-hook.test.ts
 * with real podman containers. Its table is docs/containers.md's, taken as it
 * is when the report is written (the method and the figures live there only).
 */
export function firstPacketMarkdown(doc = path.join(ROOT, 'docs', 'containers.md')): string[] {
  const lines = fs.readFileSync(doc, 'utf8').split('\n');
  const at = lines.indexOf(FIRST_PACKET_HEADING);
  const start = lines.findIndex((l, i) => i > at && l.startsWith('|'));
  if (at < 0 || start < 0) throw new Error(`${doc}: no table under '${FIRST_PACKET_HEADING}'`);
  let end = start;
  while (lines[end]?.startsWith('|')) end++;
  const anchor = FIRST_PACKET_HEADING.replace(/^#+ /, '').toLowerCase().replace(/[^a-z0-9 -]/g, '').replace(/ /g, '-');
  return [
    "## 10. First packet: the OCI hook against the runtime's start event",
    '',
    'Not a scenario of `make bench`: measured by test/oci-hook.test.ts with real podman containers (`make test`). ' +
      `The table is [docs/containers.md](docs/containers.md#${anchor})'s as it was when this file was written; the workload, the method, the machine's load and a second run are there.`,
    '',
    ...lines.slice(start, end),
    '',
  ];
}

/** A BENCHMARKS.md with section 10 as firstPacketMarkdown() writes it now (replaced, or put before Raw data). */
export function spliceFirstPacket(md: string, doc?: string): string {
  const section = firstPacketMarkdown(doc).join('\n') + '\n';
  const at = md.indexOf('\n## 10. ');
  if (at >= 0) {
    const next = md.indexOf('\n## ', at + 1);
    return md.slice(0, at + 1) + section + (next >= 0 ? md.slice(next + 1) : '');
  }
  const raw = md.indexOf('\n## Raw data');
  if (raw < 0) throw new Error("no '## Raw data' section to put section 10 before");
  return md.slice(0, raw + 1) + section + md.slice(raw + 1);
}

// `node dist/bench/report.js --first-packet`: BENCHMARKS.md's section 10 from docs/containers.md, without a bench run.
if (require.main === module) {
  if (process.argv[2] !== '--first-packet' || process.argv.length > 3) {
    process.stderr.write('usage: node dist/bench/report.js --first-packet\n');
    process.exit(2);
  }
  const file = path.join(ROOT, 'BENCHMARKS.md');
  fs.writeFileSync(file, spliceFirstPacket(fs.readFileSync(file, 'utf8')));
}

function table(head: string[], rows: string[][]): string {
  const out = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const r of rows) out.push(`| ${r.join(' | ')} |`);
  return out.join('\n');
}

export function markdown(r: BenchResults, reproduce: (only: string) => string): string {
  const m = r.machine;
  const L: string[] = [];
  const bg = Object.entries(r.background).map(([k, v]) => `${k} ${Math.round(v * 100)}%`).join(', ');
  L.push('# Benchmarks');
  L.push('');
  L.push(`Generated by \`${r.command}\` on ${m.date.slice(0, 10)}; do not edit by hand, run it again.`);
  L.push('');
  L.push(
    `Machine: Linux ${m.kernel}, ${m.cores} cores (${m.cpuModel}), ${m.memGiB} GiB RAM; Node.js ${m.node}; ${m.iproute2}; ` +
      `neuv-bpf commit ${m.commit}${m.dirty ? ' with uncommitted changes' : ''}, BPF object sha256 ${r.objSha256.slice(0, 12)} (the CLI, the object and the stub DP ran from a copy taken when the run started). The whole run took ${Math.round(r.seconds)} s${r.quick ? ' (`--quick`: a reduced set)' : ''}.`,
  );
  L.push('');
  L.push(
    `Kernel: tcx ${r.kernel.tcx ? 'yes' : 'no'}, bpf_redirect_peer ${r.kernel.redirectPeer ? 'yes' : 'no'}, act_mirred ${r.kernel.actMirred.ok ? 'yes' : 'no'}, ` +
      `act_pedit ${r.kernel.actPedit.ok ? 'yes' : `**no** (\`tc ... action pedit\`: ${r.kernel.actPedit.error})`}, ` +
      `act_gact ${r.kernel.actGact.ok ? 'yes' : `**no** (\`tc ... action drop\`: ${r.kernel.actGact.error})`}. ` +
      "So NeuVector's rules are built without the pedit rewrite (mirred only) and without `action drop`, as noted where it matters.",
  );
  L.push('');
  const la = r.loadavg ? Object.entries(r.loadavg).map(([k, v]) => `${k} ${v.map((x) => x.toFixed(2)).join(' ')}`).join('; ') : '';
  L.push(
    (la ? `Load average (1/5/15 min, as \`uptime\` shows it; ${m.cores} cores, shared with other engineers' builds and tests) before each scenario: ${la}. ` : '') +
    `CPU busy from other processes, sampled for 1 s before each scenario: ${bg || 'n/a'}. ` +
      `The run and all its processes ran at nice ${r.nice} (NEUV_BENCH_NICE), ` +
      (r.rt
        ? `and the traffic processes (trafgen, iperf3 at both ends, the stub DP) SCHED_FIFO priority ${r.rt} under \`timeout -s KILL\` (NEUV_BENCH_RT=0 turns that off): with other load on the machine, the 64-byte rate of a plain veth pair varied 10x between 100 ms slices at nice -10 and within a few % at SCHED_FIFO. Control-plane timings are not real-time (see section 3). `
        : 'without real-time scheduling (NEUV_BENCH_RT=0). ') +
      'The machine is shared; every comparison is interleaved (A and B alternate within each round, the order rotating) and ratios are medians of per-round ratios, so load that comes and goes hits both sides alike; absolute numbers move more than ratios.',
  );
  L.push('');
  if (r.note) {
    L.push(`Note on this run: ${r.note}`);
    L.push('');
  }
  L.push('Reproduce everything with `make bench` (as root; `make bench QUICK=1` for the reduced set). Each section names the command for its own figures.');
  L.push('');
  if (Object.keys(r.errors).length) {
    L.push('## Failed scenarios');
    L.push('');
    for (const [k, v] of Object.entries(r.errors)) L.push(`- ${k}: ${v}`);
    L.push('');
  }

  // ---- summary
  const hl = headline(r);
  if (hl.length) {
    L.push('## Headline ratios');
    L.push('');
    L.push(table(['neuv-bpf against', 'what', 'ratio (median, min-max)', 'section'], hl));
    L.push('');
  }
  L.push('## Targets');
  L.push('');
  const ts = targets(r);
  L.push(table(['what', 'measured', 'target', 'met', 'section'], ts.map((t) => [t.what, t.shown, t.target, yes(t.met), t.section])));
  L.push('');
  const why = shortfalls(r);
  if (why.length) {
    L.push('### Where it falls short, and why');
    L.push('');
    for (const w of why) L.push(`- ${w}`);
    L.push('');
  }

  // ---- 1
  const thr = r.throughput;
  if (thr) {
    L.push('## 1. Forwarding throughput through one intercepted pair');
    L.push('');
    L.push(
      `Reproduce: \`${reproduce('throughput')}\`. TCP: ${thr.params.rounds} rounds of one iperf3 stream host -> workload, ${thr.params.tcpSeconds} s each (${thr.params.tcpOmit} s omitted first); ` +
        `64-byte frames: ${thr.params.ppsRounds} rounds of trafgen (one worker) host -> workload, counted at the receiver over ${thr.params.windowMs / 1000} s after ${thr.params.warmMs} ms of warm-up. ` +
        'Sender, forwarding and receiver of a frame all run on the sending CPU (the veth hand-offs are processed in its softirq), so the frame rate is the inverse of the whole path\'s CPU cost per frame (except through the stub DP, a process of its own).',
    );
    L.push('');
    L.push('Ratios (median of per-round ratios, min-max):');
    L.push('');
    const rl: Record<string, string> = {
      'bypass-peer/plain tcp': 'neuv-bpf BYPASS (redirect_peer) / plain veth, TCP',
      'bypass-peer/plain 64B': 'neuv-bpf BYPASS (redirect_peer) / plain veth, 64-byte frames',
      'bypass-redirect/plain tcp': 'neuv-bpf BYPASS (bpf_redirect) / plain veth, TCP',
      'bypass-redirect/plain 64B': 'neuv-bpf BYPASS (bpf_redirect) / plain veth, 64-byte frames',
      'bypass-tcx/plain tcp': 'neuv-bpf BYPASS (redirect_peer, hooks as tcx links) / plain veth, TCP',
      'bypass-tcx/plain 64B': 'neuv-bpf BYPASS (redirect_peer, hooks as tcx links) / plain veth, 64-byte frames',
      'bypass-peer/nv-pass tcp': "neuv-bpf BYPASS (redirect_peer) / NeuVector's pass-through filters, TCP",
      'bypass-peer/nv-pass 64B': "neuv-bpf BYPASS (redirect_peer) / NeuVector's pass-through filters, 64-byte frames",
      'tap/nv-tap tcp': 'neuv-bpf TAP / NeuVector TAP, TCP',
      'tap/nv-tap 64B': 'neuv-bpf TAP / NeuVector TAP, 64-byte frames',
      'fwd-leg/nv-fwd-leg 64B': 'neuv-bpf FWD / NeuVector FWD (no pedit), host -> DP port, 64-byte frames',
      'fwd-dp/plain tcp': 'neuv-bpf FWD through the stub DP and back / plain veth, TCP',
      'fwd-dp/plain 64B': 'neuv-bpf FWD through the stub DP and back / plain veth, 64-byte frames',
      'ref-peer/plain tcp': 'floor: bare redirect_peer program on vex / plain veth, TCP',
      'ref-peer/plain 64B': 'floor: bare redirect_peer program on vex / plain veth, 64-byte frames',
      'bypass-peer/ref-peer 64B': 'neuv-bpf BYPASS (redirect_peer) / that floor, 64-byte frames',
    };
    L.push(table(['ratio', 'value', 'target'], Object.entries(thr.ratios).map(([k, v]) => [rl[k] ?? k, rr(v.ratio), v.target !== undefined ? `>= ${v.target}x` : ''])));
    L.push('');
    L.push('Absolute numbers (median, min-max over the rounds):');
    L.push('');
    const order: VariantId[] = ['plain', 'ref-peer', 'nv-pass', 'bpf-redirect', 'bpf-peer', 'bpf-peer-tcx', 'nv-tap', 'bpf-tap', 'nv-fwd-leg', 'bpf-fwd-leg', 'bpf-fwd-dp'];
    L.push(
      table(
        ['variant', 'TCP Gbit/s', '64-byte kframes/s received', 'kframes/s offered by the sender', 'counted at'],
        order
          .map((id) => thr.variants.find((v) => v.id === id))
          .filter((v): v is NonNullable<typeof v> => !!v)
          .map((v) => [v.label, v.tcp ? range(v.tcp) : 'not possible (see notes)', range(v.pps, 1e-3), range(v.offered, 1e-3), v.counter]),
      ),
    );
    L.push('');
    for (const n of thr.notes) L.push(`- ${n}`);
    const c = thr.checks as Record<string, unknown>;
    if (c['bpf-peer.eth0RxOverIpIn'] !== undefined) {
      L.push(
        `- Device counters and bpf_redirect_peer: with redirect_peer the workload's eth0 rx packet counter moved ${fmt(c['bpf-peer.eth0RxOverIpIn'] as number)}x as much as its IP layer's count (plain veth: ${fmt(c['plain.eth0RxOverIpIn'] as number)}x), so on this kernel the peer's rx counters do see redirect_peer traffic (docs/datapath.md §7: not on older kernels). The figures above count at the IP layer anyway.`,
      );
    }
    if (thr.bpfStats) {
      L.push(
        `- The programs' own run time in real traffic (kernel.bpf_stats_enabled for one more 64-byte measurement, restored after): ` +
          Object.entries(thr.bpfStats).map(([id, s]) => `${id === 'bpf-peer' ? 'neuv_vex (BYPASS)' : 'the bare redirect_peer program'} ${fmt(s.ns)} ns per frame over ${s.runs.toLocaleString('en')} runs`).join(', ') +
          '.',
      );
    }
    if (c['bpf-redirect.redirectPeer'] !== undefined) {
      L.push(`- Redirect kind as recorded at pair add: bpf_redirect variant ${JSON.stringify(c['bpf-redirect.redirectPeer'])}, redirect_peer variant ${JSON.stringify(c['bpf-peer.redirectPeer'])}.`);
    }
    L.push('');
  }

  // ---- 2
  const dr = r.dpreturn;
  if (dr) {
    L.push('## 2. DP return path as the number of pairs grows');
    L.push('');
    L.push(`Reproduce: \`${reproduce('dpreturn')}\`. ${dr.params.rounds} rounds per size, ${dr.params.windowMs / 1000} s windows after ${dr.params.warmMs} ms of warm-up.`);
    L.push('');
    L.push(
      table(
        ['pairs', 'NeuVector u32 filters on vbr-neuv', 'NeuVector kframes/s', 'neuv-bpf kframes/s', 'neuv-bpf 1-pair reference, same rounds', 'neuv-bpf / NeuVector', 'neuv-bpf N / 1 pair'],
        dr.points.map((p) => [
          String(p.pairs),
          p.nvFilters !== undefined ? String(p.nvFilters) : 'n/a (refused past ' + dr.nvLimit.lastOk + ' pairs)',
          p.nv ? range(p.nv, 1e-3) : 'n/a',
          range(p.bpf, 1e-3),
          range(p.bpfRef, 1e-3),
          p.bpfOverNv ? rr(p.bpfOverNv) : 'n/a',
          rr(p.bpfOverRef),
        ]),
      ),
    );
    L.push('');
    L.push('Per-frame overhead over direct delivery (ns, median and min-max; see the notes):');
    L.push('');
    L.push(
      table(
        ['pairs', 'direct delivery kframes/s', 'NeuVector overhead ns', 'neuv-bpf overhead ns', 'NeuVector / neuv-bpf overhead'],
        dr.points.filter((p) => p.floor).map((p) => [String(p.pairs), range(p.floor, 1e-3), p.nvOverheadNs ? range(p.nvOverheadNs) : 'n/a', range(p.bpfOverheadNs), p.overheadRatio ? rr(p.overheadRatio) : 'n/a']),
      ),
    );
    L.push('');
    L.push(
      `NeuVector's limit: pairs added one at a time after ${dr.points.filter((p) => p.nv).pop()?.pairs}: ${dr.nvLimit.lastOk} pairs went in (${dr.nvLimit.filters} u32 filters on vbr-neuv)` +
        (dr.nvLimit.failedAt ? `; pair ${dr.nvLimit.failedAt} was refused: \`${dr.nvLimit.error}\`.` : '; no refusal up to there.'),
    );
    L.push('');
    for (const n of dr.notes) L.push(`- ${n}`);
    for (const n of dr.incidents ?? []) L.push(`- Incident: ${n}.`);
    L.push('');
  }

  // ---- 3
  const cp = r.control;
  if (cp) {
    L.push('## 3. Control plane: onboarding pairs and switching modes');
    L.push('');
    L.push(
      `Reproduce: \`${reproduce('control')}\`. ${cp.params.reps} repetitions per size for neuv-bpf; NeuVector ${Object.entries(cp.params.nvReps).map(([n, k]) => `${k}x at ${n}`).join(', ')} ` +
        '(NeuVector, the CLI and the API alternate, their order flipping each repetition). Each size has its own enforcer netns holding exactly its pairs.',
    );
    L.push('');
    L.push(
      table(
        ['pairs', 'NeuVector: tc processes', 'NeuVector wall ms', 'NeuVector CPU ms', 'neuv-bpf `pair add --file` wall ms (one process)', 'its CPU ms', 'Datapath.addPairs wall ms', 'its CPU ms', 'NeuVector / CLI, wall', 'NeuVector / CLI, CPU'],
        cp.onboard.map((p) => [
          String(p.pairs),
          String(p.nvProcesses),
          `${range(p.nvMs)}${p.nvPairsRun < p.pairs ? ` (scaled from the ${p.nvPairsRun} pairs run in the time budget)` : ''}`,
          range(p.nvCpuMs),
          range(p.cliMs),
          range(p.cliCpuMs),
          range(p.apiMs),
          range(p.apiCpuMs),
          rr(p.nvOverCli),
          rr(p.nvOverCliCpu),
        ]),
      ),
    );
    L.push('');
    L.push(`CLI start-up floor (\`neuv-bpf version\`: Node.js, modules, libbpf, feature probes): ${range(cp.cliStartupMs)} ms; it is part of every CLI figure.`);
    L.push('');
    const s = cp.modeSwitch;
    L.push(
      table(
        ['one mode switch (pair among ' + s.switchedAtPairs + ')', 'ms (median, min-max)'],
        [
          [`NeuVector: ResetPortPair + FwdPortPair (${s.nvProcesses} tc processes)`, range(s.nvMs)],
          ['neuv-bpf `pair mode` (one process)', range(s.cliMs)],
          ['neuv-bpf Datapath.setMode', range(s.apiMs)],
          ['NeuVector / CLI', fmtRatio((med(s.nvMs) ?? NaN) / (med(s.cliMs) ?? NaN))],
          ['NeuVector / API', fmtRatio((med(s.nvMs) ?? NaN) / (med(s.apiMs) ?? NaN))],
        ],
      ),
    );
    L.push('');
    for (const n of cp.notes) L.push(`- ${n}`);
    L.push('');
  }

  // ---- 4
  const pc = r.progcost;
  if (pc) {
    L.push('## 4. Per-frame program cost (BPF_PROG_TEST_RUN)');
    L.push('');
    L.push(`Reproduce: \`${reproduce('progcost')}\`. ${pc.params.rounds} rounds, repeat ${pc.params.repeat.toLocaleString('en')} per run, paths interleaved; 64-byte IPv4/UDP frames.`);
    L.push('');
    L.push(
      table(
        ['path', 'ns per frame', 'x empty program', 'x its floor'],
        Object.keys(pc.ns).map((id) => [pc.labels[id] ?? id, range(pc.ns[id]), id === 'empty' ? '1x' : rr(pc.ratio[id]), pc.overFloor[id] ? rr(pc.overFloor[id]) : '']),
      ),
    );
    L.push('');
    for (const n of pc.notes) L.push(`- ${n}`);
    L.push('');
    if (pc.insns) {
      L.push('Program sizes (this object, loaded as `neuv-bpf load` loads it on this kernel): instructions the verifier processed (`verified_insns`, the budget test in test/datapath.test.ts holds each under 2,000) and the loaded program (xlated BPF instructions, global functions included).');
      L.push('');
      L.push(table(['program', 'verified insns', 'xlated insns'], Object.entries(pc.insns).map(([p, x]) => [`neuv_${p}`, String(x.verified), String(x.xlated)])));
      L.push('');
    }
  }
  if (r.trace !== undefined) {
    L.push('### Trace cost (bench/trace.ts)');
    L.push('');
    L.push(`Reproduce: \`${reproduce('trace')}\` (bench/trace.ts, called when it exports a function). ${traceLine(r.trace)}.`);
    L.push('');
    L.push(
      "Caveat on those figures: BPF_PROG_TEST_RUN runs all `repeat` runs on one skb, and bench/trace.ts's frame has DA = M, so only the first run of each batch takes the FWD path (DA := UCMAC); the others see the UCMAC and go to the peer (checked here with the counters: 1 to_dp and 999 to_peer for repeat 1000). They measure the vex to-peer path with tracing off/on; section 4 works around this (the workload MAC set to its own UCMAC).",
    );
    const ns = (r.trace as { ns?: Record<string, number> }).ns;
    if (ns) {
      L.push('');
      L.push(table(['case', 'ns per frame'], Object.entries(ns).map(([k, v]) => [k, fmt(v)])));
    }
    L.push('');
  }

  // ---- 5
  const mem = r.control?.memory;
  if (mem) {
    L.push('## 5. Loader peak memory');
    L.push('');
    L.push(`Reproduce: \`${reproduce('control')}\` (measured after the control-plane runs). ${mem.how}.`);
    L.push('');
    L.push(
      table(
        ['process', 'peak RSS MiB'],
        [
          ['`neuv-bpf load`', fmt(mem.loadMaxRssKiB / 1024)],
          ['`neuv-bpf pair add --file` with 1,000 pairs', fmt(mem.addPairs1000MaxRssKiB / 1024)],
          ['`node -e 0` (the runtime alone)', fmt(mem.nodeFloorKiB / 1024)],
          ...(mem.tcMaxRssKiB !== undefined ? [["one `tc` process (NeuVector spawns 8 per pair, one at a time)", fmt(mem.tcMaxRssKiB / 1024)]] : []),
        ],
      ),
    );
    L.push('');
  }

  // ---- 6
  const off = offloadRows(r);
  if (off) {
    L.push('## 6. Flow offload: an offloaded flow against BYPASS and against FWD through the DP');
    L.push('');
    L.push(
      `Reproduce: \`${reproduce('offload')}\` (also alone: \`node dist/bench/offload.js [--rounds N]\`). One TCP stream (iperf3) from the host netns into an intercepted workload; ` +
        'the three variants in a rotating order each round, ratios taken per round. Offloaded: FWD with the stub DP offloading every allowed flow after its first 20 frames ' +
        '(`build/stub-dp --offload-after 20`), so the rest of the stream stays in the kernel; FWD through the DP: the stub DP reads and writes back every frame.',
    );
    L.push('');
    L.push(
      table(
        ['path', 'TCP Gbit/s (median)', 'ratio (median of per-round)', 'rounds'],
        [
          ['FWD, flow offloaded by the DP', fmt(off.offloaded.value), `${fmtRatio(off.offloaded.ratio)} of BYPASS (target >= 0.9x)`, off.offloaded.note ?? ''],
          ['BYPASS (no DP)', fmt(off.bypass.value), '1', off.bypass.note ?? ''],
          ['FWD through the stub DP, no offload', fmt(off.fwdDp.value), `${fmtRatio(off.fwdDp.ratio)} of BYPASS`, off.fwdDp.note ?? ''],
        ],
      ),
    );
    L.push('');
    L.push(`Offloaded / FWD through the DP: ${fmtRatio(off.vsDp.value)}.`);
    L.push('');
  }

  if (r.nvdp) L.push(...nvdpMarkdown(r.nvdp, reproduce));
  if (r.taptap) L.push(...taptapMarkdown(r.taptap, reproduce));
  if (r.onboard) L.push(...onboardMarkdown(r.onboard, reproduce));
  L.push(...firstPacketMarkdown());

  L.push('## Raw data');
  L.push('');
  L.push('Every sample of this run is in the JSON file written next to it (see `make bench` output; `BENCHMARKS.json` for a full run).');
  L.push('');
  return L.join('\n');
}
