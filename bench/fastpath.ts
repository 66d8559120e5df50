/**
 * What the FAST path costs, part by part: a frame whose flow the DP
 * offloaded (an ALLOW entry in neuv_flows) on vex in FWD, under
 * BPF_PROG_TEST_RUN, with parts of the program removed one at a time.
 *
 *   node dist/bench/fastpath.js [--rounds N] [--repeat N] [--only ID,ID] [--json FILE]
 *
 * (--only: those variants, besides the empty program; e.g. under perf record.)
 *
 * Each variant is bpf/neuv.bpf.c with one edit (a text substitution that
 * must match exactly once), compiled with the Makefile's flags and loaded
 * under a pin root of its own; the variants, the unmodified object's FAST,
 * BYPASS and FWD paths and an empty TC program are run interleaved (the
 * order rotating per round), and each is reported as ns per frame and as a
 * ratio to the empty program and to the unmodified FAST path, medians of
 * per-round ratios. A variant's saving is what that part costs. The edits
 * are for measuring only: several break a contract of docs/flow-offload.md
 * (expiry, last_ns, the entry's counters), as each row says.
 *
 * Needs root. Not part of `make bench` (docs/benchmarks.md cites its figures).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BpfObject, closeFd, loadTrivialTcProg, testRun } from '../src/bpf';
import { features } from '../src/features';
import { ConfigFlag, FlowVerdict, Mode, PortFlag, Role, emptyStats, encodeConfig, encodeFlow, encodeFlowKey, encodePort, encodeStats, flowKeyOf, u32Key } from '../src/layout';
import { ucmac } from '../src/mac';
import { udpFrame } from './progcost';
import { ROOT, Summary, installSignalCleanup, intArg, onCleanup, pairedRatio, pinRoot, progress, sh, summary, tmpDir } from './util';

const SKB_CTX_SIZE = 192;
const SKB_CTX_IFINDEX = 40;
const ID = 0x1234;
const VEX = 1; // lo: the ingress ifindex test_run reports
const VIN = 0x7ffffff0; // redirect_peer's target: never used under test_run (it returns TC_ACT_REDIRECT)
const M = Buffer.from('0242ac110002', 'hex');
const GW = Buffer.from('0242ac110001', 'hex');
const FAST_DPORT = 10;

interface Variant {
  id: string;
  label: string;
  /** [search, replace] on bpf/neuv.bpf.c, each matching exactly once. */
  edits: Array<[string, string]>;
}

const CLOCK = 'now = bpf_ktime_get_coarse_ns();';
const TOUCH = ['f->last_ns = now;', '__sync_fetch_and_add(&f->packets, 1);', '__sync_fetch_and_add(&f->bytes, skb->len);'];
/* Keeps tcpflags in use: without it clang merges the TCP and UDP header reads into code the verifier refuses. */
const HIT_ONLY = 'if (v == NEUV_FLOW_ALLOW && (tcpflags & (TCP_FIN | TCP_RST))) return NEUV_FLOW_NONE; return v;';
const FLOW_COUNT = 'neuv_flow_count(id, o->dir, o->v1 == NEUV_V_FLOW_DROP, skb->len);';

export const VARIANTS: Variant[] = [
  { id: 'fast', label: 'FAST as built (flow check: parse, key, lookup, expiry, touch; counted in neuv_flow_stats)', edits: [] },
  { id: 'no-clock', label: 'without the clock read (bpf_ktime_get_coarse_ns; breaks expiry and last_ns)', edits: [[CLOCK, 'now = 1;']] },
  { id: 'exact-clock', label: 'bpf_ktime_get_ns instead of bpf_ktime_get_coarse_ns (expiry exact, not up to a tick late)', edits: [[CLOCK, 'now = bpf_ktime_get_ns();']] },
  {
    id: 'plain-adds',
    label: 'entry counters with plain adds instead of atomic ones (loses counts between CPUs)',
    edits: [
      [TOUCH[1]!, 'f->packets += 1;'],
      [TOUCH[2]!, 'f->bytes += skb->len;'],
    ],
  },
  { id: 'no-touch', label: 'without touching the entry (no last_ns store, no entry counters)', edits: TOUCH.map((s) => [s, ''] as [string, string]) },
  { id: 'no-expiry', label: 'lookup hit returns its verdict after the FIN/RST check (no clock, no expiry, no touch)', edits: [[CLOCK, HIT_ONLY]] },
  { id: 'no-flow-count', label: 'FAST not counted (no neuv_flow_stats lookup)', edits: [[FLOW_COUNT, ';']] },
  {
    id: 'bare-hit',
    label: 'lookup hit only and not counted: parse, key, one LRU lookup, redirect_peer',
    edits: [
      [CLOCK, HIT_ONLY],
      [FLOW_COUNT, ';'],
    ],
  },
];

/** The base object's paths beside the variants (same maps as FAST, reseeded per run). */
const BASE_PATHS = [
  { id: 'bypass', label: 'vex BYPASS (redirect_peer, no flow lookup)', mode: Mode.BYPASS, mac: M, flags: 0, dport: FAST_DPORT },
  { id: 'fwd-miss', label: 'vex FWD, flow lookups on, no entry (to the DP)', mode: Mode.FWD, mac: ucmac(ID), flags: ConfigFlag.FLOWS, dport: 9 },
];

export interface FastPathResult {
  params: { rounds: number; repeat: number; load: string };
  labels: Record<string, string>;
  ns: Record<string, Summary>;
  /** x the empty program */
  ratio: Record<string, Summary>;
  /** x FAST as built */
  overFast: Record<string, Summary>;
}

function variantSource(v: Variant): string {
  let src = fs.readFileSync(path.join(ROOT, 'bpf', 'neuv.bpf.c'), 'utf8');
  for (const [a, b] of v.edits) {
    const n = src.split(a).length - 1;
    if (n !== 1) throw new Error(`variant ${v.id}: "${a}" found ${n} times in bpf/neuv.bpf.c (expected once)`);
    src = src.replace(a, b);
  }
  return src;
}

function compile(v: Variant, dir: string): string {
  const src = path.join(dir, `${v.id}.bpf.c`);
  const obj = path.join(dir, `${v.id}.bpf.o`);
  fs.writeFileSync(src, variantSource(v));
  const arch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  sh(process.env.CLANG ?? 'clang', ['-O2', '-g', '-target', 'bpf', '-Wall', '-I', path.join(ROOT, 'bpf'), `-I/usr/include/${arch}`, '-c', src, '-o', obj]);
  return obj;
}

export function runFastPath(o: { rounds: number; repeat: number; only?: string[] }): FastPathResult {
  const load = fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const dir = tmpDir();
  const ctx = Buffer.alloc(SKB_CTX_SIZE);
  ctx.writeUInt32LE(VEX, SKB_CTX_IFINDEX);
  const pktType = features().pktTypeFix ? 1 : 0;
  const fastFrame = udpFrame(M, GW, FAST_DPORT);
  interface Run {
    id: string;
    label: string;
    fd: number;
    frame: Buffer;
    seed?: () => void;
  }
  const runs: Run[] = [];
  const empty = loadTrivialTcProg();
  if (empty < 0) throw new Error(`cannot load the empty program: errno ${-empty}`);
  onCleanup(() => closeFd(empty), 'empty program');
  runs.push({ id: 'empty', label: 'empty TC program (r0 = 0; exit)', fd: empty, frame: fastFrame });
  for (const v of VARIANTS.filter((x) => !o.only || o.only.includes(x.id) || (x.id === 'fast' && o.only.some((i) => BASE_PATHS.some((b) => b.id === i))))) {
    const obj = BpfObject.open(compile(v, dir), { pinRoot: pinRoot(`fp-${v.id}`), rodata: { neuv_set_pkt_type: pktType } });
    onCleanup(() => obj.close(), `object ${v.id}`);
    fs.mkdirSync(path.dirname(obj.mapPinPath('neuv_ports')!), { recursive: true });
    obj.load();
    const ports = obj.map('neuv_ports');
    const config = obj.map('neuv_config');
    const seed = (mode: number, mac: Buffer, flags: number) => {
      ports.update(u32Key(VEX), encodePort({ peerIfindex: VIN, flags: PortFlag.REDIRECT_PEER, id: ID, role: Role.VEX, mode, mac }));
      config.update(u32Key(0), encodeConfig({ dpIfindex: VIN, flags, traceUntil: 0n }));
    };
    obj.map('neuv_stats').update(u32Key(ID), encodeStats(emptyStats()));
    obj.map('neuv_flows').update(
      encodeFlowKey(flowKeyOf({ id: ID, proto: 17, src: '10.201.0.1', sport: 40000, dst: '10.201.0.2', dport: FAST_DPORT })),
      encodeFlow({ verdict: FlowVerdict.ALLOW, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n }),
    );
    const fd = obj.progFd('neuv_vex');
    if (!o.only || o.only.includes(v.id)) runs.push({ id: v.id, label: v.label, fd, frame: fastFrame, seed: () => seed(Mode.FWD, M, ConfigFlag.FLOWS) });
    if (v.id === 'fast') {
      for (const b of BASE_PATHS.filter((x) => !o.only || o.only.includes(x.id))) runs.push({ id: b.id, label: b.label, fd, frame: udpFrame(b.mac, GW, b.dport), seed: () => seed(b.mode, b.mac, b.flags) });
    }
  }
  const once = (r: Run, repeat: number) => {
    r.seed?.();
    const t = testRun(r.fd, r.frame, { ctxIn: ctx, repeat });
    const want = r.id === 'empty' ? 0 : 7;
    if (t.retval !== want) throw new Error(`${r.id}: returned ${t.retval}, expected ${want}`);
    return t.duration;
  };
  for (const r of runs) once(r, 10_000);
  progress(`FAST path profile: ${runs.length} programs x ${o.rounds} rounds x ${o.repeat} runs (load ${load})`);
  const xs = new Map<string, number[]>(runs.map((r) => [r.id, []]));
  for (let k = 0; k < o.rounds; k++) {
    for (let i = 0; i < runs.length; i++) {
      const r = runs[(i + k) % runs.length]!;
      xs.get(r.id)!.push(once(r, o.repeat));
    }
  }
  const res: FastPathResult = { params: { rounds: o.rounds, repeat: o.repeat, load }, labels: {}, ns: {}, ratio: {}, overFast: {} };
  for (const r of runs) {
    res.labels[r.id] = r.label;
    res.ns[r.id] = summary(xs.get(r.id)!);
    if (r.id !== 'empty') res.ratio[r.id] = pairedRatio(xs.get(r.id)!, xs.get('empty')!);
    if (r.id !== 'fast' && xs.has('fast')) res.overFast[r.id] = pairedRatio(xs.get(r.id)!, xs.get('fast')!);
  }
  return res;
}

function table(r: FastPathResult): string {
  const f = (s: Summary | undefined, d = 3) => (s ? `${+s.median.toPrecision(d)} (${+s.min.toPrecision(d)}-${+s.max.toPrecision(d)})` : '');
  const lines = ['| program | ns per frame | x empty program | x FAST as built |', '| --- | --- | --- | --- |'];
  for (const id of Object.keys(r.labels)) lines.push(`| ${id}: ${r.labels[id]} | ${f(r.ns[id])} | ${f(r.ratio[id])} | ${f(r.overFast[id])} |`);
  return lines.join('\n');
}

if (require.main === module) {
  installSignalCleanup();
  const argv = process.argv.slice(2);
  const arg = (name: string, def: number) => intArg(argv, name, def);
  const oi = argv.indexOf('--only');
  const only = oi >= 0 ? (argv[oi + 1] ?? '').split(',').filter(Boolean) : undefined;
  const r = runFastPath({ rounds: arg('--rounds', 11), repeat: arg('--repeat', 1_000_000), only });
  const ji = argv.indexOf('--json');
  if (ji >= 0) fs.writeFileSync(argv[ji + 1]!, JSON.stringify(r, null, 2) + os.EOL);
  process.stdout.write(`load average at the start: ${r.params.load}; ${r.params.rounds} rounds x ${r.params.repeat} runs\n${table(r)}\n`);
}
