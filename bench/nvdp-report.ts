/**
 * The summary lines and BENCHMARKS.md sections of the scenarios with
 * NeuVector's real DP (bench/nvdp.ts, bench/taptap.ts).
 */
import type { NvdpResult, NvdpVariant } from './nvdp';
import { Summary, fmt, fmtRatio } from './util';

export type NvdpOutcome = NvdpResult | { skipped: string };

const rr = (s: Summary | undefined) => (s ? `${fmtRatio(s.median)} (${fmt(s.min)}-${fmt(s.max)})` : 'n/a');
const pct = (s: Summary | undefined) => (s ? `${Math.round(s.median * 100)}%` : '-');

function table(head: string[], rows: string[][]): string {
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

export function nvdpMarkdown(o: NvdpOutcome, reproduce: (only: string) => string): string[] {
  const L: string[] = [];
  L.push("## 7. FWD through NeuVector's real DP");
  L.push('');
  if ('skipped' in o) {
    L.push(`Skipped: ${o.skipped}.`);
    L.push('');
    return L;
  }
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
      `Sessions offloaded per measurement: ${o.offloaded.join(', ') || 'none'}; frames their entries carried: TCP ${o.fastFrames.tcp.map((x) => x.toLocaleString('en')).join(', ')}, 64 B ${o.fastFrames.pps.map((x) => x.toLocaleString('en')).join(', ')}.`,
  );
  L.push('');
  for (const n of o.notes) L.push(`- ${n}`);
  L.push('');
  return L;
}
