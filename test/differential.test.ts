/**
 * Differential test: the real programs under BPF_PROG_TEST_RUN against the
 * reference model (test/model.ts), on generated map states and frames.
 *
 * Each generated scenario is one map state (ports on the two real ingress
 * ifindexes plus a few elsewhere, ids pointing anywhere, stats entries for a
 * subset of ids, a DP port that exists or not) and a batch of frames across
 * the three hooks: truncated (14..20 bytes), IPv4, IPv6, VLAN-tagged, ARP,
 * random EtherTypes; broadcast, multicast, random and workload MACs, UCMACs
 * of existing and missing ids. For every frame the return value, every byte
 * of data_out, the per-pair counter deltas and the global reason deltas must
 * equal the model's. Any disagreement fails with the frame in hex.
 *
 * Flow offload: each scenario also has a few IPv4 flows (TCP, UDP, ICMP, GRE;
 * addresses and ports from small pools, so endpoints tie on the address and
 * order by port too) and neuv_flows entries for some of them: allow, deny,
 * no/unknown verdict; deadlines and idle timeouts clearly past (1 ns) or
 * clearly ahead (2^62), last use never, long ago or "in the future"; ids of
 * the pairs or others. One frame in three is a frame of such a flow, in
 * either direction, with TCP flags (SYN, ACK, FIN, RST), and sometimes IP
 * options, a fragment (MF or an offset), version 6 in an IPv4 EtherType, or
 * a TCP/UDP header cut short. After every frame the whole flow map (keys,
 * verdicts, timeouts, counters, whether last_ns is set) and the
 * neuv_flow_stats deltas must equal the model's; the model takes the
 * kernel's last_ns and the test's CLOCK_MONOTONIC reading as `now`.
 *
 * Size: NEUV_DIFF_FRAMES (default 100000) frames in batches of 500;
 * NEUV_FC_SEED replays a run.
 *
 * Not covered here (test_run cannot show it): where a redirect goes and
 * whether via redirect_peer, the TAP copy's bytes, skb->pkt_type; IPv4/IPv6
 * frames shorter than their L3 header (test_run refuses them; the generator
 * pads them) and frames under 14 bytes (covered by test/model.test.ts only).
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  ConfigFlag,
  Mode,
  REASON_NAMES,
  STATS_VERDICT_COUNT,
  VERDICT_NAMES,
  addFlowStats,
  decodeFlow,
  decodeFlowKey,
  emptyStats,
  encodeFlow,
  encodeFlowKey,
  formatIpv4,
  ipv4Bytes,
  u32Key,
} from '../src/layout';
import { formatMac, ucmac } from '../src/mac';
import { decide, flowKeyOfFrame, flowKeyString, flowsAfter, Hook, ModelFlow, ModelFlowKey, ModelState, PortEntry, retval } from './model';
import { coarseNs } from '../harness/clock';
import { ProgFixture, globalDelta, kernelAccepts, statsDelta } from '../harness/prog-fixture';
import { ip4, ICMP, TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, UDP } from '../harness/frames';
import { leakChecks, requireKernel } from './helpers';
import type { MapFd } from '../src/bpf';
import type { Stats } from '../src/layout';

const TOTAL = Number(process.env.NEUV_DIFF_FRAMES ?? 100_000);
const BATCH = 500;
const FAKE_IFINDEXES = [100, 101, 102, 103];

interface Sent {
  hook: Hook;
  ingress: number;
  frame: Uint8Array;
}
interface Scenario {
  state: ModelState;
  statsIds: number[];
  dpName: string;
  frames: Sent[];
  /** Every pair id of the scenario (flow counters are read for all of them). */
  idPool: number[];
}

/** A flow of a scenario: protocol and endpoints as the frame's source and destination. */
interface Tuple {
  proto: number;
  src: string;
  dst: string;
  sport: number;
  dport: number;
}

const FAR = 1n << 62n;
const RESEED = 100;
const GRE = 47;

const hexKey = (k: ModelFlowKey) => `${k.id}/${k.proto}/${formatIpv4(u32be(k.addrA))}:${k.portA}/${formatIpv4(u32be(k.addrB))}:${k.portB}`;
function u32be(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

/** neuv_flows key bytes of a model key (no normalisation here: the model's key is taken as it is). */
function kernelFlowKey(k: ModelFlowKey): Buffer {
  return encodeFlowKey({ id: k.id, proto: k.proto, addrA: formatIpv4(u32be(k.addrA)), portA: k.portA, addrB: formatIpv4(u32be(k.addrB)), portB: k.portB });
}

/** The model key of a tuple (the key the model derives from a frame of it). */
function modelKeyOf(id: number, t: Tuple): ModelFlowKey {
  const f = ip4(new Uint8Array(6), new Uint8Array(6), { proto: t.proto, src: t.src, dst: t.dst, sport: t.sport, dport: t.dport });
  return flowKeyOfFrame(id, f)!.key;
}

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function describeState(s: Scenario): string {
  const ports = [...s.state.ports.values()].map(
    (p) => `  port ${p.ifindex}: peer ${p.peerIfindex} role ${p.role} mode ${p.mode} flags 0x${p.flags.toString(16)} id 0x${p.id.toString(16)} mac ${formatMac(p.mac)}`,
  );
  const ids = [...s.state.ids].map(([id, e]) => `  id 0x${id.toString(16)}: vin ${e.vinIfindex} vex ${e.vexIfindex}`);
  const flows = [...(s.state.flows ?? new Map<string, ModelFlow>()).values()].map(
    (f) => `  flow ${hexKey(f.key)}: verdict ${f.verdict} deadline ${f.deadlineNs} idle ${f.idleNs} last ${f.lastNs} packets ${f.packets} bytes ${f.bytes}`,
  );
  return [
    `dp_ifindex ${s.state.dpIfindex} (${s.dpName}, clone ${s.state.cloneOk ? 'succeeds' : 'fails'}), config flags 0x${(s.state.configFlags ?? 0).toString(16)}, stats for [${s.statsIds.map((i) => '0x' + i.toString(16)).join(', ')}]`,
    ...ports,
    ...ids,
    ...flows,
  ].join('\n');
}

describe('differential: kernel vs model', function () {
  let dp: ProgFixture;
  this.timeout(300_000);

  before(function () {
    requireKernel(this);
    dp = ProgFixture.create();
  });
  leakChecks({ perTest: false });

  it(`agrees on ${TOTAL} generated frames`, () => {
    const ingresses = [dp.lo, dp.veth];
    const ifPool = [...ingresses, ...FAKE_IFINDEXES, 999];
    const dps: Array<[string, number, boolean]> = [
      ['lo', dp.lo, true],
      ['veth', dp.veth, true],
      ['absent', dp.absent, false],
      ['0 = NEUV_VBR_IFINDEX, absent', 0, false],
    ];

    const unicastMac = fc.uint8Array({ minLength: 6, maxLength: 6 }).map((m) => {
      m[0] = m[0]! & 0xfe;
      return m;
    });
    const anyMac = fc.uint8Array({ minLength: 6, maxLength: 6 });
    const mcastMac = fc.uint8Array({ minLength: 3, maxLength: 3 }).map((t) => Uint8Array.from([0x01, 0x00, 0x5e, t[0]! & 0x7f, t[1]!, t[2]!]));
    const bcast = Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    const neuvPrefixed = fc.uint8Array({ minLength: 2, maxLength: 2 }).map((t) => Uint8Array.from([0x4e, 0x65, 0x75, 0x56, t[0]!, t[1]!]));
    const nearPrefix = fc
      .tuple(fc.integer({ min: 0, max: 3 }), fc.uint8Array({ minLength: 6, maxLength: 6 }))
      .map(([i, t]) => {
        const m = Uint8Array.from([0x4e, 0x65, 0x75, 0x56, t[4]!, t[5]!]);
        m[i] = m[i]! ^ (1 << (t[0]! & 7)); // one bit off in the prefix
        return m;
      });

    const modeArb = fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom(Mode.FWD, Mode.TAP, Mode.BYPASS) },
      { weight: 2, arbitrary: fc.constantFrom(Mode.DROP, Mode.NONE, 5, 200) },
    );
    const flagsArb = fc.oneof({ weight: 8, arbitrary: fc.constantFrom(0, 1, 2, 3, 8, 10, 11) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffffffff }) });

    const addr = fc.constantFrom('10.0.0.1', '10.0.0.2', '10.0.1.1', '192.168.7.9', '10.0.0.2');
    const portN = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(80, 443, 8080, 53, 1234, 40000) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 0xffff }) });
    const tupleArb = fc.record({
      proto: fc.oneof({ weight: 5, arbitrary: fc.constant(TCP) }, { weight: 3, arbitrary: fc.constant(UDP) }, { weight: 1, arbitrary: fc.constantFrom(ICMP, GRE) }),
      src: addr,
      dst: addr,
      sport: portN,
      dport: portN,
    });

    const stateArb = fc
      .record({
        idPool: fc.uniqueArray(fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.constantFrom(0, 1, 0xff, 0x100, 0xffff)), { minLength: 1, maxLength: 4 }),
        macPool: fc.array(fc.oneof({ weight: 5, arbitrary: unicastMac }, { weight: 1, arbitrary: anyMac }), { minLength: 1, maxLength: 3 }),
        dpChoice: fc.integer({ min: 0, max: dps.length - 1 }),
      })
      .chain(({ idPool, macPool, dpChoice }) => {
        const entry = (ifindex: number, roleHint: 1 | 2) =>
          fc
            .record({
              peerIfindex: fc.constantFrom(...ifPool),
              flags: flagsArb,
              id: fc.constantFrom(...idPool),
              role: fc.oneof({ weight: 5, arbitrary: fc.constant(roleHint) }, { weight: 1, arbitrary: fc.constantFrom<1 | 2>(1, 2) }),
              // The two real ports lean to FWD, where flow offload applies.
              mode: FAKE_IFINDEXES.includes(ifindex) ? modeArb : fc.oneof({ weight: 1, arbitrary: fc.constant(Mode.FWD) }, { weight: 2, arbitrary: modeArb }),
              mac: fc.constantFrom(...macPool),
            })
            .map((e): PortEntry => ({ ifindex, ...e }));
        const optEntry = (ifindex: number, roleHint: 1 | 2) => fc.option(entry(ifindex, roleHint), { freq: 6, nil: undefined });
        return fc.record({
          idPool: fc.constant(idPool),
          macPool: fc.constant(macPool),
          dpChoice: fc.constant(dpChoice),
          real: fc.tuple(optEntry(ingresses[0]!, 1), optEntry(ingresses[1]!, 2)),
          fake: fc.tuple(...FAKE_IFINDEXES.map((i) => optEntry(i, (i % 2 ? 2 : 1) as 1 | 2))),
          ids: fc.tuple(
            ...idPool.map(() =>
              fc.option(fc.record({ vinIfindex: fc.constantFrom(...ifPool), vexIfindex: fc.constantFrom(...ifPool) }), { freq: 5, nil: undefined }),
            ),
          ),
          statsIds: fc.subarray(idPool),
          tuples: fc.array(tupleArb, { minLength: 2, maxLength: 6 }),
        });
      })
      .chain((g) => {
        const realIds = [...g.real].filter((e): e is PortEntry => e !== undefined).map((e) => e.id);
        const idChoice = realIds.length ? fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...realIds) }, { weight: 1, arbitrary: fc.constantFrom(...g.idPool) }) : fc.constantFrom(...g.idPool);
        const flowArb = fc.record({
          id: idChoice,
          verdict: fc.oneof({ weight: 6, arbitrary: fc.constant(1) }, { weight: 3, arbitrary: fc.constant(2) }, { weight: 1, arbitrary: fc.constantFrom(0, 3, 255) }),
          deadlineNs: fc.oneof({ weight: 6, arbitrary: fc.constant(0n) }, { weight: 2, arbitrary: fc.constantFrom(FAR, (1n << 64n) - 1n) }, { weight: 2, arbitrary: fc.constant(1n) }),
          idleNs: fc.oneof({ weight: 6, arbitrary: fc.constant(0n) }, { weight: 2, arbitrary: fc.constant(FAR) }, { weight: 2, arbitrary: fc.constant(1n) }),
          lastNs: fc.constantFrom(0n, 0n, 1n, FAR),
          packets: fc.constantFrom(0n, 7n),
          bytes: fc.constantFrom(0n, 700n),
        });
        // Per tuple: no entry, or one (under some id). Another tuple may name the same flow reversed.
        // neuv_config.flags: NEUV_CFG_FLOWS mostly set (entries apply), sometimes not (the programs do not look).
        const flowsOn = fc.oneof({ weight: 5, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) });
        return fc
          .tuple(fc.tuple(...g.tuples.map(() => fc.option(flowArb, { freq: 3, nil: undefined }))), flowsOn)
          .map(([flowEntries, on]) => ({ ...g, flowEntries, configFlags: on ? ConfigFlag.FLOWS : 0 }));
      });

    const scenarioArb = stateArb.chain((g) => {
      const [dpName, dpIfindex, cloneOk] = dps[g.dpChoice]!;
      const ports = new Map<number, PortEntry>();
      for (const e of [...g.real, ...g.fake]) if (e) ports.set(e.ifindex, e);
      const ids = new Map<number, { vinIfindex: number; vexIfindex: number }>();
      g.idPool.forEach((id, i) => {
        const e = g.ids[i];
        if (e) ids.set(id, e);
      });
      const flows = new Map<string, ModelFlow>();
      g.tuples.forEach((t, i) => {
        const e = g.flowEntries[i];
        if (!e) return;
        const key = modelKeyOf(e.id, t);
        flows.set(flowKeyString(key), { key, verdict: e.verdict, deadlineNs: e.deadlineNs, idleNs: e.idleNs, lastNs: e.lastNs, packets: e.packets, bytes: e.bytes });
      });
      const state: ModelState = { ports, ids, dpIfindex, cloneOk, flows, configFlags: g.configFlags };
      const stateMacs = [...g.macPool, ...[...ports.values()].map((p) => p.mac)];

      const mac = fc.oneof(
        { weight: 6, arbitrary: fc.constantFrom(...stateMacs) },
        { weight: 4, arbitrary: fc.constantFrom(...g.idPool).map(ucmac) },
        { weight: 2, arbitrary: neuvPrefixed },
        { weight: 1, arbitrary: nearPrefix },
        { weight: 1, arbitrary: fc.constant(bcast) },
        { weight: 1, arbitrary: mcastMac },
        { weight: 2, arbitrary: unicastMac },
        { weight: 1, arbitrary: anyMac },
      );
      const etherType = fc.oneof(
        { weight: 8, arbitrary: fc.constantFrom(0x0800, 0x86dd) },
        { weight: 3, arbitrary: fc.constantFrom(0x8100, 0x0806, 0x88a8, 0x0800 ^ 0x0100, 0x86dc) },
        { weight: 2, arbitrary: fc.integer({ min: 0, max: 0xffff }) },
      );
      const payload = fc.oneof(
        { weight: 2, arbitrary: fc.uint8Array({ maxLength: 6 }) }, // truncated: 14..20 bytes in all
        { weight: 6, arbitrary: fc.uint8Array({ minLength: 20, maxLength: 90 }) },
      );
      const sent = fc
        .record({
          hook: fc.constantFrom<Hook>('vin', 'vex', 'vbr'),
          // Mostly the port whose entry was generated for this hook's role (lo for vin, veth for vex).
          otherPort: fc.integer({ min: 0, max: 5 }).map((n) => n === 0),
          // One frame in three aims at the rule: the workload's MAC where the hook looks for it.
          aim: fc.integer({ min: 0, max: 2 }).map((n) => n === 0),
          da: mac,
          sa: mac,
          etherType,
          payload,
        })
        .map(({ hook, otherPort, aim, da, sa, etherType: et, payload: p }): Sent => {
          const ingress = ingresses[(hook === 'vex' ? 1 : 0) ^ (otherPort ? 1 : 0)]!;
          const f = new Uint8Array(14 + p.length);
          f.set(da, 0);
          f.set(sa, 6);
          f[12] = et >> 8;
          f[13] = et & 0xff;
          f.set(p, 14);
          const entry = ports.get(ingress);
          if (aim && entry && hook !== 'vbr') f.set(entry.mac, hook === 'vex' ? 0 : 6);
          // test_run refuses IP frames shorter than their L3 header: pad those with zeros.
          const min = et === 0x0800 ? 34 : et === 0x86dd ? 54 : 14;
          const frame = f.length >= min ? f : Uint8Array.from([...f, ...new Uint8Array(min - f.length)]);
          return { hook, ingress, frame };
        });
      // Frames of the scenario's flows, aimed at the rule (the workload's MAC where the hook looks).
      const flowSent = fc
        .record({
          hook: fc.constantFrom<Hook>('vin', 'vex'),
          otherPort: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
          aim: fc.integer({ min: 0, max: 9 }).map((n) => n !== 0),
          tuple: fc.constantFrom(...g.tuples),
          reverse: fc.boolean(),
          other: fc.oneof({ weight: 4, arbitrary: unicastMac }, { weight: 1, arbitrary: mac }),
          tcpFlags: fc.oneof({ weight: 6, arbitrary: fc.constantFrom(TCP_ACK, TCP_ACK | 0x08, TCP_SYN) }, { weight: 3, arbitrary: fc.constantFrom(TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK, TCP_FIN) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
          // Mostly a plain header; sometimes what the datapath must not build a key from.
          shape: fc.oneof(
            { weight: 12, arbitrary: fc.constant('plain') },
            { weight: 1, arbitrary: fc.constant('options') },
            { weight: 1, arbitrary: fc.constant('mf') },
            { weight: 1, arbitrary: fc.constant('offset') },
            { weight: 1, arbitrary: fc.constant('df') },
            { weight: 1, arbitrary: fc.constant('v6nibble') },
            { weight: 1, arbitrary: fc.constant('ihl<5') },
            { weight: 1, arbitrary: fc.constant('short-l4') },
            { weight: 1, arbitrary: fc.constant('big-ihl') },
          ),
          payload: fc.integer({ min: 0, max: 40 }),
        })
        .map(({ hook, otherPort, aim, tuple, reverse, other, tcpFlags, shape, payload }): Sent => {
          const ingress = ingresses[(hook === 'vex' ? 1 : 0) ^ (otherPort ? 1 : 0)]!;
          const t = reverse ? { ...tuple, src: tuple.dst, dst: tuple.src, sport: tuple.dport, dport: tuple.sport } : tuple;
          const entry = ports.get(ingress);
          const m = aim && entry ? entry.mac : other;
          const [da, sa] = hook === 'vex' ? [m, other] : [other, m];
          const o = { ...t, tcpFlags, payload };
          let f: Buffer;
          switch (shape) {
            case 'options': f = ip4(da, sa, { ...o, ihl: 7 }); break;
            case 'mf': f = ip4(da, sa, { ...o, fragField: 0x2000 }); break;
            case 'offset': f = ip4(da, sa, { ...o, fragField: 0x0001 + (payload & 0x1f) }); break;
            case 'df': f = ip4(da, sa, { ...o, fragField: 0x4000 }); break;
            case 'v6nibble': f = ip4(da, sa, { ...o, version: 6 }); break;
            case 'ihl<5': f = ip4(da, sa, { ...o, ihl: 4 }); break;
            // A TCP/UDP header cut before its flags (TCP) or ports: 34 + 1..13 bytes.
            case 'short-l4': f = ip4(da, sa, { ...o, payload: 0, truncate: 34 + 1 + (payload % (t.proto === TCP ? 13 : 3)) }); break;
            case 'big-ihl': f = ip4(da, sa, { ...o, ihl: 15, payload: 0, truncate: 14 + 20 + (payload % 40) }); break;
            default: f = ip4(da, sa, o);
          }
          return { hook, ingress, frame: f.length >= 34 ? f : Buffer.concat([f, Buffer.alloc(34 - f.length)]) };
        });
      const anySent = fc.oneof({ weight: 1, arbitrary: sent }, { weight: 1, arbitrary: flowSent });
      return fc.array(anySent, { minLength: BATCH, maxLength: BATCH }).map((frames): Scenario => {
        const sc: Scenario = { state, statsIds: g.statsIds, dpName, frames, idPool: g.idPool };
        // fast-check prints this instead of 500 frames; the failing frame is in the error.
        Object.defineProperty(sc, fc.toStringMethod, { value: () => `scenario of ${frames.length} frames on:\n${describeState(sc)}` });
        return sc;
      });
    });

    const flowsMap = dp.obj.map('neuv_flows');
    const flowStatsMap = dp.obj.map('neuv_flow_stats');
    let frames = 0;
    const coverage = new Map<string, number>();
    const runs = Math.ceil(TOTAL / BATCH);
    const seed = process.env.NEUV_FC_SEED ? Number(process.env.NEUV_FC_SEED) : undefined;

    fc.assert(
      fc.property(scenarioArb, (sc) => {
        dp.seed(sc.state, sc.statsIds);
        for (const m of [flowsMap, flowStatsMap]) for (const k of m.keys()) m.delete(k);
        // The DP offloads the scenario's flows again every RESEED frames (deleted entries come back, counters restart).
        const reseed = () => {
          for (const k of flowsMap.keys()) flowsMap.delete(k);
          for (const f of sc.state.flows!.values()) flowsMap.update(kernelFlowKey(f.key), encodeFlow(f));
          return new Map(sc.state.flows);
        };
        let flows = reseed();
        let n = 0;
        const readAll = () => new Map(sc.statsIds.map((id) => [id, dp.readStats(id)!] as [number, Stats]));
        const readFlowStats = () => new Map(sc.idPool.map((id) => [id, readFlowStatsOf(flowStatsMap, id)] as [number, Stats]));
        let sBefore = readAll();
        let fsBefore = readFlowStats();
        let gBefore = dp.readGlobal();
        for (const { hook, ingress, frame } of sc.frames) {
          assert.ok(kernelAccepts(frame));
          if (++n % RESEED === 0) flows = reseed();
          // The program reads the coarse clock (CLOCK_MONOTONIC at the last tick): somewhere between the
          // coarse clock read before the run (it never goes back) and CLOCK_MONOTONIC at its end. Expiry only
          // grows with the clock, so the model at the two ends covers every reading: the kernel must agree
          // with one of them (both the same but near a deadline).
          const nowLo = coarseNs();
          const where = (now: bigint) =>
            `${hook} on ifindex ${ingress} at ${now} ns, frame ${hex(frame)}\nstate:\n${describeState({ ...sc, state: { ...sc.state, flows, now } })}`;
          let got;
          try {
            got = dp.run(hook, frame, ingress);
          } catch (e) {
            throw new Error(`test_run failed (${(e as Error).message}): ${where(nowLo)}`);
          }
          const nowHi = process.hrtime.bigint();
          frames++;
          const sAfter = readAll();
          const fsAfter = readFlowStats();
          const gAfter = dp.readGlobal();
          const gotFlows = readFlows(flowsMap, flows);
          const disagreement = (now: bigint) => {
            const state: ModelState = { ...sc.state, flows, now };
            const want = decide(state, hook, ingress, frame);
            const problems: string[] = [];
            if (got.retval !== retval(want.ret)) problems.push(`retval ${got.retval}, model ${retval(want.ret)} (${want.ret})`);
            if (hex(got.dataOut) !== hex(want.frameOut)) problems.push(`data_out ${hex(got.dataOut)}\n   model   ${hex(want.frameOut)}`);
            const wantCounts = (id: number, inStats: boolean) =>
              want.stats && want.stats.id === id
                ? want.stats.verdicts.filter((v) => (v < STATS_VERDICT_COUNT) === inStats).map((v) => `${want.stats!.dir}.${v}:1/${frame.length}`).sort()
                : [];
            for (const id of sc.statsIds) {
              const d = statsDelta(sBefore.get(id)!, sAfter.get(id)!).sort();
              const w = wantCounts(id, true);
              if (d.join() !== w.join()) problems.push(`neuv_stats[0x${id.toString(16)}] moved [${d.join(' ')}], model [${w.join(' ')}]`);
            }
            for (const id of sc.idPool) {
              const d = statsDelta(fsBefore.get(id)!, fsAfter.get(id)!).sort();
              const w = wantCounts(id, false);
              if (d.join() !== w.join()) problems.push(`neuv_flow_stats[0x${id.toString(16)}] moved [${d.join(' ')}], model [${w.join(' ')}]`);
            }
            const gd = globalDelta(gBefore, gAfter);
            const gw = want.reason ? [`${want.reason}:1`] : [];
            if (gd.join() !== gw.join()) problems.push(`neuv_global moved [${gd.join(' ')}], model [${gw.join(' ')}] (index:count)`);
            // The flow map: the same entries with the same values; last_ns as the kernel wrote it (within the run's clock range).
            const wantFlows = flowsAfter(state, want, frame.length);
            const fk = (m: Map<string, ModelFlow>) => [...m.keys()].sort().join(' ');
            if (fk(gotFlows) !== fk(wantFlows)) problems.push(`neuv_flows holds [${fk(gotFlows)}], model [${fk(wantFlows)}]`);
            else {
              for (const [k, w] of wantFlows) {
                const g2 = gotFlows.get(k)!;
                const same = g2.verdict === w.verdict && g2.deadlineNs === w.deadlineNs && g2.idleNs === w.idleNs && g2.packets === w.packets && g2.bytes === w.bytes;
                const touched = want.flow?.op === 'hit' && want.flow.key === k;
                const lastOk = touched ? g2.lastNs >= nowLo && g2.lastNs <= nowHi : g2.lastNs === w.lastNs;
                if (!same || !lastOk) {
                  problems.push(`neuv_flows[${k}] is verdict ${g2.verdict} deadline ${g2.deadlineNs} idle ${g2.idleNs} last ${g2.lastNs} packets ${g2.packets} bytes ${g2.bytes}; model verdict ${w.verdict} deadline ${w.deadlineNs} idle ${w.idleNs} last ${touched ? `in ${nowLo}..${nowHi}` : w.lastNs} packets ${w.packets} bytes ${w.bytes}`);
                }
              }
            }
            return { want, problems };
          };
          let now = nowHi;
          let { want, problems } = disagreement(nowHi);
          if (problems.length) {
            const lo = disagreement(nowLo);
            if (!lo.problems.length) ({ want, problems, now } = { ...lo, now: nowLo });
          }
          const cls = `${hook} ${want.ret}${want.stats ? ' ' + want.stats.verdicts.map((v) => VERDICT_NAMES[v]).join('+') : ''}${want.reason ? ' ' + REASON_NAMES[want.reason] : ''}`;
          coverage.set(cls, (coverage.get(cls) ?? 0) + 1);
          if (want.flow) {
            const c = `flow ${want.flow.op}${want.flow.op === 'delete' ? (flowExpiredNow(flows, want.flow.key, now) ? ' expired' : ' fin/rst') : ''}`;
            coverage.set(c, (coverage.get(c) ?? 0) + 1);
          }
          if (problems.length) throw new Error(`kernel and model disagree (model at the run's end; also at the coarse clock before its start):\n - ${problems.join('\n - ')}\n${where(nowHi)}`);
          flows = gotFlows; // checked equal; carries the kernel's last_ns forward
          sBefore = sAfter;
          fsBefore = fsAfter;
          gBefore = gAfter;
        }
        // The program never creates stats entries.
        const keys = dp.stats
          .keys()
          .map((k) => k.readUInt32LE(0))
          .sort((a, b) => a - b);
        assert.deepEqual(keys, [...sc.statsIds].sort((a, b) => a - b), 'neuv_stats keys changed');
      }),
      // No shrinking: a batch stops at its first disagreement, which the error shows in full.
      { numRuns: runs, seed, endOnFailure: true },
    );
    assert.ok(frames >= TOTAL, `only ${frames} frames ran`);
    // The generator must keep reaching every outcome, or a passing run proves little.
    if (TOTAL >= 50_000) {
      const required = [
        ...['vin', 'vex'].flatMap((h) =>
          [
            'redirect to_dp',
            'redirect copy+to_peer',
            'redirect to_peer',
            'redirect to_peer clone_failed',
            'pass pass_no_port',
            'shot drop drop_mode',
            'shot drop drop_role',
          ].map((c) => `${h} ${c}`),
        ),
        ...['pass pass_no_pair', 'redirect from_dp', 'shot drop drop_inject', 'shot drop drop_mode', 'shot drop drop_no_peer'].map((c) => `vbr ${c}`),
        ...['vin', 'vex'].flatMap((h) => ['redirect fast', 'shot flow_drop'].map((c) => `${h} ${c}`)),
        'flow hit',
        'flow delete expired',
        'flow delete fin/rst',
      ];
      const thin = required.filter((c) => (coverage.get(c) ?? 0) < 100).map((c) => `${c}: ${coverage.get(c) ?? 0}`);
      assert.deepEqual(thin, [], 'outcomes the generator reached fewer than 100 times');
    }
    if (process.env.NEUV_DIFF_COVERAGE === '1') {
      // eslint-disable-next-line no-console
      console.log([...coverage].sort((a, b) => a[0].localeCompare(b[0])).map(([k, n]) => `      ${String(n).padStart(6)}  ${k}`).join('\n'));
    }
  });
});

/** neuv_flow_stats[id] summed over CPUs (zeros when there is no entry: the program creates it at the first count). */
function readFlowStatsOf(m: MapFd, id: number): Stats {
  const s = emptyStats();
  const v = m.lookup(u32Key(id));
  if (v) for (const c of m.perCpuValues(v)) addFlowStats(s, c);
  return s;
}

/** The kernel's flow map as model entries (keys as the model writes them; `known` gives the model key objects). */
function readFlows(m: MapFd, known: Map<string, ModelFlow>): Map<string, ModelFlow> {
  const out = new Map<string, ModelFlow>();
  for (const [kb, vb] of m.entries()) {
    const k = decodeFlowKey(kb);
    const key: ModelFlowKey = { ...k, addrA: ipv4Bytes(k.addrA).readUInt32BE(0), addrB: ipv4Bytes(k.addrB).readUInt32BE(0) };
    const ks = flowKeyString(key);
    out.set(ks, { key: known.get(ks)?.key ?? key, ...decodeFlow(vb) });
  }
  return out;
}

function flowExpiredNow(flows: Map<string, ModelFlow>, key: string, now: bigint): boolean {
  const e = flows.get(key);
  if (!e) return false;
  return (e.deadlineNs !== 0n && now >= e.deadlineNs) || (e.idleNs !== 0n && e.lastNs !== 0n && now > e.lastNs && now - e.lastNs >= e.idleNs);
}
