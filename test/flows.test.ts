/**
 * Flow offload: the key and expiry rules and the API's parsing (pure), the
 * programs under BPF_PROG_TEST_RUN with neuv_flows entries (every verdict,
 * expiry by deadline and by idle time, TCP FIN/RST, what never looks the map
 * up), the trace records of those decisions, and the CLI (`flow`, `load
 * --flows`, mode switches and pair del clearing a pair's flows, show/stats
 * counting offloaded frames apart) on a loaded datapath.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MapFd, RingBuffer } from '../src/bpf';
import { Flows, flowExpiry, flowKeyFromSpec, flowValue, parseEndpoint, parseProto, viewFlow } from '../src/flows';
import {
  ConfigFlag,
  Dir,
  FlowEntry,
  FlowVerdict,
  Hook,
  Mode,
  PortFlag,
  STATS_VERDICT_COUNT,
  Stats,
  TraceFlag,
  Verdict,
  VERDICT_COUNT,
  addFlowStats,
  decodeFlow,
  decodeFlowKey,
  decodeTrace,
  emptyStats,
  encodeFlow,
  encodeFlowKey,
  flowKeyOf,
  u32Key,
} from '../src/layout';
import { ucmac } from '../src/mac';
import { decide } from './model';
import { monoToWall, viewRecord, formatView } from '../src/trace';
import { coarseNs } from '../harness/clock';
import { ProgFixture, globalDelta, statsDelta } from '../harness/prog-fixture';
import { BCAST, GW, ID, ID2, ICMP, M, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP, ip4, ipv6, twoPairs, withMac } from '../harness/frames';
import { cli, leakChecks, makePinRoot, requireKernel, ROOT, sh } from './helpers';
import { makePairTopology } from './topology';
import { Pins } from '../src/pins';

const SHOT = 2;
const REDIRECT = 7;
const FAR = 1n << 62n;
const FLOW_OFFLOAD = path.join(ROOT, 'build', 'flow-offload');

/** The workload (M) is 10.1.0.2, a peer on the network (GW) 10.1.0.9. */
const WL = '10.1.0.2';
const PEER = '10.1.0.9';
const tcpIn = (o: { sport?: number; dport?: number; tcpFlags?: number; fragField?: number; ihl?: number; truncate?: number } = {}) =>
  ip4(M, GW, { proto: TCP, src: PEER, dst: WL, sport: o.sport ?? 40000, dport: o.dport ?? 80, ...o });
const tcpOut = (o: { tcpFlags?: number } = {}) => ip4(GW, M, { proto: TCP, src: WL, dst: PEER, sport: 80, dport: 40000, ...o });
const TCP_FLOW = { id: ID, proto: TCP, src: PEER, sport: 40000, dst: WL, dport: 80 };

describe('flow offload: keys, expiry, parsing (pure)', function () {
  it('both directions give one key: endpoint A is the lower (address, port), ports in network order', function () {
    const a = flowKeyOf({ id: 7, proto: TCP, src: '10.0.0.2', sport: 80, dst: '10.0.0.1', dport: 1234 });
    const b = flowKeyOf({ id: 7, proto: TCP, src: '10.0.0.1', sport: 1234, dst: '10.0.0.2', dport: 80 });
    assert.deepEqual(a, b);
    assert.deepEqual(a, { id: 7, proto: TCP, addrA: '10.0.0.1', portA: 1234, addrB: '10.0.0.2', portB: 80 });
    // Same address: the port decides.
    assert.deepEqual(flowKeyOf({ id: 1, proto: UDP, src: '10.0.0.1', sport: 9, dst: '10.0.0.1', dport: 8 }), { id: 1, proto: UDP, addrA: '10.0.0.1', portA: 8, addrB: '10.0.0.1', portB: 9 });
    // Addresses compare as big-endian numbers, not as strings: 9.x < 10.x.
    assert.equal(flowKeyOf({ id: 1, proto: UDP, src: '10.0.0.1', sport: 1, dst: '9.255.0.1', dport: 2 }).addrA, '9.255.0.1');
    // Not TCP/UDP: ports 0.
    assert.deepEqual(flowKeyOf({ id: 1, proto: ICMP, src: '10.0.0.2', sport: 5, dst: '10.0.0.1', dport: 6 }), { id: 1, proto: ICMP, addrA: '10.0.0.1', portA: 0, addrB: '10.0.0.2', portB: 0 });
    const bytes = encodeFlowKey(a);
    assert.equal(bytes.toString('hex'), '0700' + '06' + '00' + '0a000001' + '0a000002' + '04d2' + '0050');
    assert.deepEqual(decodeFlowKey(bytes), a);
  });

  it('the model derives the same key from a frame, either direction', function () {
    const st = { ...twoPairs({ vin: 21, vex: 22, vin2: 31, vex2: 32, dp: 10 }, Mode.FWD), now: 1000n, configFlags: ConfigFlag.FLOWS };
    const k = encodeFlowKey(flowKeyOf(TCP_FLOW)).toString('hex');
    const entry = { verdict: FlowVerdict.ALLOW, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n };
    const keyOfModel = (s: string) => {
      const [id, proto, a, b] = s.split('/');
      const [aa, pa] = a!.split(':');
      const [ab, pb] = b!.split(':');
      const ip = (n: string) => [24, 16, 8, 0].map((sh) => (Number(n) >>> sh) & 0xff).join('.');
      return encodeFlowKey({ id: Number(id), proto: Number(proto), addrA: ip(aa!), portA: Number(pa), addrB: ip(ab!), portB: Number(pb) }).toString('hex');
    };
    for (const [hook, ing, f] of [['vex', 22, tcpIn()], ['vin', 21, tcpOut()]] as const) {
      const o = decide(st, hook, ing, f);
      assert.equal(o.flow, undefined);
      // Put an entry under every key string the model could use, and check the one it hits.
      const flows = new Map([[`${ID}/6/${(10 << 24) | (1 << 16) | 2}:80/${(10 << 24) | (1 << 16) | 9}:40000`, { key: { id: ID, proto: 6, addrA: 0, portA: 0, addrB: 0, portB: 0 }, ...entry }]]);
      const hit = decide({ ...st, flows }, hook, ing, f);
      assert.equal(hit.flow?.op, 'hit', `${hook}: the model finds the entry`);
      assert.equal(keyOfModel(hit.flow!.key), k, 'the model key encodes to the layout key');
    }
  });

  it('expiry: deadline, idle timeout from the last frame, none', function () {
    const e = (o: Partial<FlowEntry>): FlowEntry => ({ verdict: 1, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n, ...o });
    assert.deepEqual(flowExpiry(e({}), 5n), { expired: false, expiresInMs: null });
    assert.equal(flowExpiry(e({ deadlineNs: 5n }), 5n).expired, true);
    assert.equal(flowExpiry(e({ deadlineNs: 6n }), 5n).expired, false);
    assert.deepEqual(flowExpiry(e({ deadlineNs: 3_000_000_005n }), 5n), { expired: false, expiresInMs: 3000 });
    assert.deepEqual(flowExpiry(e({ idleNs: 10n }), 100n), { expired: false, expiresInMs: null }, 'idle clock starts at the first frame');
    assert.equal(flowExpiry(e({ idleNs: 10n, lastNs: 90n }), 100n).expired, true);
    assert.equal(flowExpiry(e({ idleNs: 10n, lastNs: 91n }), 100n).expired, false);
    assert.equal(flowExpiry(e({ idleNs: 10n, lastNs: 200n }), 100n).expired, false, 'last_ns ahead of now: not idle');
    const v = flowValue({ verdict: 'deny', timeoutS: 2, idleS: 0.5 }, 1000n);
    assert.deepEqual(v, { verdict: FlowVerdict.DENY, deadlineNs: 2_000_001_000n, idleNs: 500_000_000n, lastNs: 0n, packets: 0n, bytes: 0n });
    assert.deepEqual(decodeFlow(encodeFlow(v)), v);
    const view = viewFlow(flowKeyOf(TCP_FLOW), v, 1000n);
    assert.equal(view.verdict, 'deny');
    assert.equal(view.expiresInMs, 2000);
  });

  it('parses protocols, endpoints and specs; refuses what it cannot encode', function () {
    assert.equal(parseProto('tcp'), 6);
    assert.equal(parseProto('UDP'), 17);
    assert.equal(parseProto('icmp'), 1);
    assert.equal(parseProto('47'), 47);
    assert.throws(() => parseProto('sctpx'), /unknown protocol/);
    assert.throws(() => parseProto(256), /out of range/);
    assert.deepEqual(parseEndpoint('10.0.0.1:80', 'source'), { addr: '10.0.0.1', port: 80 });
    assert.deepEqual(parseEndpoint('10.0.0.1', 'source'), { addr: '10.0.0.1', port: 0 });
    assert.throws(() => parseEndpoint('10.0.0.256:1', 'source'), /not an IPv4 address/);
    assert.throws(() => parseEndpoint('10.0.0.1:65536', 'source'), /out of range/);
    assert.throws(() => parseEndpoint('[::1]:80', 'source'), /not ADDR or ADDR:PORT/);
    assert.throws(() => flowKeyFromSpec({ id: 1, proto: 'icmp', src: '10.0.0.1:5', dst: '10.0.0.2' }), /ports only exist for tcp and udp/);
    assert.throws(() => flowKeyFromSpec({ id: 70000, proto: 'tcp', src: '10.0.0.1:5', dst: '10.0.0.2:6' }), /out of range/);
    assert.throws(() => flowValue({ timeoutS: -1 }, 0n), /timeout -1 is out of range \(expected 0\.001\.\.31536000 seconds\)/);
  });

  it('trace lines name the flow decision', function () {
    const rec = (v1: number, v2: number, flags: number, action: number) => ({
      ts: process.hrtime.bigint(),
      d: { target: 3, id: ID, hasId: true, dir: 0, v1, v2, reason: 0, mode: Mode.FWD, hook: Hook.VEX, flags, action },
      ifindex: 2, len: 74, copyIfindex: 0, lost: 0, before: Buffer.concat([M, GW]), after: Buffer.concat([M, GW]), proto: 0x0800,
    });
    const names = { name: (i: number) => (i === 2 ? 'vex0' : i === 3 ? 'vin0' : null) };
    const wall = monoToWall();
    const fast = viewRecord(rec(VERDICT_COUNT, Verdict.FAST, TraceFlag.PARSED | TraceFlag.FLOW, REDIRECT), names, wall);
    assert.deepEqual([fast.verdicts, fast.flow], [['fast'], 'hit']);
    assert.match(formatView(fast), / redirect fast -> vin0\(3\) /);
    const deny = viewRecord(rec(Verdict.FLOW_DROP, VERDICT_COUNT, TraceFlag.PARSED | TraceFlag.FLOW, SHOT), names, wall);
    assert.deepEqual([deny.verdicts, deny.flow, deny.action], [['flow_drop'], 'hit', 'drop']);
    const exp = viewRecord(rec(Verdict.TO_DP, VERDICT_COUNT, TraceFlag.PARSED | TraceFlag.FLOW | TraceFlag.FLOW_EXPIRED, REDIRECT), names, wall);
    assert.equal(exp.flow, 'expired');
    assert.match(formatView(exp), / redirect to_dp \(flow expired\) -> /);
    const end = viewRecord(rec(Verdict.TO_DP, VERDICT_COUNT, TraceFlag.PARSED | TraceFlag.FLOW | TraceFlag.FLOW_END, REDIRECT), names, wall);
    assert.equal(end.flow, 'end');
    assert.equal(viewRecord(rec(Verdict.TO_DP, VERDICT_COUNT, TraceFlag.PARSED, REDIRECT), names, wall).flow, null);
  });
});

describe('flow offload (BPF_PROG_TEST_RUN)', function () {
  let dp: ProgFixture;
  let vin: number;
  let vex: number;
  let flows: MapFd;
  let flowStats: MapFd;
  let pinRoot: string;

  before(function () {
    requireKernel(this);
    dp = ProgFixture.create();
    vin = dp.lo;
    vex = dp.veth;
    flows = dp.obj.map('neuv_flows');
    flowStats = dp.obj.map('neuv_flow_stats');
    pinRoot = path.dirname(dp.obj.mapPinPath('neuv_flows')!);
  });
  leakChecks({ perTest: false });

  function seed(mode: number, opts: { flags?: number } = {}): void {
    dp.seed({ ...twoPairs({ vin, vex, vin2: 31, vex2: 32, dp: dp.lo }, mode, opts), configFlags: ConfigFlag.FLOWS }, [ID, ID2]);
    for (const m of [flows, flowStats]) for (const k of m.keys()) m.delete(k);
  }
  const key = (t = TCP_FLOW) => encodeFlowKey(flowKeyOf(t));
  function put(verdict: number, o: Partial<FlowEntry> = {}, t = TCP_FLOW): void {
    flows.update(key(t), encodeFlow({ verdict, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n, ...o }));
  }
  const entry = (t = TCP_FLOW) => {
    const v = flows.lookup(key(t));
    return v ? decodeFlow(v) : undefined;
  };
  function readFlowStats(id: number): Stats {
    const s = emptyStats();
    const v = flowStats.lookup(u32Key(id));
    if (v) for (const c of flowStats.perCpuValues(v)) addFlowStats(s, c);
    return s;
  }

  /** Runs one frame; checks retval, data_out and which counters of pair ID moved (neuv_stats and neuv_flow_stats). */
  function check(hook: 'vin' | 'vex', ingress: number, f: Buffer, ret: number, out: Buffer, dir: number, verdicts: readonly number[]): void {
    const s0 = dp.readStats(ID)!;
    const f0 = readFlowStats(ID);
    const r = dp.run(hook, f, ingress);
    const what = `${hook}, frame ${f.toString('hex')}`;
    assert.equal(r.retval, ret, `retval: ${what}`);
    assert.equal(r.dataOut.toString('hex'), out.toString('hex'), `data_out: ${what}`);
    const moved = [...statsDelta(s0, dp.readStats(ID)!), ...statsDelta(f0, readFlowStats(ID))].sort();
    assert.deepEqual(moved, verdicts.map((v) => `${dir}.${v}:1/${f.length}`).sort(), `counters dir.verdict:packets/bytes: ${what}`);
  }
  const toDpIn = (f: Buffer) => [REDIRECT, withMac(f, 0, ucmac(ID)), Dir.TO_WL, [Verdict.TO_DP]] as const;
  const toDpOut = (f: Buffer) => [REDIRECT, withMac(f, 6, ucmac(ID)), Dir.FROM_WL, [Verdict.TO_DP]] as const;

  it('no entry: to the DP as before, and the map is not written', function () {
    seed(Mode.FWD);
    const f = tcpIn();
    check('vex', vex, f, ...toDpIn(f));
    const g = tcpOut();
    check('vin', vin, g, ...toDpOut(g));
    assert.equal(flows.keys().length, 0);
    assert.equal(flowStats.lookup(u32Key(ID)), undefined, 'no flow counters before a flow frame');
  });

  it('ALLOW: both directions go straight to the peer unchanged (FAST), counted apart; the entry counts and is touched', function () {
    seed(Mode.FWD);
    put(FlowVerdict.ALLOW);
    const t0 = coarseNs();
    const f = tcpIn();
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
    const g = tcpOut();
    check('vin', vin, g, REDIRECT, g, Dir.FROM_WL, [Verdict.FAST]);
    const e = entry()!;
    assert.equal(e.packets, 2n);
    assert.equal(e.bytes, BigInt(f.length + g.length));
    assert.ok(e.lastNs >= t0 && e.lastNs <= process.hrtime.bigint(), 'last_ns is bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC, up to a tick behind)');
    // neuv_stats untouched: FAST is not TO_PEER.
    const s = dp.readStats(ID)!;
    for (const d of s) for (let v = 0; v < STATS_VERDICT_COUNT; v++) assert.equal(d[v]!.packets, 0n);
    // A SYN (a new connection on the same 5-tuple) is fast-pathed too.
    const syn = tcpIn({ tcpFlags: TCP_SYN });
    check('vex', vex, syn, REDIRECT, syn, Dir.TO_WL, [Verdict.FAST]);
  });

  it('DENY: both directions dropped in the kernel (FLOW_DROP), counted; FIN/RST dropped too', function () {
    seed(Mode.FWD);
    put(FlowVerdict.DENY);
    const f = tcpIn();
    check('vex', vex, f, SHOT, f, Dir.TO_WL, [Verdict.FLOW_DROP]);
    const g = tcpOut();
    check('vin', vin, g, SHOT, g, Dir.FROM_WL, [Verdict.FLOW_DROP]);
    const fin = tcpIn({ tcpFlags: TCP_FIN | TCP_ACK });
    const g0 = dp.readGlobal();
    check('vex', vex, fin, SHOT, fin, Dir.TO_WL, [Verdict.FLOW_DROP]);
    assert.deepEqual(globalDelta(g0, dp.readGlobal()), [], 'no drop reason: the verdict says it all');
    assert.equal(entry()!.packets, 3n);
  });

  it('TCP FIN and RST end an ALLOW entry: deleted, and that frame goes to the DP', function () {
    for (const flags of [TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK]) {
      seed(Mode.FWD);
      put(FlowVerdict.ALLOW);
      const f = tcpOut({ tcpFlags: flags });
      check('vin', vin, f, ...toDpOut(f));
      assert.equal(entry(), undefined, `flags 0x${flags.toString(16)} deleted the entry`);
      const next = tcpIn();
      check('vex', vex, next, ...toDpIn(next));
    }
  });

  it('expiry by deadline: a past deadline deletes the entry and the frame goes to the DP; a future one applies', function () {
    seed(Mode.FWD);
    // The datapath's coarse clock is at least this (harness/clock.ts), however late its ticks come.
    const now = coarseNs();
    put(FlowVerdict.ALLOW, { deadlineNs: now - 1n });
    const f = tcpIn();
    check('vex', vex, f, ...toDpIn(f));
    assert.equal(entry(), undefined);
    put(FlowVerdict.DENY, { deadlineNs: now - 1n });
    check('vex', vex, f, ...toDpIn(f));
    assert.equal(entry(), undefined);
    put(FlowVerdict.ALLOW, { deadlineNs: now + 60_000_000_000n });
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
    // With U64_MAX as "never" (unsigned comparison).
    put(FlowVerdict.ALLOW, { deadlineNs: (1n << 64n) - 1n });
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
  });

  it('expiry by idle time: from the last frame (or the first, when last_ns is 0), refreshed by every frame', async function () {
    seed(Mode.FWD);
    const f = tcpIn();
    put(FlowVerdict.ALLOW, { idleNs: 1_000_000_000n, lastNs: process.hrtime.bigint() - 2_000_000_000n });
    check('vex', vex, f, ...toDpIn(f));
    assert.equal(entry(), undefined, 'idle for 2 s with a 1 s timeout: deleted');
    // last_ns 0: the first frame starts the clock.
    put(FlowVerdict.ALLOW, { idleNs: 400_000_000n });
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
    const first = entry()!.lastNs;
    assert.ok(first > 0n);
    await new Promise((r) => setTimeout(r, 250));
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
    assert.ok(entry()!.lastNs > first, 'refreshed');
    await new Promise((r) => setTimeout(r, 250));
    check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]); // 500 ms since the first frame, 250 since the last
    await new Promise((r) => setTimeout(r, 600));
    check('vex', vex, f, ...toDpIn(f));
    assert.equal(entry(), undefined, 'idle past the timeout: deleted');
  });

  it('what never uses an entry: fragments, truncated headers, another pair, no decision, non-IPv4, other rules and modes', function () {
    seed(Mode.FWD, { flags: PortFlag.IPV6_TO_DP });
    put(FlowVerdict.ALLOW);
    const untouched = () => assert.deepEqual(entry(), { verdict: FlowVerdict.ALLOW, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n });
    for (const f of [
      tcpIn({ fragField: 0x2000 }), // MF: the first fragment goes to the DP with the rest
      tcpIn({ fragField: 0x0003 }), // an offset: no ports
      tcpIn({ truncate: 14 + 20 + 13 }), // TCP header cut before the flags
    ]) {
      check('vex', vex, f, ...toDpIn(f));
    }
    // Not IPv4 by its header (EtherType says so): version 6, IHL 4.
    const v6nibble = ip4(M, GW, { proto: TCP, src: PEER, dst: WL, sport: 40000, dport: 80, version: 6 });
    check('vex', vex, v6nibble, ...toDpIn(v6nibble));
    const ihl4 = ip4(M, GW, { proto: TCP, src: PEER, dst: WL, sport: 40000, dport: 80, ihl: 4 });
    check('vex', vex, ihl4, ...toDpIn(ihl4));
    const v6 = ipv6(M, GW);
    check('vex', vex, v6, ...toDpIn(v6));
    untouched();
    // An entry of another pair, and entries without a decision.
    put(FlowVerdict.ALLOW, {}, { ...TCP_FLOW, id: ID2 });
    flows.delete(key());
    const f = tcpIn();
    check('vex', vex, f, ...toDpIn(f));
    for (const v of [FlowVerdict.NONE, 3, 255]) {
      put(v);
      check('vex', vex, f, ...toDpIn(f));
      assert.equal(entry()!.verdict, v, 'kept as it is');
    }
    // Frames that FWD does not send to the DP never look: broadcast, another DA.
    put(FlowVerdict.DENY);
    const b = ip4(BCAST, GW, { proto: TCP, src: PEER, dst: WL, sport: 40000, dport: 80 });
    check('vex', vex, b, REDIRECT, b, Dir.TO_WL, [Verdict.TO_PEER]);
    assert.equal(entry()!.packets, 0n);
    // TAP, BYPASS and DROP ignore the map.
    for (const [mode, ret, verdicts] of [
      [Mode.TAP, REDIRECT, [Verdict.COPY, Verdict.TO_PEER]],
      [Mode.BYPASS, REDIRECT, [Verdict.TO_PEER]],
      [Mode.DROP, SHOT, [Verdict.DROP]],
    ] as const) {
      seed(mode);
      put(FlowVerdict.DENY);
      check('vex', vex, f, ret, f, Dir.TO_WL, [...verdicts]);
      assert.equal(entry()!.packets, 0n, `mode ${mode} did not use the entry`);
    }
  });

  it('IP options, UDP and protocols without ports (key ports 0)', function () {
    seed(Mode.FWD);
    put(FlowVerdict.ALLOW);
    const opt = tcpIn({ ihl: 7 });
    check('vex', vex, opt, REDIRECT, opt, Dir.TO_WL, [Verdict.FAST]);
    const udp = { id: ID, proto: UDP, src: WL, sport: 5353, dst: PEER, dport: 53 };
    put(FlowVerdict.DENY, {}, udp);
    const u = ip4(GW, M, { proto: UDP, src: WL, dst: PEER, sport: 5353, dport: 53 });
    check('vin', vin, u, SHOT, u, Dir.FROM_WL, [Verdict.FLOW_DROP]);
    const icmp = { id: ID, proto: ICMP, src: PEER, sport: 0, dst: WL, dport: 0 };
    put(FlowVerdict.ALLOW, {}, icmp);
    const i = ip4(M, GW, { proto: ICMP, src: PEER, dst: WL });
    check('vex', vex, i, REDIRECT, i, Dir.TO_WL, [Verdict.FAST]);
  });

  it('the TypeScript API writes the key the programs look up (offloadFlow, revoke, list, clearPair)', function () {
    seed(Mode.FWD);
    const fl = Flows.open(pinRoot);
    try {
      const r = fl.offload({ id: ID, proto: 'tcp', src: `${WL}:80`, dst: `${PEER}:40000` }, { timeoutS: 60 });
      assert.equal(r.pairMode, 'fwd');
      assert.equal(r.replaced, false);
      const f = tcpIn();
      check('vex', vex, f, REDIRECT, f, Dir.TO_WL, [Verdict.FAST]);
      const [v] = fl.list({ id: ID });
      assert.equal(v!.packets, 1n);
      assert.deepEqual([v!.a, v!.b], [{ addr: WL, port: 80 }, { addr: PEER, port: 40000 }]);
      assert.ok(v!.expiresInMs! > 50_000 && v!.expiresInMs! <= 60_000);
      assert.equal(fl.offload({ id: ID, proto: 'tcp', src: `${PEER}:40000`, dst: `${WL}:80` }, { verdict: 'deny' }).replaced, true, 'the reverse direction names the same entry');
      check('vex', vex, f, SHOT, f, Dir.TO_WL, [Verdict.FLOW_DROP]);
      assert.equal(fl.revoke({ id: ID, proto: 6, src: { addr: WL, port: 80 }, dst: { addr: PEER, port: 40000 } }), true);
      assert.equal(fl.revoke({ id: ID, proto: 6, src: { addr: WL, port: 80 }, dst: { addr: PEER, port: 40000 } }), false);
      check('vex', vex, f, ...toDpIn(f));
      fl.offload({ id: ID, proto: 'udp', src: `${WL}:1`, dst: `${PEER}:2` });
      fl.offload({ id: ID2, proto: 'udp', src: `${WL}:1`, dst: `${PEER}:2` });
      assert.equal(fl.clearPair(ID), 1);
      assert.deepEqual(fl.list().map((x) => x.id), [ID2]);
      assert.throws(() => fl.offload({ id: 4242, proto: 'tcp', src: `${WL}:1`, dst: `${PEER}:2` }), /no pair with port id 4242/);
    } finally {
      fl.close();
    }
  });

  it('trace records carry the flow decision', function () {
    seed(Mode.FWD);
    const ring = RingBuffer.open(dp.obj.map('neuv_trace').fd);
    try {
      ring.consume();
      dp.writeConfig((c) => ({ ...c, traceUntil: FAR }));
      put(FlowVerdict.ALLOW);
      dp.run('vex', tcpIn(), vex);
      dp.run('vin', tcpOut({ tcpFlags: TCP_RST }), vin);
      dp.run('vex', tcpIn(), vex);
      put(FlowVerdict.DENY, { deadlineNs: 1n });
      dp.run('vex', tcpIn(), vex);
      dp.run('vex', ip4(M, GW, { proto: TCP, src: PEER, dst: WL, fragField: 0x2000 }), vex);
      dp.writeConfig((c) => ({ ...c, traceUntil: 0n }));
      const recs = ring.consume().map(decodeTrace);
      const flowFlags = (fl: number) => fl & (TraceFlag.FLOW | TraceFlag.FLOW_EXPIRED | TraceFlag.FLOW_END);
      assert.deepEqual(
        recs.map((r) => [r.d.hook, r.d.action, r.d.v1, r.d.v2, flowFlags(r.d.flags)]),
        [
          [Hook.VEX, REDIRECT, VERDICT_COUNT, Verdict.FAST, TraceFlag.FLOW],
          [Hook.VIN, REDIRECT, Verdict.TO_DP, VERDICT_COUNT, TraceFlag.FLOW | TraceFlag.FLOW_END],
          [Hook.VEX, REDIRECT, Verdict.TO_DP, VERDICT_COUNT, TraceFlag.FLOW],
          [Hook.VEX, REDIRECT, Verdict.TO_DP, VERDICT_COUNT, TraceFlag.FLOW | TraceFlag.FLOW_EXPIRED],
          [Hook.VEX, REDIRECT, Verdict.TO_DP, VERDICT_COUNT, 0],
        ],
      );
      assert.equal(recs[0]!.d.target, vin, 'FAST goes to the peer');
    } finally {
      ring.close();
    }
  });
});

/** The CLI in a netns on a pin root: c() returns the result, ok() asserts exit 0 and returns stdout. */
function cliIn(netns: string, pins: string): { c: (args: string[]) => ReturnType<typeof cli>; ok: (args: string[]) => string } {
  const c = (args: string[]) => cli(['--netns', netns, '--bpffs', pins, ...args]);
  const ok = (args: string[]) => {
    const r = c(args);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  return { c, ok };
}

describe('flow offload: CLI on a loaded datapath (kernel)', function () {
  this.timeout(300000); // some 30 CLI runs: minutes in an emulated VM
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('flow allow/deny/list/revoke; pair mode and pair del clear the pair\'s flows; load --flows sizes the map once', function () {
    const t = makePairTopology({ subnet: '10.78.0' });
    const pins = makePinRoot();
    const { c, ok } = cliIn(t.enforcer.name, pins);
    try {
      ok(['load', '--flows', '1024']);
      assert.equal(Pins.with(pins, ['flows'], (p) => p.flows!.info.maxEntries), 1024);
      ok(['load']); // a reload keeps the pinned size
      const again = c(['load', '--flows', '2048']);
      assert.equal(again.code, 2);
      assert.match(again.stderr, /neuv_flows is pinned with 1024 entries.*needs neuv-bpf unload first/);
      assert.match(c(['load', '--flows', 'lots']).stderr, /--flows "lots" is not an integer \(expected 1\.\.67108864\)/);

      const p = JSON.parse(ok(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'fwd', '--json'])) as { id: number };
      const id = String(p.id);
      // The C example (examples/flow-offload.c): plain libbpf on the pinned map, the same key.
      sh(FLOW_OFFLOAD, ['--pin-root', pins, '--deny', '--timeout-ms', '60000', id, 'tcp', `${t.hostAddr}:41000`, `${t.wlAddr}:22`]);
      const fromC = JSON.parse(ok(['flow', 'list', '--json'])) as Array<{ protoName: string; verdict: string; a: { addr: string; port: number }; b: { addr: string; port: number }; expiresInMs: number }>;
      assert.deepEqual(fromC.map((f) => [f.protoName, f.verdict, f.a, f.b]), [['tcp', 'deny', { addr: t.hostAddr, port: 41000 }, { addr: t.wlAddr, port: 22 }]]);
      assert.ok(fromC[0]!.expiresInMs > 30000 && fromC[0]!.expiresInMs <= 60000, `its deadline is on the datapath clock (expires in ${fromC[0]!.expiresInMs} ms)`);
      sh(FLOW_OFFLOAD, ['--pin-root', pins, '--revoke', id, 'tcp', `${t.wlAddr}:22`, `${t.hostAddr}:41000`]);
      assert.deepEqual(JSON.parse(ok(['flow', 'list', '--json'])), [], 'revoked by the reverse direction');
      assert.match(ok(['flow', 'allow', '--id', id, '--proto', 'tcp', '--src', `${t.wlAddr}:80`, '--dst', `${t.hostAddr}:40000`, '--timeout', '30']), /^offloaded allow pair \d+ tcp 10\.78\.0\.1:40000 <-> 10\.78\.0\.2:80, expires in (29\.\d|30\.0)s$/m);
      ok(['flow', 'deny', '--id', id, '--proto', 'udp', '--src', `${t.hostAddr}:5000`, '--dst', `${t.wlAddr}:53`, '--idle', '5']);
      ok(['flow', 'allow', '--id', id, '--proto', 'icmp', '--src', t.hostAddr, '--dst', t.wlAddr]);
      const list = JSON.parse(ok(['flow', 'list', '--json'])) as Array<{ protoName: string; verdict: string; a: { addr: string; port: number } }>;
      assert.deepEqual(list.map((f) => [f.protoName, f.verdict]), [['icmp', 'allow'], ['tcp', 'allow'], ['udp', 'deny']]);
      assert.match(ok(['flow', 'list']), /3 flows offloaded \(map size 1024\)\n\s*ID\s+PROTO\s+A\s+B\s+VERDICT\s+EXPIRES\s+PACKETS\s+BYTES/);
      assert.match(ok(['flow', 'revoke', '--id', id, '--proto', 'icmp', '--src', t.wlAddr, '--dst', t.hostAddr]), /^revoked$/m);
      assert.match(ok(['flow', 'revoke', '--id', id, '--proto', 'icmp', '--src', t.wlAddr, '--dst', t.hostAddr]), /no such flow entry/);
      const bad = c(['flow', 'allow', '--id', '4242', '--proto', 'tcp', '--src', '1.2.3.4:1', '--dst', '1.2.3.5:2']);
      assert.equal(bad.code, 4);
      assert.match(bad.stderr, /no pair with port id 4242/);
      assert.equal(c(['flow', 'allow', '--id', id, '--proto', 'tcp', '--src', '1.2.3.4']).code, 2);

      // A mode switch clears the pair's flows (after the switch).
      const sw = JSON.parse(ok(['pair', 'mode', '--id', id, 'tap', '--json'])) as { flowsCleared?: number };
      assert.equal(sw.flowsCleared, 2);
      assert.deepEqual(JSON.parse(ok(['flow', 'list', '--json'])), []);
      // Offloading for a pair not in fwd works but says so.
      assert.match(ok(['flow', 'allow', '--id', id, '--proto', 'udp', '--src', `${t.wlAddr}:1`, '--dst', `${t.hostAddr}:2`]), /is in tap: entries only apply in fwd/);
      const same = JSON.parse(ok(['pair', 'mode', '--id', id, 'tap', '--json'])) as { flowsCleared?: number };
      assert.equal(same.flowsCleared, undefined, 'no switch, nothing cleared');
      assert.equal((JSON.parse(ok(['flow', 'list', '--json'])) as unknown[]).length, 1);
      ok(['flow', 'revoke', '--id', id, '--all']);
      ok(['pair', 'mode', '--id', id, 'fwd']);
      ok(['flow', 'allow', '--id', id, '--proto', 'udp', '--src', `${t.wlAddr}:1`, '--dst', `${t.hostAddr}:2`]);

      // show/stats: offloaded frames counted apart (fast, flow_drop); zero here, but present.
      const stats = JSON.parse(ok(['stats', '--json'])) as { pairs: Array<{ counters: Record<string, Record<string, { packets: number }>> }> };
      assert.deepEqual(Object.keys(stats.pairs[0]!.counters.to_wl!), ['to_dp', 'to_peer', 'copy', 'from_dp', 'drop', 'fast', 'flow_drop']);
      assert.match(ok(['stats']), /FAST\s+FLOW_DROP/);

      // pair del clears them too.
      const del = JSON.parse(ok(['pair', 'del', '--id', id, '--json'])) as { flowsCleared?: number };
      assert.equal(del.flowsCleared, 1);
      assert.deepEqual(JSON.parse(ok(['flow', 'list', '--json'])), []);
    } finally {
      c(['unload']);
    }
  });

  it('pins of a datapath loaded before flow offload (no neuv_flows): pairs work as before, flow commands say why not, load adds the maps', function () {
    const t = makePairTopology({ subnet: '10.78.1' });
    const pins = makePinRoot();
    const { c, ok } = cliIn(t.enforcer.name, pins);
    try {
      ok(['load']);
      for (const m of ['neuv_flows', 'neuv_flow_stats']) fs.rmSync(path.join(pins, m));
      const p = JSON.parse(ok(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'fwd', '--json'])) as { id: number };
      ok(['pair', 'mode', '--id', String(p.id), 'tap']);
      ok(['show']);
      ok(['stats']);
      const r = c(['flow', 'list']);
      assert.equal(r.code, 4);
      assert.match(r.stderr, /no neuv_flows under .*loaded by a version without flow offload \(run neuv-bpf load\)/);
      ok(['load']);
      assert.deepEqual(JSON.parse(ok(['flow', 'list', '--json'])), []);
      ok(['pair', 'del', '--id', String(p.id)]);
    } finally {
      c(['unload']);
    }
  });
});
