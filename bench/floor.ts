/**
 * What bounds BYPASS against a plain veth pair, measured rather than argued:
 *
 * - refPeerProgram(): the barest program that can do BYPASS's job on vex,
 *   `return bpf_redirect_peer(<vin ifindex>, 0)` (no map, no check, no
 *   counter), compiled for one topology and attached the way neuv-bpf
 *   attaches ports by default (clsact + cls_bpf, direct-action). The
 *   throughput scenario measures it as a variant: the rate any tc program
 *   on vex that hands frames to the workload with redirect_peer can reach.
 * - withBpfStats(): kernel.bpf_stats_enabled for the time of a measurement
 *   (restored after, also on Ctrl-C), and each program's run_time_ns /
 *   run_cnt over it: what the program itself costs per frame in real traffic.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BenchNetns, onCleanup, sh, tmpDir } from './util';

/** Compiles and attaches the bare redirect_peer program on `dev` (ingress) of `ns`; returns its program id. */
export function refPeerProgram(ns: BenchNetns, dev: string, targetIfindex: number): number {
  const dir = tmpDir();
  const src = path.join(dir, 'ref-peer.bpf.c');
  const obj = path.join(dir, 'ref-peer.bpf.o');
  fs.writeFileSync(
    src,
    [
      '#include <linux/bpf.h>',
      '#include <bpf/bpf_helpers.h>',
      'char LICENSE[] SEC("license") = "Dual BSD/GPL";',
      'SEC("tc") int ref_peer(struct __sk_buff *skb) { return bpf_redirect_peer(TARGET, 0); }',
      '',
    ].join('\n'),
  );
  const arch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  sh(process.env.CLANG ?? 'clang', ['-O2', '-g', '-target', 'bpf', '-Wall', `-DTARGET=${targetIfindex >>> 0}`, `-I/usr/include/${arch}`, '-c', src, '-o', obj]);
  ns.exec('tc', ['qdisc', 'add', 'dev', dev, 'clsact']);
  ns.exec('tc', ['filter', 'add', 'dev', dev, 'ingress', 'prio', '1', 'handle', '1', 'bpf', 'direct-action', 'obj', obj, 'sec', 'tc']);
  const j = JSON.parse(ns.exec('tc', ['-j', 'filter', 'show', 'dev', dev, 'ingress']) || '[]') as Array<{ options?: { prog?: { id?: number } } }>;
  const id = j.find((f) => f.options?.prog?.id)?.options?.prog?.id;
  if (!id) throw new Error(`ref-peer: no program attached on ${dev}`);
  return id;
}

export interface ProgRunStats {
  /** Program runs over the measurement. */
  runs: number;
  /** Mean run time, ns (the kernel's run_time_ns / run_cnt over the measurement). */
  ns: number;
}

function progStats(id: number): { runTimeNs: number; runCnt: number } {
  const j = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(id)])) as { run_time_ns?: number; run_cnt?: number };
  return { runTimeNs: j.run_time_ns ?? 0, runCnt: j.run_cnt ?? 0 };
}

const STATS_SYSCTL = '/proc/sys/kernel/bpf_stats_enabled';

/**
 * Runs fn with BPF run-time statistics on (kernel.bpf_stats_enabled = 1; the
 * previous value is put back after, and by the cleanup on Ctrl-C) and returns
 * its result with the per-frame run time of each program id over that time.
 */
export async function withBpfStats<T>(progIds: Record<string, number>, fn: () => Promise<T>): Promise<{ result: T; stats: Record<string, ProgRunStats> }> {
  const old = fs.readFileSync(STATS_SYSCTL, 'utf8').trim();
  const restore = () => fs.writeFileSync(STATS_SYSCTL, old);
  const drop = onCleanup(restore, 'kernel.bpf_stats_enabled');
  try {
    fs.writeFileSync(STATS_SYSCTL, '1');
    const before = Object.fromEntries(Object.entries(progIds).map(([k, id]) => [k, progStats(id)]));
    const result = await fn();
    const stats: Record<string, ProgRunStats> = {};
    for (const [k, id] of Object.entries(progIds)) {
      const a = progStats(id);
      const b = before[k]!;
      const runs = a.runCnt - b.runCnt;
      stats[k] = { runs, ns: runs > 0 ? (a.runTimeNs - b.runTimeNs) / runs : 0 };
    }
    return { result, stats };
  } finally {
    restore();
    drop();
  }
}
