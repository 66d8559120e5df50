/**
 * Why the DP return path slows down with thousands of pairs (section 2 of
 * BENCHMARKS.md, 4,096 pairs): every bpf_redirect / bpf_redirect_peer /
 * bpf_clone_redirect finds its target by ifindex (skb_do_redirect and
 * bpf_clone_redirect call dev_get_by_index_rcu), which walks the netns's
 * ifindex hash: 256 buckets, each a list with the newest device first. With
 * 2 devices per pair, 4,096 pairs put 32 devices in every bucket, and a
 * device created before the others (the measured pair of bench/dpreturn.ts,
 * a container started before the rest) is at the end of its list.
 *
 *   node dist/bench/devchain.js [--pairs N] [--rounds N] [--repeat N]
 *
 * Measured under BPF_PROG_TEST_RUN in a private netns: a program that only
 * does bpf_clone_redirect(TARGET) (clone + lookup + a veth transmit whose peer
 * is down, so the copy is dropped at once), to a veth created first (then
 * 2 x N veth ends: the end of its bucket) and to one created last (the head
 * of its bucket), interleaved; the difference is the walk. Needs root.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfObject, CLONE_NEWNET, setns, testRun } from '../src/bpf';
import { udpFrame } from './progcost';
import { netns, installSignalCleanup, intArg, onCleanup, pairedRatio, progress, runCleanups, sh, summary, tmpDir } from './util';
import { linkOf } from '../harness/net';

const SRC = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "Dual BSD/GPL";
SEC("tc") int cr(struct __sk_buff *skb) { return bpf_clone_redirect(skb, TARGET, 0); }
`;

function program(target: number, dir: string): BpfObject {
  const src = path.join(dir, 'cr.bpf.c');
  const obj = path.join(dir, `cr-${target}.bpf.o`);
  fs.writeFileSync(src, SRC);
  const arch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  sh(process.env.CLANG ?? 'clang', ['-O2', '-g', '-target', 'bpf', `-DTARGET=${target}`, `-I/usr/include/${arch}`, '-c', src, '-o', obj]);
  const o = BpfObject.open(obj);
  onCleanup(() => o.close(), `program ${target}`);
  o.load();
  return o;
}

export function runDevChain(o: { pairs: number; rounds: number; repeat: number }) {
  const ns = netns('devchain');
  ns.ip('link', 'add', 'first', 'type', 'veth', 'peer', 'name', 'firstp');
  ns.ip('link', 'set', 'first', 'up');
  progress(`devchain: adding ${o.pairs} veth pairs (${2 * o.pairs} devices)`);
  const lines: string[] = [];
  for (let i = 0; i < o.pairs; i++) lines.push(`link add a${i} type veth peer name b${i}`);
  ns.ipBatch(lines);
  ns.ip('link', 'add', 'last', 'type', 'veth', 'peer', 'name', 'lastp');
  ns.ip('link', 'set', 'last', 'up');
  const first = linkOf(ns, 'first').ifindex;
  const last = linkOf(ns, 'last').ifindex;
  const dir = tmpDir();
  const progs = { first: program(first, dir).progFd('cr'), last: program(last, dir).progFd('cr') };
  const frame = udpFrame(Buffer.from('020000000002', 'hex'), Buffer.from('020000000001', 'hex'));
  const home = fs.openSync('/proc/self/ns/net', 'r');
  const there = fs.openSync(`/run/netns/${ns.name}`, 'r');
  setns(there, CLONE_NEWNET, ns.name); // test_run's skb belongs to the caller's netns
  fs.closeSync(there);
  const xs: Record<'first' | 'last', number[]> = { first: [], last: [] };
  try {
    // The copy is dropped by the veth whose peer is down (NET_XMIT_*, the same for both); a negative errno (no such device) is not.
    const rv = ['first', 'last'].map((k) => testRun(progs[k as 'first' | 'last'], frame, { repeat: 10_000 }).retval);
    if (rv[0] !== rv[1] || rv[0]! < 0 || rv[0]! > 16) throw new Error(`clone_redirect returned ${rv.join(' and ')}`);
    for (let r = 0; r < o.rounds; r++) {
      for (const k of (r % 2 ? ['first', 'last'] : ['last', 'first']) as Array<'first' | 'last'>) {
        const t = testRun(progs[k], frame, { repeat: o.repeat });
        if (t.retval !== rv[0]) throw new Error(`clone_redirect to ${k} returned ${t.retval}`);
        xs[k].push(t.duration);
      }
    }
  } finally {
    setns(home, CLONE_NEWNET, 'the bench netns');
    fs.closeSync(home);
  }
  const bucket = (ifindex: number) => Number(ns.ip('-o', 'link').split('\n').filter((l) => /^\d+:/.test(l) && (Number(l.split(':')[0]) & 255) === (ifindex & 255)).length);
  return {
    pairs: o.pairs,
    load: fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    first: { ifindex: first, bucketDevices: bucket(first), ns: summary(xs.first) },
    last: { ifindex: last, bucketDevices: bucket(last), ns: summary(xs.last) },
    firstOverLast: pairedRatio(xs.first, xs.last),
  };
}

if (require.main === module) {
  installSignalCleanup();
  const argv = process.argv.slice(2);
  const arg = (name: string, def: number) => intArg(argv, name, def);
  const r = runDevChain({ pairs: arg('--pairs', 4096), rounds: arg('--rounds', 11), repeat: arg('--repeat', 1_000_000) });
  const f = (s: { median: number; min: number; max: number }) => `${s.median} (${s.min}-${s.max})`;
  process.stdout.write(
    `${r.pairs} veth pairs in the netns (load ${r.load}): bpf_clone_redirect to the device created first (ifindex ${r.first.ifindex}, ` +
      `${r.first.bucketDevices} devices in its bucket, it last) ${f(r.first.ns)} ns, to the one created last (ifindex ${r.last.ifindex}, ` +
      `${r.last.bucketDevices} in its bucket, it first) ${f(r.last.ns)} ns; first/last ${r.firstOverLast.median.toFixed(3)}x, ` +
      `${(r.first.ns.median - r.last.ns.median).toFixed(0)} ns for the walk\n`,
  );
  runCleanups(); // the netns's anchor process would keep Node running
}
