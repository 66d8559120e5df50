/**
 * What the datapath trace costs per frame, under BPF_PROG_TEST_RUN (the
 * kernel's own mean ns per run; no traffic, no redirect actually done).
 *
 *   node dist/bench/trace.js [--quick] [--json] [--baseline OBJ]
 *
 * Cases, each the median of several test runs of a FWD frame on vex ingress
 * (IPv4 to the workload: DA := UCMAC, redirect to the DP port):
 *   empty        `r0 = 0; exit`: the cost of test_run itself
 *   off          trace_until = 0 (the normal state)
 *   on-filtered  tracing on for another pair: deadline and filter checked, no record
 *   on           tracing on, a record written per frame (the ring drained between runs)
 *   on-full      tracing on, the ring full: every record lost (counted)
 *   baseline     (with --baseline OBJ) the same frame through another build, e.g.
 *                the object from before tracing existed, tracing not involved
 *
 * Needs root (a private netns and a pin root, both removed at the end).
 */
import { BpfObject, RingBuffer, closeFd, loadTrivialTcProg, testRun } from '../src/bpf';
import { Mode, encodeConfig, encodeId, encodePort, encodeStats, emptyStats, traceFilterFlags, u32Key, Role } from '../src/layout';
import { ProgFixture } from '../harness/prog-fixture';
import { GW, ID, M, ipv4 } from '../harness/frames';
import { kernelUnavailable, makePinRoot } from '../harness/kernel';
import { median, onCleanup, runCleanups } from './util';

const SKB_CTX_SIZE = 192; // sizeof(struct __sk_buff)
const SKB_CTX_IFINDEX = 40; // offsetof(struct __sk_buff, ifindex)
const RING_RECORDS = 3276; // 256 KiB / (72-byte record + 8-byte header)

export interface TraceBenchResult {
  /** Median ns per frame, by case. */
  ns: Record<string, number>;
  /** Derived figures. */
  offVsEmpty: number;
  onVsOff: number;
  onFilteredVsOff: number;
  baselineVsOff?: number;
  runs: number;
  repeat: number;
}

/** Writes one FWD pair (vex = ingress, vin = lo) into a loaded object's maps. */
function seedPair(obj: BpfObject, vex: number, vin: number, dpIfindex: number): void {
  obj.map('neuv_ports').update(u32Key(vex), encodePort({ peerIfindex: vin, flags: 0, id: ID, role: Role.VEX, mode: Mode.FWD, mac: M }));
  obj.map('neuv_ports').update(u32Key(vin), encodePort({ peerIfindex: vex, flags: 0, id: ID, role: Role.VIN, mode: Mode.FWD, mac: M }));
  obj.map('neuv_ids').update(u32Key(ID), encodeId({ vinIfindex: vin, vexIfindex: vex }));
  obj.map('neuv_stats').update(u32Key(ID), encodeStats(emptyStats()));
  obj.map('neuv_config').update(u32Key(0), encodeConfig({ dpIfindex, flags: 0, traceUntil: 0n }));
}

export function runTraceBench(opts: { quick?: boolean; baseline?: string } = {}): TraceBenchResult {
  const why = kernelUnavailable();
  if (why) throw new Error(`bench/trace needs the kernel: ${why}`);
  const runs = opts.quick ? 5 : 15;
  const repeat = opts.quick ? 20_000 : 200_000;
  try {
    const dp = ProgFixture.create();
    const vex = dp.veth;
    const vin = dp.lo;
    seedPair(dp.obj, vex, vin, vin);
    const ctx = Buffer.alloc(SKB_CTX_SIZE);
    ctx.writeUInt32LE(vex, SKB_CTX_IFINDEX);
    const frame = ipv4(M, GW);
    const prog = dp.progs.vex;
    const ring = RingBuffer.open(dp.obj.map('neuv_trace').fd);
    onCleanup(() => ring.close());
    const setTrace = (until: bigint, flags = 0) => dp.config.update(u32Key(0), encodeConfig({ dpIfindex: vin, flags, traceUntil: until }));
    const far = 1n << 62n;

    const measure = (fd: number, rep = repeat, between?: () => void): number => {
      const xs: number[] = [];
      testRun(fd, frame, { ctxIn: ctx, repeat: Math.min(rep, 1000) }); // warm up
      between?.();
      for (let i = 0; i < runs; i++) {
        xs.push(testRun(fd, frame, { ctxIn: ctx, repeat: rep }).duration);
        between?.();
      }
      return median(xs);
    };
    const check = (fd: number, want: number, what: string) => {
      const r = testRun(fd, frame, { ctxIn: ctx });
      if (r.retval !== want) throw new Error(`${what}: returned ${r.retval}, expected ${want}`);
    };

    const ns: Record<string, number> = {};
    const empty = loadTrivialTcProg();
    if (empty < 0) throw new Error(`cannot load the empty program: errno ${-empty}`);
    try {
      ns.empty = measure(empty);
    } finally {
      closeFd(empty);
    }
    setTrace(0n);
    check(prog, 7, 'off');
    ns.off = measure(prog);
    setTrace(far, traceFilterFlags(ID + 1));
    ns['on-filtered'] = measure(prog);
    if (ring.consume().length) throw new Error('on-filtered wrote records');
    setTrace(far);
    ring.consume();
    // Runs small enough for the ring, drained after each.
    const drained = { n: 0 };
    ns.on = measure(prog, RING_RECORDS - 100, () => (drained.n += ring.consume().length));
    if (drained.n < runs * (RING_RECORDS - 100)) throw new Error(`on: ${drained.n} records, expected one per run`);
    // Fill the ring, then measure with every reservation failing.
    for (let i = 0; i < RING_RECORDS + 10; i++) testRun(prog, frame, { ctxIn: ctx });
    ns['on-full'] = measure(prog);
    setTrace(0n);
    ring.consume();

    let baselineVsOff: number | undefined;
    if (opts.baseline) {
      const pins = makePinRoot();
      const base = BpfObject.open(opts.baseline, { pinRoot: pins });
      onCleanup(() => base.close());
      base.load();
      seedPair(base, vex, vin, vin);
      const bfd = base.progFd('neuv_vex');
      check(bfd, 7, 'baseline');
      // Interleave so drift (frequency, other load) hits both alike.
      const a: number[] = [];
      const b: number[] = [];
      for (let i = 0; i < runs; i++) {
        a.push(testRun(bfd, frame, { ctxIn: ctx, repeat }).duration);
        b.push(testRun(prog, frame, { ctxIn: ctx, repeat }).duration);
      }
      ns.baseline = median(a);
      ns['off (interleaved with baseline)'] = median(b);
      baselineVsOff = ns['off (interleaved with baseline)']! - ns.baseline;
    }
    return {
      ns,
      offVsEmpty: ns.off! - ns.empty!,
      onVsOff: ns.on! - ns.off!,
      onFilteredVsOff: ns['on-filtered']! - ns.off!,
      baselineVsOff,
      runs,
      repeat,
    };
  } finally {
    runCleanups();
  }
}

function main(argv: string[]): void {
  const quick = argv.includes('--quick');
  const json = argv.includes('--json');
  const bi = argv.indexOf('--baseline');
  const baseline = bi >= 0 ? argv[bi + 1] : undefined;
  if (bi >= 0 && !baseline) throw new Error('--baseline needs an object file');
  const r = runTraceBench({ quick, baseline });
  if (json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  const lines = [
    `datapath trace cost, BPF_PROG_TEST_RUN, FWD frame on vex ingress (median of ${r.runs} runs)`,
    ...Object.entries(r.ns).map(([k, v]) => `  ${k.padEnd(32)} ${v.toFixed(1).padStart(7)} ns/frame`),
    `  tracing off, over the empty program: ${r.offVsEmpty.toFixed(1)} ns (the whole datapath)`,
    `  tracing on (record written) - off:   ${r.onVsOff.toFixed(1)} ns`,
    `  tracing on (filtered out) - off:     ${r.onFilteredVsOff.toFixed(1)} ns`,
  ];
  if (r.baselineVsOff !== undefined) lines.push(`  off - baseline object:               ${r.baselineVsOff.toFixed(1)} ns`);
  process.stdout.write(lines.join('\n') + '\n');
}

if (require.main === module) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`bench/trace: ${(e as Error).message}\n`);
    process.exitCode = 1;
  }
}
