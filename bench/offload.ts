/**
 * Flow offload: TCP throughput (iperf3, one stream, host -> workload through
 * one intercepted pair) of
 *
 *   offloaded  FWD, the stub DP offloading every allowed flow after 20 frames
 *              (build/stub-dp --offload-after 20): the stream runs in the kernel
 *   bypass     BYPASS: vex <-> vin directly, no DP (the ceiling; target: offloaded >= 0.9x)
 *   fwd-dp     FWD through the stub DP, no offload: every frame out to userspace and back
 *
 * All on one topology (test/topology.ts makePairTopology, redirect_peer where
 * the kernel has it); each round measures the three in a rotating order, and
 * the ratios are taken per round (paired), their median reported. The stub
 * is restarted for each FWD variant (a mode switch clears the flow map).
 *
 *   node dist/bench/offload.js [--quick] [--rounds N] [--json]
 *
 * Needs root and iperf3. `run()` is what bench/run.ts calls.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { kernelUnavailable, makePinRoot } from '../harness/kernel';
import { PairTopology, makePairTopology } from '../harness/pair';
import { StubDp } from '../harness/stub-dp';
import { tcpGbps as tcpGbpsIn } from './net';
import { cli, installSignalCleanup, median, onCleanup, runCleanups, stubDpPath } from './util';

export interface BenchRow {
  name: string;
  value: number;
  unit: string;
  ratio?: number;
  note?: string;
}

type Variant = 'offloaded' | 'bypass' | 'fwd-dp';
const VARIANTS: Variant[] = ['offloaded', 'bypass', 'fwd-dp'];
const LABELS: Record<Variant, string> = {
  offloaded: 'TCP, FWD with the flow offloaded by the DP',
  bypass: 'TCP, BYPASS (no DP)',
  'fwd-dp': 'TCP, FWD through the stub DP (no offload)',
};

/** iperf3 from the host netns to the workload; Gbit/s as received. Not real-time: the stub DP is not. */
const tcpGbps = (t: PairTopology, seconds: number, omit: number) => tcpGbpsIn(t.host, t.workload, t.wlAddr, seconds, omit, { realtime: false });

export async function run(opts: { quick: boolean; rounds?: number }): Promise<BenchRow[]> {
  const why = kernelUnavailable();
  if (why) throw new Error(`bench/offload: ${why}`);
  if (spawnSync('iperf3', ['--version']).status !== 0) throw new Error('bench/offload: iperf3 not found');
  const rounds = opts.rounds ?? (opts.quick ? 1 : 3);
  const seconds = opts.quick ? 3 : 8;
  const omit = 1;
  try {
    const t = makePairTopology({ subnet: '10.203.0' });
    const pins = makePinRoot();
    const c = (args: string[]) => {
      const r = cli(['--netns', t.enforcer.name, '--bpffs', pins, ...args], { allowFail: true });
      assert.equal(r.code, 0, `neuv-bpf ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    c(['load']);
    onCleanup(() => cli(['--netns', t.enforcer.name, '--bpffs', pins, 'unload'], { allowFail: true }));
    const pair = JSON.parse(c(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'bypass', '--json'])) as { id: number; redirectPeer: { vin: boolean; vex: boolean } };
    const id = String(pair.id);
    const gbps: Record<Variant, number[]> = { offloaded: [], bypass: [], 'fwd-dp': [] };
    const notes: string[] = [];
    for (let round = 0; round < rounds; round++) {
      for (let k = 0; k < VARIANTS.length; k++) {
        const v = VARIANTS[(k + round) % VARIANTS.length]!;
        if (v === 'bypass') {
          c(['pair', 'mode', '--id', id, 'bypass']);
          gbps[v].push(await tcpGbps(t, seconds, omit));
          continue;
        }
        c(['pair', 'mode', '--id', id, 'fwd']);
        // nsenter: `ip netns exec` would hide /sys/fs/bpf, where --pin-root is.
        const offload = v === 'offloaded' ? ['--offload-after', '20', '--pin-root', pins] : [];
        const stub = await StubDp.start(t.enforcer.name, { bin: stubDpPath(), nsenter: true, intervalMs: 1000, args: offload });
        try {
          gbps[v].push(await tcpGbps(t, seconds, omit));
        } finally {
          const counts = await stub.counts();
          stub.stop();
          if (v === 'offloaded' && round === 0) notes.push(`stub DP offloaded ${counts.offloaded ?? 0} flows, read ${counts.rx ?? 0} frames`);
          c(['flow', 'revoke', '--id', id, '--all']);
          c(['pair', 'mode', '--id', id, 'bypass']);
        }
      }
    }
    const perRound = (a: Variant, b: Variant) => median(gbps[a].map((x, i) => x / gbps[b][i]!));
    const peer = pair.redirectPeer.vin && pair.redirectPeer.vex ? 'bpf_redirect_peer' : 'bpf_redirect';
    const base = `${rounds} round${rounds > 1 ? 's' : ''} of ${seconds} s (median), one iperf3 stream host -> workload, ${peer}`;
    const each = (v: Variant) => `rounds ${gbps[v].map((x) => x.toFixed(2)).join(' / ')} Gbit/s`;
    return [
      { name: `offload: ${LABELS.offloaded}`, value: median(gbps.offloaded), unit: 'Gbit/s', ratio: perRound('offloaded', 'bypass'), note: `${base}; ${each('offloaded')}; ratio vs BYPASS (target >= 0.9); ${notes.join('; ')}` },
      { name: `offload: ${LABELS.bypass}`, value: median(gbps.bypass), unit: 'Gbit/s', note: `${base}; ${each('bypass')}` },
      { name: `offload: ${LABELS['fwd-dp']}`, value: median(gbps['fwd-dp']), unit: 'Gbit/s', ratio: perRound('fwd-dp', 'bypass'), note: `${base}; ${each('fwd-dp')}; ratio vs BYPASS` },
      { name: 'offload: offloaded vs FWD through the DP', value: perRound('offloaded', 'fwd-dp'), unit: 'x', note: 'per-round ratio, median' },
    ];
  } finally {
    runCleanups();
  }
}

async function main(argv: string[]): Promise<void> {
  const quick = argv.includes('--quick');
  const ri = argv.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(argv[ri + 1]) : undefined;
  if (rounds !== undefined && !(Number.isInteger(rounds) && rounds > 0)) throw new Error('--rounds needs a positive integer');
  const rows = await run({ quick, rounds });
  if (argv.includes('--json')) {
    process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
    return;
  }
  const w = Math.max(...rows.map((r) => r.name.length));
  for (const r of rows) {
    const ratio = r.ratio !== undefined ? `  (${r.ratio.toFixed(2)}x)` : '';
    process.stdout.write(`${r.name.padEnd(w)}  ${r.value.toFixed(2).padStart(7)} ${r.unit}${ratio}${r.note ? `\n${' '.repeat(w + 2)}${r.note}` : ''}\n`);
  }
}

if (require.main === module) {
  installSignalCleanup('bench/offload');
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`bench/offload: ${(e as Error).message}\n`);
    runCleanups();
    process.exitCode = 1;
  });
}
