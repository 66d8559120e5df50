/**
 * bpf/neuv.bpf.c under BPF_PROG_TEST_RUN: one case per row of the docs/datapath.md
 * section 3 tables and per mode. Each case seeds the maps, runs one frame and
 * checks the return value, every byte of data_out, the per-pair counters
 * (which direction and verdict moved, by one packet and the frame's bytes)
 * and the global reason counters. Expectations are written out by hand here;
 * test/differential.test.ts compares against the model instead.
 */
import assert from 'node:assert/strict';
import * as os from 'node:os';
import { progInfo } from '../src/bpf';
import { Dir, emptyStats, encodeStats, Mode, PortFlag, Reason, u32Key, Verdict } from '../src/layout';
import { ucmac } from '../src/mac';
import { ProgFixture, globalDelta, statsDelta } from '../harness/prog-fixture';
import { arp, BCAST, frame, GW, ID, ID2, ipv4, ipv6, M, M2, MCAST, OTHER, twoPairs, vlan, withMac } from '../harness/frames';
import { leakChecks, requireKernel } from './helpers';

const PASS = -1; // TC_ACT_UNSPEC: passed on to the next filter, else the stack
const SHOT = 2;
const REDIRECT = 7;

interface Expect {
  ret: number;
  /** data_out; the input frame when omitted. */
  out?: Buffer;
  /** The pair counters that must move (each by 1 packet and the frame's length). */
  counts?: { id: number; dir: number; verdicts: number[] };
  reason?: number;
}

/**
 * Verifier budget per program (processed instructions), per kernel: the count
 * is the verifier's own and older verifiers prune fewer states. On 6.18 today
 * vin 1520, vex 1554, vbr 898; on 6.1.0-57 vin 2718, vex 2204, vbr 1128 (printed
 * by the test).
 */
function verifiedInsnsBudget(release = os.release()): number {
  const [major, minor] = release.split('.').map(Number) as [number, number];
  return major > 6 || (major === 6 && minor >= 6) ? 2000 : 3000;
}

describe('datapath (BPF_PROG_TEST_RUN)', function () {
  let dp: ProgFixture;
  let vin: number;
  let vex: number;
  const vin2 = 31;
  const vex2 = 32;

  before(function () {
    requireKernel(this);
    dp = ProgFixture.create();
    vin = dp.lo;
    vex = dp.veth;
  });
  leakChecks({ perTest: false });

  /** Seeds two pairs; pair 1 (vin = lo, vex = veth end) in `mode`, the DP port is lo unless said otherwise. */
  function seed(mode: number, opts: { flags?: number; mode2?: number; dp?: number; stats?: number[] } = {}) {
    const st = twoPairs({ vin, vex, vin2, vex2, dp: dp.lo }, mode, opts);
    dp.seed(st, opts.stats ?? [ID, ID2]);
    return st;
  }

  function check(hook: 'vin' | 'vex' | 'vbr', ingress: number, f: Buffer, e: Expect): void {
    const ids = [ID, ID2];
    const sBefore = ids.map((id) => dp.readStats(id));
    const gBefore = dp.readGlobal();
    const r = dp.run(hook, f, ingress);
    const what = `${hook} on ifindex ${ingress}, frame ${f.toString('hex')}`;
    assert.equal(r.retval, e.ret, `retval: ${what}`);
    assert.equal(r.dataOut.toString('hex'), (e.out ?? f).toString('hex'), `data_out: ${what}`);
    ids.forEach((id, i) => {
      const before = sBefore[i];
      const after = dp.readStats(id);
      if (!before || !after) {
        assert.equal(after, before, `neuv_stats[${id}] appeared or vanished: ${what}`);
        return;
      }
      const want = e.counts && e.counts.id === id ? e.counts.verdicts.map((v) => `${e.counts!.dir}.${v}:1/${f.length}`) : [];
      assert.deepEqual(statsDelta(before, after).sort(), want.sort(), `neuv_stats[${id}] dir.verdict:packets/bytes: ${what}`);
    });
    assert.deepEqual(globalDelta(gBefore, dp.readGlobal()), e.reason ? [`${e.reason}:1`] : [], `neuv_global reasons: ${what}`);
  }

  const toPeer = (dir: number, id = ID): Expect => ({ ret: REDIRECT, counts: { id, dir, verdicts: [Verdict.TO_PEER] } });

  it(`every program verifies within its budget (${verifiedInsnsBudget()} instructions on this kernel)`, function () {
    const [major, minor] = os.release().split('.').map(Number) as [number, number];
    if (major < 5 || (major === 5 && minor < 16)) {
      // eslint-disable-next-line no-console
      console.log(`      (skipped: bpf_prog_info.verified_insns needs kernel >= 5.16, this is ${os.release()})`);
      this.skip();
    }
    const budget = verifiedInsnsBudget();
    const counts = Object.entries(dp.progs).map(([name, fd]) => [name, progInfo(fd).verifiedInsns] as const);
    const seen = counts.map(([name, n]) => `${name} ${n}`).join(', ');
    // eslint-disable-next-line no-console
    console.log(`      verified instructions on ${os.release()}: ${seen} (budget ${budget})`);
    for (const [name, n] of counts) assert.ok(n > 0 && n <= budget, `${name}: ${n} verified instructions (budget ${budget}; ${seen})`);
  });

  describe('FWD', () => {
    beforeEach(() => seed(Mode.FWD));

    it('vex ingress: IPv4, unicast, DA == M -> DA := UCMAC, to vbr-neuv', () => {
      const f = ipv4(M, GW);
      check('vex', vex, f, { ret: REDIRECT, out: withMac(f, 0, ucmac(ID)), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.TO_DP] } });
    });

    it('vex ingress: anything else -> to vin unchanged', () => {
      for (const f of [
        arp(BCAST, GW),
        arp(M, GW),
        ipv4(MCAST, GW),
        ipv4(BCAST, GW),
        ipv6(M, GW),
        ipv4(OTHER, GW),
        vlan(M, GW),
        ipv4(ucmac(ID2), GW),
        frame(M, GW, 0x0806, 0), // 14 bytes
        frame(M, GW, 0x88cc, 3),
      ]) {
        check('vex', vex, f, toPeer(Dir.TO_WL));
      }
    });

    it('vin ingress: IPv4, unicast DA, SA == M -> SA := UCMAC, to vbr-neuv', () => {
      for (const da of [GW, OTHER]) {
        const f = ipv4(da, M);
        check('vin', vin, f, { ret: REDIRECT, out: withMac(f, 6, ucmac(ID)), counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.TO_DP] } });
      }
    });

    it('vin ingress: anything else -> to vex unchanged', () => {
      for (const f of [
        arp(BCAST, M),
        arp(GW, M),
        ipv4(BCAST, M),
        ipv4(MCAST, M),
        ipv6(GW, M),
        ipv4(GW, OTHER),
        ipv4(GW, ucmac(ID2)),
        ipv4(GW, ucmac(ID)),
        vlan(GW, M),
        frame(GW, M, 0x0806, 0),
      ]) {
        check('vin', vin, f, toPeer(Dir.FROM_WL));
      }
    });

    it('vbr-neuv ingress: DA == UCMAC of a pair -> DA := M, to that pair vin', () => {
      const f = ipv4(ucmac(ID), GW);
      check('vbr', dp.lo, f, { ret: REDIRECT, out: withMac(f, 0, M), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] } });
      const g = ipv4(ucmac(ID2), GW);
      check('vbr', dp.lo, g, { ret: REDIRECT, out: withMac(g, 0, M2), counts: { id: ID2, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] } });
    });

    it('vbr-neuv ingress: SA == UCMAC of a pair -> SA := M, to that pair vex', () => {
      const f = ipv4(GW, ucmac(ID));
      check('vbr', dp.lo, f, { ret: REDIRECT, out: withMac(f, 6, M), counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.FROM_DP] } });
      const g = arp(BCAST, ucmac(ID2));
      check('vbr', dp.lo, g, { ret: REDIRECT, out: withMac(g, 6, M2), counts: { id: ID2, dir: Dir.FROM_WL, verdicts: [Verdict.FROM_DP] } });
    });

    it('vbr-neuv ingress: DA is checked before SA', () => {
      const f = ipv4(ucmac(ID), ucmac(ID2));
      check('vbr', dp.lo, f, { ret: REDIRECT, out: withMac(f, 0, M), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] } });
    });

    it('vbr-neuv ingress: matching no pair -> to the stack (PASS_NO_PAIR)', () => {
      for (const f of [
        ipv4(GW, OTHER),
        arp(BCAST, OTHER),
        ipv4(GW, ucmac(0x4242)),
        ipv4(ucmac(0x4242), ucmac(ID)), // unknown DA id: the SA is not looked at
        ipv4(Buffer.from([0x4e, 0x65, 0x75, 0x57, 0x12, 0x34]), GW),
        frame(GW, OTHER, 0x0806, 0),
      ]) {
        check('vbr', dp.lo, f, { ret: PASS, reason: Reason.PASS_NO_PAIR });
      }
    });

    it('vbr-neuv ingress: an id whose port entry is gone -> drop (DROP_NO_PEER)', () => {
      dp.ports.delete(u32Key(vin));
      const f = ipv4(ucmac(ID), GW);
      check('vbr', dp.lo, f, { ret: SHOT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_NO_PEER });
    });
  });

  describe('TAP', () => {
    it('vex ingress: IPv4, unicast, DA == M -> original to vin, copy to vbr-neuv (COPY + TO_PEER)', () => {
      seed(Mode.TAP);
      const f = ipv4(M, GW);
      check('vex', vex, f, { ret: REDIRECT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] } });
    });

    it('vin ingress: IPv4, unicast DA, SA == M -> original to vex, copy to vbr-neuv (COPY + TO_PEER)', () => {
      seed(Mode.TAP, { dp: dp.veth });
      const f = ipv4(GW, M);
      check('vin', vin, f, { ret: REDIRECT, counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] } });
    });

    it('a clone to a missing DP port fails: original still forwarded (CLONE_FAILED, no COPY)', () => {
      for (const d of [dp.absent, 0 /* NEUV_VBR_IFINDEX, absent in the test netns */]) {
        seed(Mode.TAP, { dp: d });
        const f = ipv4(M, GW);
        check('vex', vex, f, { ...toPeer(Dir.TO_WL), reason: Reason.CLONE_FAILED });
      }
    });

    it('anything else -> to the peer unchanged, no copy', () => {
      seed(Mode.TAP);
      for (const f of [arp(BCAST, GW), ipv6(M, GW), ipv4(OTHER, GW), vlan(M, GW)]) check('vex', vex, f, toPeer(Dir.TO_WL));
      for (const f of [arp(BCAST, M), ipv4(BCAST, M), ipv6(GW, M), ipv4(GW, OTHER)]) check('vin', vin, f, toPeer(Dir.FROM_WL));
    });

    it('vbr-neuv ingress: DA == UCMAC or SA == UCMAC -> drop (DROP_INJECT)', () => {
      seed(Mode.TAP);
      check('vbr', dp.lo, ipv4(ucmac(ID), GW), { ret: SHOT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_INJECT });
      check('vbr', dp.lo, ipv4(GW, ucmac(ID)), { ret: SHOT, counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_INJECT });
    });
  });

  describe('BYPASS', () => {
    beforeEach(() => seed(Mode.BYPASS));
    it('vex and vin ingress: everything to the peer unchanged', () => {
      for (const f of [ipv4(M, GW), arp(BCAST, GW), ipv6(M, GW)]) check('vex', vex, f, toPeer(Dir.TO_WL));
      for (const f of [ipv4(GW, M), arp(BCAST, M), ipv6(GW, M)]) check('vin', vin, f, toPeer(Dir.FROM_WL));
    });
    it('vbr-neuv ingress: frames for the pair are dropped (DROP_INJECT)', () => {
      check('vbr', dp.lo, ipv4(ucmac(ID), GW), { ret: SHOT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_INJECT });
    });
  });

  describe('DROP, NONE and unknown modes', () => {
    for (const [name, mode] of [
      ['DROP', Mode.DROP],
      ['NONE', Mode.NONE],
      ['unknown (9)', 9],
    ] as const) {
      it(`${name}: everything of the pair dropped on vin, vex and vbr-neuv (DROP_MODE)`, () => {
        seed(mode);
        const drop = (dir: number): Expect => ({ ret: SHOT, counts: { id: ID, dir, verdicts: [Verdict.DROP] }, reason: Reason.DROP_MODE });
        check('vex', vex, ipv4(M, GW), drop(Dir.TO_WL));
        check('vex', vex, arp(BCAST, GW), drop(Dir.TO_WL));
        check('vin', vin, ipv4(GW, M), drop(Dir.FROM_WL));
        check('vbr', dp.lo, ipv4(ucmac(ID), GW), drop(Dir.TO_WL));
        check('vbr', dp.lo, ipv4(GW, ucmac(ID)), drop(Dir.FROM_WL));
      });
    }
  });

  describe('ports, roles, counters', () => {
    it('a port with no entry passes to the stack (PASS_NO_PORT)', () => {
      seed(Mode.FWD);
      dp.clear(dp.lo);
      for (const id of [ID, ID2]) dp.stats.update(u32Key(id), encodeStats(emptyStats()));
      check('vex', vex, ipv4(M, GW), { ret: PASS, reason: Reason.PASS_NO_PORT });
      check('vin', vin, ipv4(GW, M), { ret: PASS, reason: Reason.PASS_NO_PORT });
    });

    it('the port is found by skb->ifindex (test_run leaves ingress_ifindex 0)', () => {
      seed(Mode.FWD);
      // vin is lo, vex the veth: the vex program on lo finds a VIN entry.
      check('vex', vin, ipv4(M, GW), { ret: SHOT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_ROLE });
    });

    it('an entry whose role does not match the hook is dropped (DROP_ROLE)', () => {
      seed(Mode.FWD);
      check('vin', vex, ipv4(GW, M), { ret: SHOT, counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.DROP] }, reason: Reason.DROP_ROLE });
    });

    it('no neuv_stats entry: nothing counted and no entry created', () => {
      seed(Mode.FWD, { stats: [ID2] });
      const f = ipv4(M, GW);
      check('vex', vex, f, { ret: REDIRECT, out: withMac(f, 0, ucmac(ID)) });
      assert.equal(dp.readStats(ID), undefined);
    });

    it('counters add up over frames of different sizes', () => {
      seed(Mode.FWD);
      const before = dp.readStats(ID)!;
      for (const n of [20, 100, 1000]) dp.run('vex', frame(M, GW, 0x0800, n), vex);
      const after = dp.readStats(ID)!;
      assert.deepEqual(statsDelta(before, after), [`${Dir.TO_WL}.${Verdict.TO_DP}:3/${3 * 14 + 1120}`]);
    });
  });

  describe('flags', () => {
    it('IPV6_TO_DP: IPv6 unicast of the workload goes through the DP (FWD)', () => {
      seed(Mode.FWD, { flags: PortFlag.IPV6_TO_DP });
      const fx = ipv6(M, GW);
      check('vex', vex, fx, { ret: REDIRECT, out: withMac(fx, 0, ucmac(ID)), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.TO_DP] } });
      const fi = ipv6(GW, M);
      check('vin', vin, fi, { ret: REDIRECT, out: withMac(fi, 6, ucmac(ID)), counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.TO_DP] } });
      check('vex', vex, ipv6(MCAST, GW), toPeer(Dir.TO_WL));
      const f4 = ipv4(M, GW);
      check('vex', vex, f4, { ret: REDIRECT, out: withMac(f4, 0, ucmac(ID)), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.TO_DP] } });
    });

    it('IPV6_TO_DP: IPv6 is copied in TAP', () => {
      seed(Mode.TAP, { flags: PortFlag.IPV6_TO_DP });
      check('vex', vex, ipv6(M, GW), { ret: REDIRECT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] } });
    });

    it('REDIRECT_PEER: same verdicts and bytes (the delivery path is not visible to test_run)', () => {
      seed(Mode.FWD, { flags: PortFlag.REDIRECT_PEER });
      check('vex', vex, arp(BCAST, GW), toPeer(Dir.TO_WL));
      check('vex', vex, arp(M, GW), toPeer(Dir.TO_WL)); // pkt_type fix path
      check('vin', vin, arp(GW, M), toPeer(Dir.FROM_WL));
      const f = ipv4(ucmac(ID), GW);
      check('vbr', dp.lo, f, { ret: REDIRECT, out: withMac(f, 0, M), counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] } });
      const g = ipv4(GW, ucmac(ID));
      check('vbr', dp.lo, g, { ret: REDIRECT, out: withMac(g, 6, M), counts: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.FROM_DP] } });
      seed(Mode.TAP, { flags: PortFlag.REDIRECT_PEER });
      check('vex', vex, ipv4(M, GW), { ret: REDIRECT, counts: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] } });
    });

    it('unknown flag bits are ignored', () => {
      seed(Mode.FWD, { flags: 0xfffffffc });
      check('vex', vex, ipv6(M, GW), toPeer(Dir.TO_WL));
    });
  });
});

describe('datapath with neuv_set_pkt_type = 0 and a build tag', function () {
  let dp: ProgFixture;
  before(function () {
    requireKernel(this);
    dp = ProgFixture.create({ neuv_set_pkt_type: 0, neuv_build_tag: 0xdeadbeef });
  });
  leakChecks({ perTest: false });

  it('loads and forwards the same frames the same way', () => {
    const st = twoPairs({ vin: dp.lo, vex: dp.veth, vin2: 31, vex2: 32, dp: dp.lo }, Mode.FWD, { flags: PortFlag.REDIRECT_PEER });
    dp.seed(st, [ID]);
    const f = arp(M, GW);
    assert.deepEqual(dp.run('vex', f, dp.veth), { retval: REDIRECT, dataOut: f });
    const g = ipv4(ucmac(ID), GW);
    assert.deepEqual(dp.run('vbr', g, dp.lo), { retval: REDIRECT, dataOut: withMac(g, 0, M) });
  });
});
