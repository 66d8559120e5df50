/**
 * The summary lines and BENCHMARKS.md sections of the scenarios with
 * NeuVector's real DP (bench/nvdp.ts, bench/taptap.ts).
 */
import { OFFLOAD_AFTER } from './nvdp';
import type { NvdpResult, NvdpVariant } from './nvdp';
import type { TapTapResult } from './taptap';
import { Summary, fmt, fmtRatio, summary } from './util';

export type NvdpOutcome = NvdpResult | { skipped: string };

const rr = (s: Summary | undefined) => (s ? `${fmtRatio(s.median)} (${fmt(s.min)}-${fmt(s.max)})` : 'n/a');
const pct = (s: Summary | undefined) => (s ? `${Math.round(s.median * 100)}%` : '-');

export function table(head: string[], rows: string[][]): string {
  return [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function nvdpSummary(o: NvdpOutcome | undefined): string {
  if (!o) return 'nvdp: not run';
  if ('skipped' in o) return `real DP FWD: skipped: ${o.skipped}`;
  const g = (k: string) => fmtRatio(o.ratios[k]?.ratio.median);
  const c = (id: NvdpVariant) => o.dpCpu[id];
  return (
    `real DP FWD: neuv-bpf/NeuVector tc TCP ${g('bpf-fwd/nv-fwd tcp')}, 64B ${g('bpf-fwd/nv-fwd 64B')}; ` +
    `vs plain: neuv-bpf TCP ${g('bpf-fwd/plain tcp')}, 64B ${g('bpf-fwd/plain 64B')}, NeuVector TCP ${g('nv-fwd/plain tcp')}, 64B ${g('nv-fwd/plain 64B')}; ` +
    `offloaded/FWD TCP ${g('bpf-offload/bpf-fwd tcp')}, 64B ${g('bpf-offload/bpf-fwd 64B')}; ` +
    `DP busiest thread TCP ${pct(c('bpf-fwd')?.tcpBusiest)} / ${pct(c('nv-fwd')?.tcpBusiest)} (neuv-bpf / NeuVector), offloaded ${pct(c('bpf-offload')?.tcpBusiest)}`
  );
}

/** A section's heading, and its one line when the scenario was skipped. */
function heading(title: string, o: { skipped: string } | object): { L: string[]; skipped: boolean } {
  const L = [title, ''];
  if ('skipped' in o) L.push(`Skipped: ${o.skipped}.`, '');
  return { L, skipped: 'skipped' in o };
}

export function nvdpMarkdown(o: NvdpOutcome, reproduce: (only: string) => string): string[] {
  const { L, skipped } = heading("## 7. FWD through NeuVector's real DP", o);
  if (skipped || 'skipped' in o) return L;
  const p = o.params;
  L.push(
    `Reproduce: \`${reproduce('nvdp')}\` (bench/nvdp.ts; needs the DP's tarball, docs/neuvector-dp.md). One pair, host -> workload, NeuVector's enforcer DP built from its source ` +
      `(\`dp -s 1 -n 1\`, one data thread) inline for the workload, no policy; one DP per variant, all variants in each round in a rotating order, ratios per round, medians. ` +
      `TCP: iperf3, one stream, ${p.rounds} rounds of ${p.tcpSeconds} s (${p.tcpOmit} s omitted); 64-byte frames: trafgen, one flow, ${p.ppsRounds} rounds of ${p.windowMs} ms ` +
      `after ${p.warmMs} ms, counted at the workload (Ip InReceives), 90th percentile of 100 ms slices.`,
  );
  L.push('');
  const ids = Object.keys(o.labels) as NvdpVariant[];
  L.push(
    table(
      ['variant', 'TCP Gbit/s', '64-byte frames/s', 'DP CPU, TCP (busiest thread)', 'DP CPU, 64 B (busiest thread)'],
      ids.map((id) => {
        const c = o.dpCpu[id];
        return [
          o.labels[id],
          fmt(o.tcp[id]?.median),
          fmt(o.pps[id]?.median),
          c ? `${pct(c.tcp)} (${pct(c.tcpBusiest)})` : '-',
          c ? `${pct(c.pps)} (${pct(c.ppsBusiest)})` : '-',
        ];
      }),
    ),
  );
  L.push('');
  L.push(table(['ratio (median of per-round, min-max)', 'TCP', '64-byte frames'], [
    ['neuv-bpf FWD / NeuVector tc FWD', rr(o.ratios['bpf-fwd/nv-fwd tcp']?.ratio), rr(o.ratios['bpf-fwd/nv-fwd 64B']?.ratio)],
    ['neuv-bpf FWD / plain', rr(o.ratios['bpf-fwd/plain tcp']?.ratio), rr(o.ratios['bpf-fwd/plain 64B']?.ratio)],
    ['NeuVector tc FWD / plain', rr(o.ratios['nv-fwd/plain tcp']?.ratio), rr(o.ratios['nv-fwd/plain 64B']?.ratio)],
    ['neuv-bpf offloaded / plain', rr(o.ratios['bpf-offload/plain tcp']?.ratio), rr(o.ratios['bpf-offload/plain 64B']?.ratio)],
    ['neuv-bpf offloaded / neuv-bpf FWD', rr(o.ratios['bpf-offload/bpf-fwd tcp']?.ratio), rr(o.ratios['bpf-offload/bpf-fwd 64B']?.ratio)],
  ]));
  L.push('');
  const names = [...new Set(Object.values(o.dpCpu).map((c) => c?.busiestName).filter(Boolean))].join(', ');
  L.push(
    `The DP's busiest thread (${names || 'n/a'}) near 100% of a core while the kernel paths carry more is what says the DP is the ceiling of FWD. ` +
      `Sessions offloaded per measurement: ${o.offloaded.join(', ') || 'none'}; frames the 64-byte flow's entry carried (a TCP entry ends with the stream's FIN, its counters with it): ${o.fastFrames.pps.map((x) => x.toLocaleString('en')).join(', ')}.`,
  );
  const first = o.checks['bpf-offload.newSessions'] as { tcpSessions: number; offloaded: number; decidedByDpFirst: number } | undefined;
  if (first) {
    L.push('');
    L.push(
      `New sessions reach the DP first: over the TCP measurements with offload on, ${first.tcpSessions} new TCP sessions were sessions in the DP; the service offloaded ${first.offloaded} of them, ` +
        `${first.decidedByDpFirst} of ${first.offloaded} after the DP had seen at least ${OFFLOAD_AFTER} of their packets each way (none decided without it${first.decidedByDpFirst === first.offloaded ? '' : ': NOT MET'}).`,
    );
  }
  L.push('');
  for (const n of o.notes) L.push(`- ${n}`);
  L.push('');
  return L;
}

export type TapTapOutcome = TapTapResult | { skipped: string };

const mib = (kib: number) => fmt(kib / 1024);
const medOf = (xs: number[]) => (xs.length ? summary(xs).median : NaN);

export function taptapSummary(o: TapTapOutcome | undefined): string {
  if (!o) return 'taptap: not run';
  if ('skipped' in o) return `TAP one ring vs a ring per container: skipped: ${o.skipped}`;
  const parts = o.ratios.map((x) => `${x.containers}: RSS ${fmtRatio(x.rss)}, CPU ${fmtRatio(x.cpu)}`);
  return `TAP, a ring per container (NeuVector) / one ring (neuv-bpf), DP figures per N containers: ${parts.join('; ') || 'n/a'}${o.errors.length ? `; errors: ${o.errors.join('; ')}` : ''}`;
}

export function taptapMarkdown(o: TapTapOutcome, reproduce: (only: string) => string): string[] {
  const { L, skipped } = heading('## 8. TAP with the real DP: one ring against a ring per container', o);
  if (skipped || 'skipped' in o) return L;
  const p = o.params;
  L.push(
    `Reproduce: \`${reproduce('taptap')}\` (bench/taptap.ts; sizes: NEUV_BENCH_TAP_SIZES, default 1,10,50,100). N containers tapped by NeuVector's DP, ` +
      `${p.pps.toLocaleString('en')} 64-byte frames/s in total round-robin over them for ${p.seconds} s, ${p.rounds} round(s) per N and side, the sides alternating; medians. ` +
      "One ring: the pairs in neuv-bpf TAP, the DP's one ring on vth-neuv, the containers its endpoints in tap. A ring per container: NeuVector's own TAP, `ctrl_add_tap_port` per container's eth0.",
  );
  L.push('');
  const rows = [...o.points]
    .sort((a, b) => a.containers - b.containers || a.side.localeCompare(b.side))
    .map((x) => [
      String(x.containers),
      x.side === 'ours' ? 'one ring (neuv-bpf TAP)' : 'a ring per container (NeuVector TAP)',
      `${x.rings} (${mib(x.ringBytes / 1024)} MiB)`,
      mib(medOf(x.rssIdleKiB)),
      mib(medOf(x.rssKiB)),
      `${Math.round(medOf(x.cpu) * 100)}% (${Math.round(medOf(x.cpuBusiest) * 100)}%)`,
      fmt(medOf(x.sent)),
      fmt(medOf(x.delivered)),
      `${fmt(medOf(x.dpRx))} / ${fmt(medOf(x.dpRxDrop))}`,
      x.side === 'ours' ? fmt(medOf(x.copies)) : '-',
      fmt(medOf(x.setupMs)),
    ]);
  L.push(table(['containers', 'side', 'DP rings (ring memory, from its source)', 'DP VmRSS MiB idle', 'VmRSS MiB after traffic', 'DP CPU (busiest thread)', 'frames/s sent', 'delivered', 'DP ring rx / drops per s', 'TAP copies/s', 'set-up ms'], rows));
  L.push('');
  if (o.ratios.length) {
    L.push(table(['containers', 'VmRSS, ring per container / one ring', 'DP CPU, ring per container / one ring'], o.ratios.map((x) => [String(x.containers), fmtRatio(x.rss), fmtRatio(x.cpu)])));
    L.push('');
  }
  if (o.errors.length) {
    L.push(`Failed: ${o.errors.join('; ')}.`);
    L.push('');
  }
  for (const n of o.notes) L.push(`- ${n}`);
  L.push('');
  return L;
}
