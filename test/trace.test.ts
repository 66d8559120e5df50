/**
 * The datapath trace (issue 7): records written by the real programs, the
 * `neuv-bpf trace` command on real traffic, the lease (off at once on
 * SIGINT/SIGTERM, lapsing by itself after SIGKILL), one reader at a time,
 * `--log-level trace` riding along another command, and loading over the
 * pins of an object that predates the trace ring.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BpfObject, RingBuffer } from '../src/bpf';
import {
  Hook,
  Mode,
  PortFlag,
  Reason,
  TraceFlag,
  TraceRecord,
  Verdict,
  VERDICT_COUNT,
  addStats,
  decodeTrace,
  emptyStats,
  encodeTrace,
  traceFilterFlags,
  u32Key,
} from '../src/layout';
import { formatMac, ucmac } from '../src/mac';
import { formatView, monoToWall, traceState, viewRecord, type TraceView } from '../src/trace';
import { filterFrom } from '../src/cli/trace';
import { ProgFixture } from '../harness/prog-fixture';
import { arp, frame, GW, ID, ID2, ipv4, ipv6, M, M2, OTHER, twoPairs } from '../harness/frames';
import { veth } from '../harness/net';
import { requireTrafgen } from './traffic';
import { TRAFGEN_QUIET } from '../harness/net';
import { type Netns, CLI, ROOT, cli, leftovers, makeNetns, makePinRoot, onCleanup, requireKernel, runCleanups, sh, leakChecks } from './helpers';
import { mapPinPath, Pins } from '../src/pins';

const PASS = -1; // TC_ACT_UNSPEC
const SHOT = 2;
const REDIRECT = 7;

const FAR = 1n << 62n; // trace_until far in the future

describe('trace records (unit)', function () {
  it('decodeTrace inverts encodeTrace', function () {
    const r: TraceRecord = {
      ts: 123456789012345n,
      d: { target: 7, id: 0x1234, hasId: true, dir: 1, v1: 2, v2: 1, reason: 7, mode: 2, hook: 1, flags: 3, action: 7 },
      ifindex: 5,
      len: 98,
      copyIfindex: 10000000,
      lost: 0xfffffffe,
      before: Buffer.from('0242ac11000202420000aaaa', 'hex'),
      after: Buffer.from('4e657556123402420000aaaa', 'hex'),
      proto: 0x0800,
    };
    assert.deepEqual(decodeTrace(encodeTrace(r)), r);
  });

  it('a record reads as one line and as JSON with names', function () {
    const r: TraceRecord = {
      ts: process.hrtime.bigint(),
      d: { target: 10000000, id: 0x1234, hasId: true, dir: 0, v1: Verdict.TO_DP, v2: VERDICT_COUNT, reason: 0, mode: Mode.FWD, hook: Hook.VEX, flags: TraceFlag.PARSED, action: REDIRECT },
      ifindex: 5,
      len: 60,
      copyIfindex: 0,
      lost: 0,
      before: Buffer.concat([M, GW]),
      after: Buffer.concat([ucmac(0x1234), GW]),
      proto: 0x0800,
    };
    const names = { name: (i: number) => (i === 5 ? 'vex5' : i === 10000000 ? 'vbr-neuv' : null) };
    const v = viewRecord(r, names, monoToWall());
    assert.equal(v.hook, 'vex');
    assert.equal(v.id, 0x1234);
    assert.equal(v.action, 'redirect');
    assert.deepEqual(v.verdicts, ['to_dp']);
    assert.equal(v.targetName, 'vbr-neuv');
    assert.equal(v.da, formatMac(M));
    assert.equal(v.daAfter, '4e:65:75:56:12:34');
    assert.equal(v.sa, v.saAfter);
    assert.equal(v.ethertype, '0x0800');
    assert.ok(Math.abs(Date.parse(v.time) - Date.now()) < 5000, v.time);
    assert.match(
      formatView(v),
      /^\d\d:\d\d:\d\d\.\d{6} vex vex5\(5\) id 4660 fwd {2}redirect to_dp -> vbr-neuv\(10000000\) {2}DA 02:42:ac:11:00:02 => 4e:65:75:56:12:34 {2}SA 02:42:ac:11:00:01 {2}IPv4 60B$/,
    );
  });

  it('filter flags and pair ids', function () {
    assert.equal(traceFilterFlags(undefined), 0);
    assert.equal(traceFilterFlags(0x1234), 0x11234);
    assert.deepEqual(filterFrom({ pair: '4660' }), { id: 4660 });
    assert.deepEqual(filterFrom({ pair: '0x1234' }), { id: 0x1234 });
    for (const bad of ['-1', '65536', 'x', '1.5', '']) assert.throws(() => filterFrom({ pair: bad }), /--pair .* \(expected 0\.\.65535\)/);
  });
});

describe('trace records (kernel, BPF_PROG_TEST_RUN)', function () {
  let dp: ProgFixture;
  let ring: RingBuffer;
  let vin: number;
  let vex: number;

  before(function () {
    requireKernel(this);
    dp = ProgFixture.create();
    vin = dp.lo;
    vex = dp.veth;
    ring = RingBuffer.open(dp.obj.map('neuv_trace').fd);
    onCleanup(() => ring.close());
  });
  after(() => runCleanups());

  function seed(mode: number, opts: { flags?: number; dp?: number } = {}) {
    dp.seed(twoPairs({ vin, vex, vin2: 31, vex2: 32, dp: dp.lo }, mode, opts), [ID, ID2]);
    ring.consume();
  }
  /** Sets trace_until and the filter, keeping dp_ifindex. */
  function traceOn(until = FAR, flags = 0) {
    dp.writeConfig((c) => ({ ...c, flags, traceUntil: until }));
  }
  /** Runs frames, returns what the programs returned and the records written meanwhile. */
  function run(hook: 'vin' | 'vex' | 'vbr', ingress: number, frames: Buffer[]) {
    const results = frames.map((f) => dp.run(hook, f, ingress));
    return { results, records: ring.consume().map(decodeTrace) };
  }
  const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

  it('FWD vex: one record with hook, pair, mode, action, target, MACs before/after, EtherType, length', function () {
    seed(Mode.FWD);
    traceOn();
    const f = ipv4(M, GW);
    const { results, records } = run('vex', vex, [f]);
    assert.equal(results[0]!.retval, REDIRECT);
    assert.equal(records.length, 1);
    const r = records[0]!;
    assert.deepEqual(r.d, {
      target: dp.lo, id: ID, hasId: true, dir: 0, v1: Verdict.TO_DP, v2: VERDICT_COUNT, reason: Reason.NONE,
      mode: Mode.FWD, hook: Hook.VEX, flags: TraceFlag.PARSED, action: REDIRECT,
    });
    assert.equal(r.ifindex, vex);
    assert.equal(r.len, f.length);
    assert.equal(r.copyIfindex, 0);
    assert.equal(r.proto, 0x0800);
    assert.equal(hex(r.before), hex(Buffer.concat([M, GW])));
    assert.equal(hex(r.after), hex(Buffer.concat([ucmac(ID), GW])));
    assert.equal(hex(r.after), hex(results[0]!.dataOut.subarray(0, 12)), 'after = the bytes the frame left with');
    const now = process.hrtime.bigint();
    assert.ok(r.ts <= now && now - r.ts < 10_000_000_000n, `ts ${r.ts} is CLOCK_MONOTONIC (now ${now})`);
  });

  it('FWD vin and vbr-neuv: SA/DA rewrites, redirect targets, redirect_peer flag', function () {
    seed(Mode.FWD, { flags: PortFlag.REDIRECT_PEER | PortFlag.SELF_PEER });
    traceOn();
    let { records } = run('vin', vin, [ipv4(GW, M)]);
    assert.equal(records.length, 1);
    assert.equal(records[0]!.d.hook, Hook.VIN);
    assert.equal(records[0]!.d.v1, Verdict.TO_DP);
    assert.equal(hex(records[0]!.after), hex(Buffer.concat([GW, ucmac(ID)])));
    assert.equal(records[0]!.d.flags & TraceFlag.PEER, 0, 'to the DP is a plain bpf_redirect');

    ({ records } = run('vbr', dp.lo, [ipv4(ucmac(ID), GW), ipv4(GW, ucmac(ID2))]));
    assert.equal(records.length, 2);
    const [a, b] = records as [TraceRecord, TraceRecord];
    assert.equal(a.d.hook, Hook.VBR);
    assert.equal(a.d.target, vin);
    assert.equal(a.d.v1, Verdict.FROM_DP);
    assert.equal(a.d.flags & TraceFlag.PEER, TraceFlag.PEER);
    assert.equal(hex(a.before), hex(Buffer.concat([ucmac(ID), GW])));
    assert.equal(hex(a.after), hex(Buffer.concat([M, GW])));
    assert.equal(b.d.id, ID2);
    assert.equal(b.d.target, 32);
    assert.equal(hex(b.after), hex(Buffer.concat([GW, M2])));
  });

  it('TAP: original to the peer unchanged, copy target recorded; drops and passes have their reason', function () {
    seed(Mode.TAP, { dp: dp.veth });
    traceOn();
    let { records } = run('vex', vex, [ipv4(M, GW)]);
    assert.equal(records.length, 1);
    let r = records[0]!;
    assert.deepEqual([r.d.v1, r.d.v2, r.d.target, r.copyIfindex], [Verdict.COPY, Verdict.TO_PEER, vin, dp.veth]);
    assert.equal(hex(r.before), hex(r.after), 'the original leaves as it came');

    ({ records } = run('vbr', dp.lo, [ipv4(ucmac(ID), GW)]));
    r = records[0]!;
    assert.deepEqual([r.d.action, r.d.v1, r.d.reason, r.d.target], [SHOT, Verdict.DROP, Reason.DROP_INJECT, 0]);

    ({ records } = run('vbr', dp.lo, [ipv4(GW, OTHER)]));
    r = records[0]!;
    assert.deepEqual([r.d.action, r.d.hasId, r.d.reason, r.d.mode], [PASS, false, Reason.PASS_NO_PAIR, 0]);
  });

  it('a port with no entry; a header-only frame', function () {
    seed(Mode.FWD);
    dp.ports.delete(u32Key(vex));
    traceOn();
    let { records } = run('vex', vex, [arp(M, GW)]);
    assert.deepEqual([records[0]!.d.hasId, records[0]!.d.reason, records[0]!.d.action, records[0]!.proto], [false, Reason.PASS_NO_PORT, PASS, 0x0806]);
    assert.equal(hex(records[0]!.before), hex(Buffer.concat([M, GW])));
    // (test_run refuses frames under 14 bytes, so NEUV_TF_SHORT is not reachable here.)
    ({ records } = run('vin', vin, [frame(GW, M, 0x88cc, 0)]));
    assert.equal(records[0]!.d.flags & TraceFlag.SHORT, 0);
    assert.equal(records[0]!.len, 14);
  });

  it('off (0), lapsed (deadline passed) and filtered-out frames write nothing; the filter keeps its pair', function () {
    seed(Mode.FWD);
    const frames = [ipv4(M, GW), ipv4(M2, GW), ipv6(M, GW)];
    traceOn(0n);
    assert.equal(run('vex', vex, frames).records.length, 0, 'trace_until 0');
    traceOn(process.hrtime.bigint() - 1n);
    assert.equal(run('vex', vex, frames).records.length, 0, 'trace_until in the past');
    traceOn(FAR, traceFilterFlags(ID2));
    assert.equal(run('vex', vex, frames).records.length, 0, 'filter on another pair');
    assert.equal(run('vbr', dp.lo, [ipv4(ucmac(ID2), GW)]).records.length, 1, 'filter on this pair');
    traceOn(FAR, traceFilterFlags(ID));
    const { records } = run('vbr', dp.lo, [ipv4(ucmac(ID), GW), ipv4(ucmac(ID2), GW), ipv4(GW, OTHER)]);
    assert.deepEqual(records.map((r) => r.d.id), [ID], 'frames of no pair are filtered out too');
  });

  it('tracing changes no decision: same return values and bytes as with tracing off', function () {
    const frames = [ipv4(M, GW), ipv4(GW, M), ipv6(M, GW), arp(M, GW), ipv4(ucmac(ID), GW), ipv4(GW, ucmac(ID)), ipv4(OTHER, GW), frame(M, GW, 0x0800, 20)];
    for (const mode of [Mode.FWD, Mode.TAP, Mode.BYPASS, Mode.DROP]) {
      seed(mode, { dp: dp.veth });
      const runAll = () =>
        (['vin', 'vex', 'vbr'] as const).flatMap((h) =>
          frames.map((f) => {
            const r = dp.run(h, f, h === 'vin' ? vin : h === 'vex' ? vex : dp.lo);
            return `${h} ${r.retval} ${hex(r.dataOut)}`;
          }),
        );
      dp.writeConfig(() => ({ dpIfindex: dp.veth, flags: 0, traceUntil: 0n }));
      const off = runAll();
      dp.writeConfig(() => ({ dpIfindex: dp.veth, flags: 0, traceUntil: FAR }));
      const on = runAll();
      assert.deepEqual(on, off, `mode ${mode}`);
      assert.equal(ring.consume().length, frames.length * 3, 'one record per frame');
    }
  });

  it('a full ring loses records and says how many', function () {
    seed(Mode.BYPASS);
    traceOn();
    const f = ipv4(M, GW);
    // 256 KiB / (72 + 8 bytes of header) = 3276 records fit.
    for (let i = 0; i < 3400; i++) dp.run('vex', f, vex);
    const first = ring.consume().map(decodeTrace);
    assert.equal(first.length, 3276);
    dp.run('vex', f, vex);
    const next = ring.consume().map(decodeTrace);
    assert.equal(next.length, 1);
    assert.equal(next[0]!.lost - first[first.length - 1]!.lost, 3400 - 3276);
  });
});

// ---------------------------------------------------------------- real traffic through the CLI

interface Topo {
  e: Netns;
  h: Netns;
  w: Netns;
  pins: string;
  m: string; // workload MAC
  hm: string; // host-side MAC
  id: number;
}

/** Enforcer, host and workload netns; vex0/vin0 in the enforcer; datapath loaded; one FWD pair; stub DP running. */
function topology(): Topo {
  const [e, h, w] = [makeNetns(), makeNetns(), makeNetns()];
  for (const n of [e, h, w]) n.exec('sysctl', ['-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  const pins = makePinRoot();
  const hm = veth({ ns: h, name: 'hA' }, { ns: e, name: 'vex0' }).a.address;
  const m = veth({ ns: w, name: 'eth0' }, { ns: e, name: 'vin0' }).a.address;
  let r = cli(['--netns', e.name, '--bpffs', pins, 'load']);
  assert.equal(r.code, 0, r.stderr);
  onCleanup(() => cli(['--netns', e.name, '--bpffs', pins, 'unload']));
  r = cli(['--netns', e.name, '--bpffs', pins, 'pair', 'add', '--in', 'vin0', '--ex', 'vex0', '--mac', m, '--mode', 'fwd', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const id = (JSON.parse(r.stdout) as { id: number } | Array<{ id: number }>);
  const stub = spawn('ip', ['netns', 'exec', e.name, path.join(ROOT, 'build', 'stub-dp'), '--ifname', 'vth-neuv'], { stdio: 'ignore' });
  onCleanup(() => stub.kill('SIGKILL'));
  return { e, h, w, pins, m, hm, id: Array.isArray(id) ? id[0]!.id : id.id };
}

/** Sends n IPv4/UDP frames DA = the workload, SA = the host side, into vex0 (trafgen, exact count). */
function send(t: Topo, n: number): void {
  const bytes = (mac: string) => mac.split(':').map((o) => `0x${o}`).join(', ');
  const cfg = `{ ${bytes(t.m)}, ${bytes(t.hm)}, 0x08, 0x00, 0x45, 0x00, 0x00, 0x32, 0x00, 0x00, 0x00, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x1f, 0x90, 0x00, 0x1e, 0x00, 0x00, fill(0x61, 22) }`;
  t.h.exec('trafgen', ['--dev', 'hA', '-P', '1', '-n', String(n), ...TRAFGEN_QUIET, '-C', cfg]);
}

/** Pair packets counted in neuv_stats (all directions and verdicts). */
function pairPackets(t: Topo): bigint {
  return Pins.with(t.pins, ['stats'], ({ stats }) => {
    const v = stats.lookup(u32Key(t.id));
    if (!v) return 0n;
    const s = emptyStats();
    for (const c of stats.perCpuValues(v)) addStats(s, c);
    return s.flat().reduce((a, c) => a + c.packets, 0n);
  });
}

/** A running `neuv-bpf trace`, its output collected. */
class TraceProc {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  constructor(args: string[], env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'info', ...env } });
    this.child.stdout!.on('data', (d: Buffer) => (this.stdout += d.toString()));
    this.child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    onCleanup(() => this.child.kill('SIGKILL'));
  }
  /** Resolves when the command says it is tracing. */
  async ready(): Promise<void> {
    await waitFor(() => /tracing (every frame|pair \d+)/.test(this.stderr), 10000, () => `trace did not start:\n${this.stderr}`);
  }
  views(): TraceView[] {
    return this.stdout.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as TraceView);
  }
}

async function waitFor(cond: () => boolean, ms: number, what: () => string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(what());
    await new Promise((r) => setTimeout(r, 25));
  }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('neuv-bpf trace (kernel, real traffic)', function () {
  before(function () {
    requireKernel(this);
    requireTrafgen();
    if (!fs.existsSync(path.join(ROOT, 'build', 'stub-dp'))) throw new Error('build/stub-dp missing: make build');
  });
  leakChecks();

  it('--json shows one record per frame and hook, with the right MACs, action and target', async function () {
    const t = topology();
    const tp = new TraceProc(['--netns', t.e.name, '--bpffs', t.pins, 'trace', '--json']);
    await tp.ready();
    const N = 25;
    send(t, N);
    const ours = () => tp.views().filter((v) => v.sa === t.hm && v.ethertype === '0x0800');
    await waitFor(() => ours().length >= 2 * N, 10000, () => `expected ${2 * N} records, got ${ours().length}:\n${tp.stdout}`);
    tp.child.kill('SIGTERM');
    const ex = await tp.exited;
    assert.equal(ex.code, 0, tp.stderr);
    const v = ours();
    assert.equal(v.length, 2 * N, 'no more than one record per frame and hook');
    const toDp = v.filter((x) => x.hook === 'vex');
    const fromDp = v.filter((x) => x.hook === 'vbr');
    assert.equal(toDp.length, N);
    assert.equal(fromDp.length, N);
    const uc = formatMac(ucmac(t.id));
    for (const x of toDp) {
      assert.deepEqual(
        [x.ifname, x.id, x.mode, x.action, x.verdicts, x.target, x.targetName, x.da, x.daAfter, x.saAfter, x.len],
        ['vex0', t.id, 'fwd', 'redirect', ['to_dp'], 10000000, 'vbr-neuv', t.m, uc, t.hm, 64],
      );
    }
    const vin0 = Number(t.e.exec('cat', ['/sys/class/net/vin0/ifindex']).trim());
    for (const x of fromDp) {
      assert.deepEqual(
        [x.ifname, x.id, x.action, x.verdicts, x.target, x.targetName, x.da, x.daAfter, x.sa, x.saAfter],
        ['vbr-neuv', t.id, 'redirect', ['from_dp'], vin0, 'vin0', uc, t.m, t.hm, t.hm],
      );
    }
    assert.equal(traceState(t.pins).traceUntil, 0n, 'off after the command');
  });

  it('--in VIN keeps to that pair; text lines by default; --count stops it', async function () {
    const t = topology();
    const tp = new TraceProc(['--netns', t.e.name, '--bpffs', t.pins, 'trace', '--in', 'vin0', '--count', '3']);
    await tp.ready();
    assert.equal(traceState(t.pins).flags, traceFilterFlags(t.id));
    send(t, 5);
    const ex = await tp.exited;
    assert.equal(ex.code, 0, tp.stderr);
    const lines = tp.stdout.trim().split('\n');
    assert.equal(lines.length, 3, tp.stdout);
    for (const l of lines) assert.match(l, new RegExp(`^\\d\\d:\\d\\d:\\d\\d\\.\\d{6} (vex vex0|vbr vbr-neuv)\\(\\d+\\) id ${t.id} fwd {2}redirect `));
    const st = traceState(t.pins);
    assert.deepEqual([st.traceUntil, st.flags], [0n, 0], 'off and unfiltered after --count');
  });

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`${sig}: tracing is off at once (trace_until == 0)`, async function () {
      const t = topology();
      const tp = new TraceProc(['--netns', t.e.name, '--bpffs', t.pins, 'trace']);
      await tp.ready();
      const on = traceState(t.pins);
      assert.ok(on.traceUntil > on.now, 'the lease is held while tracing');
      tp.child.kill(sig);
      const ex = await tp.exited;
      assert.equal(ex.code, 0, tp.stderr);
      assert.equal(traceState(t.pins).traceUntil, 0n);
    });
  }

  it('SIGKILL: the lease lapses within ~3 s and no record is written after', async function () {
    const t = topology();
    const tp = new TraceProc(['--netns', t.e.name, '--bpffs', t.pins, 'trace', '--json']);
    await tp.ready();
    send(t, 2);
    await waitFor(() => tp.views().length >= 4, 5000, () => `no records before the kill:\n${tp.stdout}`);
    tp.child.kill('SIGKILL');
    const killedAt = process.hrtime.bigint();
    await tp.exited;
    const st = traceState(t.pins);
    assert.ok(st.traceUntil > st.now, 'a killed tracer cannot switch off: the lease is still running');
    assert.ok(st.traceUntil - killedAt <= 3_100_000_000n, `lease ends ${st.traceUntil - killedAt} ns after the kill`);
    await waitFor(() => {
      const s = traceState(t.pins);
      return s.traceUntil < s.now;
    }, 4000, () => 'the lease did not lapse within 4 s');
    // Read the ring ourselves: drain it, send traffic, nothing new arrives.
    const ringMap = Pins.open(t.pins, ['trace']);
    const ring = RingBuffer.open(ringMap.map('trace').fd);
    try {
      ring.consume();
      const before = pairPackets(t);
      send(t, 10);
      await waitFor(() => pairPackets(t) - before >= 20n, 5000, () => 'the frames did not go through the datapath');
      await sleep(200);
      assert.deepEqual(ring.consume(), [], 'records after the lease lapsed');
    } finally {
      ring.close();
      ringMap.close();
    }
  });

  it('one reader at a time: a second trace is refused (exit 5), the first keeps going', async function () {
    const t = topology();
    const tp = new TraceProc(['--netns', t.e.name, '--bpffs', t.pins, 'trace', '--json']);
    await tp.ready();
    const r = cli(['--netns', t.e.name, '--bpffs', t.pins, 'trace']);
    assert.equal(r.code, 5, r.stderr);
    assert.match(r.stderr.trim(), new RegExp(`^neuv-bpf: another neuv-bpf is tracing ${t.pins} \\(pid ${tp.child.pid}\\)`));
    send(t, 1);
    await waitFor(() => tp.views().length >= 2, 5000, () => 'the first trace stopped reading');
    tp.child.kill('SIGTERM');
    assert.equal((await tp.exited).code, 0);
  });

  it('--log-level trace: records stream as trace-level log lines while another command runs', async function () {
    const t = topology();
    // Frames keep coming (one per ms, for at most 2 minutes so a generator
    // orphaned by a killed test run ends by itself) while `show` runs.
    const bytes = (mac: string) => mac.split(':').map((o) => `0x${o}`).join(', ');
    const cfg = `{ ${bytes(t.m)}, ${bytes(t.hm)}, 0x08, 0x00, fill(0x45, 46) }`;
    const gen = spawn('ip', ['netns', 'exec', t.h.name, 'trafgen', '--dev', 'hA', '-P', '1', '-t', '1ms', '-n', '120000', ...TRAFGEN_QUIET, '-C', cfg], { stdio: 'ignore' });
    onCleanup(() => gen.kill('SIGKILL'));
    // Wait until frames really flow, then run the command; a command is short
    // (milliseconds), so on a loaded machine it may take a few runs to catch frames.
    const before = pairPackets(t);
    await waitFor(() => pairPackets(t) - before >= 5n, 10000, () => 'trafgen frames did not reach the datapath');
    let r = { code: 0, stdout: '', stderr: '' };
    let dp: Array<{ level: number; mod?: string; msg: string; hook?: string; id?: number }> = [];
    for (let attempt = 0; attempt < 10 && dp.length === 0; attempt++) {
      r = cli(['--netns', t.e.name, '--bpffs', t.pins, '--log-level', 'trace', 'show'], { env: { NEUV_BPF_LOG_LEVEL: undefined } });
      assert.equal(r.code, 0, r.stderr);
      dp = r.stderr
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { level: number; mod?: string; msg: string; hook?: string; id?: number })
        .filter((l) => l.mod === 'dp');
    }
    gen.kill('SIGKILL');
    assert.ok(dp.length > 0, `no datapath records in:\n${r.stderr.slice(0, 3000)}`);
    for (const l of dp) {
      assert.equal(l.level, 10, 'trace level');
      assert.equal(l.id, t.id);
      assert.match(l.msg, / vex vex0\(\d+\) | vbr vbr-neuv\(/);
    }
    assert.equal(traceState(t.pins).traceUntil, 0n, 'off after the command');
  });
});

// ---------------------------------------------------------------- upgrade

/**
 * The maps of the object before tracing (same definitions as the datapath of
 * commit 508b015): no neuv_trace, and a neuv_config of the same size.
 */
const PRE_TRACE_OBJECT = `
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct neuv_port { __u32 peer_ifindex; __u32 flags; __u16 id; __u8 role; __u8 mode; __u8 mac[6]; __u8 pad[2]; };
struct neuv_id { __u32 vin_ifindex; __u32 vex_ifindex; };
struct neuv_ctr { __u64 packets; __u64 bytes; };
struct neuv_stats { struct neuv_ctr c[2][5]; };
struct neuv_global { __u64 reason[9]; };
struct neuv_config { __u32 dp_ifindex; __u32 flags; __u64 trace_until; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 131072); __type(key, __u32); __type(value, struct neuv_port); __uint(pinning, LIBBPF_PIN_BY_NAME); } neuv_ports SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 65536); __type(key, __u32); __type(value, struct neuv_id); __uint(pinning, LIBBPF_PIN_BY_NAME); } neuv_ids SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(map_flags, BPF_F_NO_PREALLOC); __uint(max_entries, 65536); __type(key, __u32); __type(value, struct neuv_stats); __uint(pinning, LIBBPF_PIN_BY_NAME); } neuv_stats SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct neuv_global); __uint(pinning, LIBBPF_PIN_BY_NAME); } neuv_global SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct neuv_config); __uint(pinning, LIBBPF_PIN_BY_NAME); } neuv_config SEC(".maps");
SEC("tc") int neuv_vbr(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct neuv_config *c = bpf_map_lookup_elem(&neuv_config, &k);
	return c && bpf_map_lookup_elem(&neuv_ports, &k) && bpf_map_lookup_elem(&neuv_ids, &k) &&
	       bpf_map_lookup_elem(&neuv_stats, &k) && bpf_map_lookup_elem(&neuv_global, &k) ? 0 : 0;
}
char LICENSE[] SEC("license") = "Dual BSD/GPL";
`;

/** Compiles PRE_TRACE_OBJECT into a temporary directory (removed at cleanup); returns the .o path. */
function preTraceObject(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-old-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'old.bpf.c'), PRE_TRACE_OBJECT);
  const multiarch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  sh('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${multiarch}`, '-c', path.join(dir, 'old.bpf.c'), '-o', path.join(dir, 'old.bpf.o')]);
  return path.join(dir, 'old.bpf.o');
}

describe('load over the pins of a pre-trace datapath (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  after(function () {
    runCleanups();
    assert.deepEqual(leftovers(), [], 'tests left namespaces or pins behind');
  });

  it('reuses four maps, moves neuv_ports to its new layout with its entries, pins neuv_trace anew; trace then works', async function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    fs.mkdirSync(pins, { mode: 0o700 });
    const old = BpfObject.open(preTraceObject(), { pinRoot: pins });
    old.load();
    const oldIds: Record<string, number> = {};
    for (const n of ['neuv_ports', 'neuv_ids', 'neuv_stats', 'neuv_global', 'neuv_config']) oldIds[n] = old.map(n).info.id;
    old.map('neuv_ids').update(u32Key(7), Buffer.from([1, 0, 0, 0, 2, 0, 0, 0]));
    // A port entry in the layout of that time: 20 bytes, no lock.
    const oldPort = Buffer.from('02000000' + '00000000' + '0700' + '01' + '02' + '020000000001' + '0000', 'hex');
    old.map('neuv_ports').update(u32Key(1), oldPort);
    old.close();
    assert.deepEqual(fs.readdirSync(pins).sort(), Object.keys(oldIds).sort());

    const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--json']);
    assert.equal(r.code, 0, r.stderr);
    onCleanup(() => cli(['--netns', ns.name, '--bpffs', pins, 'unload']));
    const res = JSON.parse(r.stdout) as { replaced: boolean; mapIds: Record<string, number> };
    // neuv_ports changed layout since (a lock for in-place updates): a new map with the same entries.
    for (const [n, id] of Object.entries(oldIds)) {
      if (n === 'neuv_ports') assert.notEqual(res.mapIds[n], id, 'neuv_ports replaced (20-byte values then, 24 now)');
      else assert.equal(res.mapIds[n], id, `${n} reused`);
    }
    Pins.with(pins, ['ports'], ({ ports }) => {
      assert.equal(ports.info.valueSize, 24);
      assert.deepEqual(ports.lookup(u32Key(1)), Buffer.concat([oldPort, Buffer.alloc(4)]), 'the port entry copied over');
    });
    assert.equal(fs.existsSync(path.join(pins, 'neuv_ports_old')), false, 'the old map unpinned');
    assert.ok(res.mapIds.neuv_trace! > 0);
    assert.ok(fs.existsSync(mapPinPath(pins, 'trace')));
    assert.equal(fs.statSync(mapPinPath(pins, 'trace')).mode & 0o777, 0o600);
    Pins.with(pins, ['ids'], ({ ids }) => assert.deepEqual(ids.lookup(u32Key(7)), Buffer.from([1, 0, 0, 0, 2, 0, 0, 0]), 'entry kept'));
    const t = cli(['--netns', ns.name, '--bpffs', pins, 'trace', '--duration', '0.3']);
    assert.equal(t.code, 0, t.stderr);
  });

  it('trace on a datapath loaded before tracing existed says how to upgrade', function () {
    const pins = makePinRoot();
    fs.mkdirSync(pins, { mode: 0o700 });
    const old = BpfObject.open(preTraceObject(), { pinRoot: pins });
    old.load();
    old.close();
    const r = cli(['--bpffs', pins, 'trace']);
    assert.equal(r.code, 4, r.stderr);
    assert.match(r.stderr.trim(), /^neuv-bpf: .*neuv_trace is missing: the loaded datapath predates tracing; run neuv-bpf load to upgrade it/);
    // Its neuv_ports has the 20-byte entries of that time: the pair commands say the same.
    const s = cli(['--bpffs', pins, 'show']);
    assert.equal(s.code, 5, s.stderr);
    assert.match(s.stderr.trim(), /^neuv-bpf: neuv_ports under \S+ has 20-byte entries: the datapath was loaded by an older neuv-bpf; run neuv-bpf load to upgrade it$/);
  });
});
