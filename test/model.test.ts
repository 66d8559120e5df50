/**
 * The reference model against docs/datapath.md section 3, one case per table row
 * and per mode. Pure: no kernel.
 */
import assert from 'node:assert/strict';
import { Dir, Mode, PortFlag, Reason, VBR_IFINDEX, Verdict } from '../src/layout';
import { ucmac } from '../src/mac';
import { decide, ModelState, Outcome, retval } from './model';
import { arp, BCAST, frame, GW, ID, ID2, ipv4, ipv6, M, M2, MCAST, norm, OTHER, twoPairs, vlan, withMac } from '../harness/frames';

const VIN = 21;
const VEX = 22;
const DP = 10;
const VIN2 = 31;
const VEX2 = 32;

function state(mode: number, opts: { flags?: number; dp?: number; cloneOk?: boolean; mode2?: number } = {}): ModelState {
  return twoPairs({ vin: VIN, vex: VEX, vin2: VIN2, vex2: VEX2, dp: DP }, mode, opts);
}

/** Deep comparison that shows frames as hex on failure. */
function same(actual: unknown, expected: unknown): void {
  assert.deepEqual(norm(actual), norm(expected));
}

const toPeer = (ifindex: number, f: Uint8Array, dir: 0 | 1, id = ID, peer = false): Outcome => ({
  ret: 'redirect',
  redirect: { ifindex, peer, frame: f },
  frameOut: f,
  stats: { id, dir, verdicts: [Verdict.TO_PEER] },
});

describe('model: docs/datapath.md section 3', () => {
  describe('FWD', () => {
    const s = state(Mode.FWD);

    it('vex ingress: IPv4, unicast, DA == M -> DA := UCMAC, to vbr-neuv', () => {
      const f = ipv4(M, GW);
      const out = withMac(f, 0, ucmac(ID));
      same(decide(s, 'vex', VEX, f), {
        ret: 'redirect',
        redirect: { ifindex: DP, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.TO_DP] },
      });
    });

    for (const [what, f] of [
      ['broadcast ARP', arp(BCAST, GW)],
      ['unicast ARP to M', arp(M, GW)],
      ['multicast IPv4', ipv4(MCAST, GW)],
      ['broadcast IPv4', ipv4(BCAST, GW)],
      ['IPv6 to M (no IPV6_TO_DP flag)', ipv6(M, GW)],
      ['IPv4 to another DA', ipv4(OTHER, GW)],
      ['VLAN-tagged IPv4 to M', vlan(M, GW)],
      ['IPv4 to another pair UCMAC', ipv4(ucmac(ID2), GW)],
    ] as const) {
      it(`vex ingress: anything else (${what}) -> to vin unchanged`, () => {
        same(decide(s, 'vex', VEX, f), toPeer(VIN, f, Dir.TO_WL));
      });
    }

    it('vin ingress: IPv4, unicast DA, SA == M -> SA := UCMAC, to vbr-neuv', () => {
      const f = ipv4(GW, M);
      const out = withMac(f, 6, ucmac(ID));
      same(decide(s, 'vin', VIN, f), {
        ret: 'redirect',
        redirect: { ifindex: DP, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.TO_DP] },
      });
    });

    it('vin ingress: any unicast DA counts, even one that is not on the network', () => {
      const f = ipv4(OTHER, M);
      same(decide(s, 'vin', VIN, f).frameOut, withMac(f, 6, ucmac(ID)));
    });

    for (const [what, f] of [
      ['broadcast ARP from M', arp(BCAST, M)],
      ['unicast ARP from M', arp(GW, M)],
      ['broadcast IPv4 from M', ipv4(BCAST, M)],
      ['multicast IPv4 from M', ipv4(MCAST, M)],
      ['IPv6 from M (no flag)', ipv6(GW, M)],
      ['IPv4 from another SA', ipv4(GW, OTHER)],
      ['IPv4 whose SA is another pair UCMAC', ipv4(GW, ucmac(ID2))],
      ['IPv4 whose SA is our own UCMAC', ipv4(GW, ucmac(ID))],
      ['VLAN-tagged IPv4 from M', vlan(GW, M)],
    ] as const) {
      it(`vin ingress: anything else (${what}) -> to vex unchanged`, () => {
        same(decide(s, 'vin', VIN, f), toPeer(VEX, f, Dir.FROM_WL));
      });
    }

    it('vbr-neuv ingress: DA == UCMAC of a pair -> DA := M, to that pair vin', () => {
      const f = ipv4(ucmac(ID), GW);
      const out = withMac(f, 0, M);
      same(decide(s, 'vbr', DP, f), {
        ret: 'redirect',
        redirect: { ifindex: VIN, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] },
      });
    });

    it('vbr-neuv ingress: SA == UCMAC of a pair -> SA := M, to that pair vex', () => {
      const f = ipv4(GW, ucmac(ID));
      const out = withMac(f, 6, M);
      same(decide(s, 'vbr', DP, f), {
        ret: 'redirect',
        redirect: { ifindex: VEX, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.FROM_DP] },
      });
    });

    it('vbr-neuv ingress: SA == UCMAC works for any EtherType and DA (the DP decides)', () => {
      const f = arp(BCAST, ucmac(ID2));
      const out = withMac(f, 6, M2);
      same(decide(s, 'vbr', DP, f), {
        ret: 'redirect',
        redirect: { ifindex: VEX2, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID2, dir: Dir.FROM_WL, verdicts: [Verdict.FROM_DP] },
      });
    });

    it('vbr-neuv ingress: DA is checked before SA', () => {
      const f = ipv4(ucmac(ID), ucmac(ID2));
      const out = withMac(f, 0, M);
      same(decide(s, 'vbr', DP, f), {
        ret: 'redirect',
        redirect: { ifindex: VIN, peer: false, frame: out },
        frameOut: out,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.FROM_DP] },
      });
    });

    it('vbr-neuv ingress: a DA UCMAC of an unknown id passes, even if the SA is a known UCMAC', () => {
      const f = ipv4(ucmac(0x4242), ucmac(ID));
      same(decide(s, 'vbr', DP, f), { ret: 'pass', frameOut: f, reason: Reason.PASS_NO_PAIR });
    });

    for (const [what, f] of [
      ['no UCMAC at all', ipv4(GW, OTHER)],
      ['broadcast from the DP', arp(BCAST, OTHER)],
      ['SA UCMAC of an unknown id', ipv4(GW, ucmac(0x4242))],
      ['only three bytes of the prefix', ipv4(Buffer.from([0x4e, 0x65, 0x75, 0x57, 0x12, 0x34]), GW)],
    ] as const) {
      it(`vbr-neuv ingress: matching no pair (${what}) -> to the stack`, () => {
        same(decide(s, 'vbr', DP, f), { ret: 'pass', frameOut: f, reason: Reason.PASS_NO_PAIR });
      });
    }

    it('vbr-neuv ingress: an id whose port entry is gone -> drop (DROP_NO_PEER)', () => {
      const s2 = state(Mode.FWD);
      s2.ports.delete(VIN);
      const f = ipv4(ucmac(ID), GW);
      same(decide(s2, 'vbr', DP, f), {
        ret: 'shot',
        frameOut: f,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_NO_PEER,
      });
    });

    it('the second pair is independent of the first', () => {
      const f = ipv4(M2, GW);
      same(decide(s, 'vex', VEX2, f).redirect, { ifindex: DP, peer: false, frame: withMac(f, 0, ucmac(ID2)) });
      same(decide(s, 'vex', VEX, f).redirect, { ifindex: VIN, peer: false, frame: f });
    });
  });

  describe('TAP', () => {
    const s = state(Mode.TAP);

    it('vex ingress: IPv4, unicast, DA == M -> original to vin, copy with DA := UCMAC to vbr-neuv', () => {
      const f = ipv4(M, GW);
      same(decide(s, 'vex', VEX, f), {
        ret: 'redirect',
        redirect: { ifindex: VIN, peer: false, frame: f },
        copy: { ifindex: DP, peer: false, frame: withMac(f, 0, ucmac(ID)) },
        frameOut: f,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] },
      });
    });

    it('vin ingress: IPv4, unicast DA, SA == M -> original to vex, copy with SA := UCMAC to vbr-neuv', () => {
      const f = ipv4(GW, M);
      same(decide(s, 'vin', VIN, f), {
        ret: 'redirect',
        redirect: { ifindex: VEX, peer: false, frame: f },
        copy: { ifindex: DP, peer: false, frame: withMac(f, 6, ucmac(ID)) },
        frameOut: f,
        stats: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.COPY, Verdict.TO_PEER] },
      });
    });

    it('a failed clone still forwards the original (CLONE_FAILED, no COPY)', () => {
      const f = ipv4(M, GW);
      same(decide(state(Mode.TAP, { cloneOk: false }), 'vex', VEX, f), {
        ...toPeer(VIN, f, Dir.TO_WL),
        reason: Reason.CLONE_FAILED,
      });
    });

    it('vex ingress: anything else -> to vin unchanged, no copy', () => {
      for (const f of [arp(BCAST, GW), ipv6(M, GW), ipv4(OTHER, GW), vlan(M, GW)]) {
        same(decide(s, 'vex', VEX, f), toPeer(VIN, f, Dir.TO_WL));
      }
    });

    it('vin ingress: anything else -> to vex unchanged, no copy', () => {
      for (const f of [arp(BCAST, M), ipv4(BCAST, M), ipv6(GW, M), ipv4(GW, OTHER)]) {
        same(decide(s, 'vin', VIN, f), toPeer(VEX, f, Dir.FROM_WL));
      }
    });

    it('vbr-neuv ingress: DA == UCMAC or SA == UCMAC -> drop (the DP must not inject)', () => {
      const f1 = ipv4(ucmac(ID), GW);
      same(decide(s, 'vbr', DP, f1), {
        ret: 'shot',
        frameOut: f1,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_INJECT,
      });
      const f2 = ipv4(GW, ucmac(ID));
      same(decide(s, 'vbr', DP, f2), {
        ret: 'shot',
        frameOut: f2,
        stats: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_INJECT,
      });
    });
  });

  describe('BYPASS', () => {
    const s = state(Mode.BYPASS);
    it('vex and vin ingress: everything, matching or not, goes to the peer unchanged', () => {
      for (const f of [ipv4(M, GW), arp(BCAST, GW), ipv6(M, GW)]) same(decide(s, 'vex', VEX, f), toPeer(VIN, f, Dir.TO_WL));
      for (const f of [ipv4(GW, M), arp(BCAST, M), ipv6(GW, M)]) same(decide(s, 'vin', VIN, f), toPeer(VEX, f, Dir.FROM_WL));
    });
    it('vbr-neuv ingress: a frame for the pair is dropped (DROP_INJECT)', () => {
      const f = ipv4(ucmac(ID), GW);
      same(decide(s, 'vbr', DP, f), {
        ret: 'shot',
        frameOut: f,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_INJECT,
      });
    });
  });

  describe('DROP, NONE and unknown modes', () => {
    for (const [name, mode] of [
      ['DROP', Mode.DROP],
      ['NONE', Mode.NONE],
      ['unknown (9)', 9],
    ] as const) {
      it(`${name}: vin, vex and vbr-neuv drop everything of the pair (DROP_MODE)`, () => {
        const s = state(mode);
        for (const [hook, port, f, dir] of [
          ['vex', VEX, ipv4(M, GW), Dir.TO_WL],
          ['vex', VEX, arp(BCAST, GW), Dir.TO_WL],
          ['vin', VIN, ipv4(GW, M), Dir.FROM_WL],
          ['vin', VIN, Buffer.alloc(8), Dir.FROM_WL],
          ['vbr', DP, ipv4(ucmac(ID), GW), Dir.TO_WL],
          ['vbr', DP, ipv4(GW, ucmac(ID)), Dir.FROM_WL],
        ] as const) {
          same(decide(s, hook, port, f), {
            ret: 'shot',
            frameOut: f,
            stats: { id: ID, dir, verdicts: [Verdict.DROP] },
            reason: Reason.DROP_MODE,
          });
        }
      });
    }
    it('another pair in DROP does not affect this one', () => {
      const s = state(Mode.FWD, { mode2: Mode.DROP });
      assert.equal(decide(s, 'vex', VEX, ipv4(M, GW)).ret, 'redirect');
      assert.equal(decide(s, 'vex', VEX2, ipv4(M2, GW)).ret, 'shot');
    });
  });

  describe('ports and roles', () => {
    const s = state(Mode.FWD);
    it('a port with no entry passes to the stack (PASS_NO_PORT), no pair counters', () => {
      const f = ipv4(M, GW);
      same(decide(s, 'vex', 99, f), { ret: 'pass', frameOut: f, reason: Reason.PASS_NO_PORT });
      same(decide(s, 'vin', 99, f), { ret: 'pass', frameOut: f, reason: Reason.PASS_NO_PORT });
    });
    it('an entry whose role does not match the hook is dropped (DROP_ROLE)', () => {
      const f = ipv4(M, GW);
      same(decide(s, 'vin', VEX, f), {
        ret: 'shot',
        frameOut: f,
        stats: { id: ID, dir: Dir.FROM_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_ROLE,
      });
      same(decide(s, 'vex', VIN, f), {
        ret: 'shot',
        frameOut: f,
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.DROP] },
        reason: Reason.DROP_ROLE,
      });
    });
    it('vbr-neuv does not look at its ingress ifindex', () => {
      const f = ipv4(ucmac(ID), GW);
      same(decide(s, 'vbr', 1, f), decide(s, 'vbr', 12345, f));
    });
  });

  describe('short frames', () => {
    for (const len of [0, 1, 6, 12, 13]) {
      it(`${len} bytes: vin/vex to the peer unchanged, vbr-neuv to the stack`, () => {
        const f = Buffer.from(M.subarray(0, Math.min(6, len)));
        const g = Buffer.concat([f, Buffer.alloc(Math.max(0, len - f.length), 0x08)]);
        for (const mode of [Mode.FWD, Mode.TAP, Mode.BYPASS]) {
          const s = state(mode);
          same(decide(s, 'vex', VEX, g), toPeer(VIN, g, Dir.TO_WL));
          same(decide(s, 'vin', VIN, g), toPeer(VEX, g, Dir.FROM_WL));
          same(decide(s, 'vbr', DP, g), { ret: 'pass', frameOut: g, reason: Reason.PASS_NO_PAIR });
        }
      });
    }
    it('14 bytes is a whole Ethernet header and can match', () => {
      const f = frame(M, GW, 0x0800, 0);
      same(decide(state(Mode.FWD), 'vex', VEX, f).frameOut, withMac(f, 0, ucmac(ID)));
    });
  });

  describe('flags', () => {
    it('IPV6_TO_DP: IPv6 unicast of the workload goes through the DP like IPv4 (both hooks)', () => {
      const s = state(Mode.FWD, { flags: PortFlag.IPV6_TO_DP });
      const fx = ipv6(M, GW);
      same(decide(s, 'vex', VEX, fx), {
        ret: 'redirect',
        redirect: { ifindex: DP, peer: false, frame: withMac(fx, 0, ucmac(ID)) },
        frameOut: withMac(fx, 0, ucmac(ID)),
        stats: { id: ID, dir: Dir.TO_WL, verdicts: [Verdict.TO_DP] },
      });
      const fi = ipv6(GW, M);
      same(decide(s, 'vin', VIN, fi).frameOut, withMac(fi, 6, ucmac(ID)));
      // still unicast only, and IPv4 still matches
      same(decide(s, 'vex', VEX, ipv6(MCAST, GW)), toPeer(VIN, ipv6(MCAST, GW), Dir.TO_WL));
      assert.equal(decide(s, 'vex', VEX, ipv4(M, GW)).redirect?.ifindex, DP);
    });
    it('IPV6_TO_DP in TAP: the copy of IPv6 goes to the DP', () => {
      const s = state(Mode.TAP, { flags: PortFlag.IPV6_TO_DP });
      const f = ipv6(M, GW);
      same(decide(s, 'vex', VEX, f).copy, { ifindex: DP, peer: false, frame: withMac(f, 0, ucmac(ID)) });
    });
    it('REDIRECT_PEER + SELF_PEER: every delivery to vin/vex is via redirect_peer; the DP leg never is', () => {
      const s = state(Mode.FWD, { flags: PortFlag.REDIRECT_PEER | PortFlag.SELF_PEER });
      same(decide(s, 'vex', VEX, arp(BCAST, GW)), toPeer(VIN, arp(BCAST, GW), Dir.TO_WL, ID, true));
      assert.deepEqual(decide(s, 'vex', VEX, ipv4(M, GW)).redirect?.peer, false);
      assert.deepEqual(decide(s, 'vbr', DP, ipv4(ucmac(ID), GW)).redirect?.peer, true);
      assert.deepEqual(decide(s, 'vbr', DP, ipv4(GW, ucmac(ID))).redirect?.peer, true);
      // REDIRECT_PEER alone speaks of the pair-mate: the DP's frames for this port go by plain redirect.
      const r = state(Mode.FWD, { flags: PortFlag.REDIRECT_PEER });
      assert.equal(decide(r, 'vbr', DP, ipv4(ucmac(ID), GW)).redirect?.peer, false);
      assert.equal(decide(state(Mode.FWD, { flags: PortFlag.SELF_PEER }), 'vbr', DP, ipv4(ucmac(ID), GW)).redirect?.peer, true);
      assert.equal(decide(state(Mode.FWD, { flags: PortFlag.SELF_PEER }), 'vex', VEX, arp(BCAST, GW)).redirect?.peer, false);
      const t = decide(state(Mode.TAP, { flags: PortFlag.REDIRECT_PEER }), 'vin', VIN, ipv4(GW, M));
      assert.equal(t.redirect?.peer, true);
      assert.equal(t.copy?.peer, false);
    });
    it('dp_ifindex 0 means vbr-neuv at its fixed ifindex', () => {
      const d = decide(state(Mode.FWD, { dp: 0 }), 'vex', VEX, ipv4(M, GW));
      assert.equal(d.redirect?.ifindex, VBR_IFINDEX);
    });
  });

  describe('the model itself', () => {
    it('never mutates its input frame', () => {
      const f = ipv4(M, GW);
      const before = Buffer.from(f);
      decide(state(Mode.FWD), 'vex', VEX, f);
      decide(state(Mode.TAP), 'vex', VEX, f);
      assert.deepEqual(f, before);
    });
    it('retval maps pass/shot/redirect to TC_ACT_UNSPEC/SHOT/REDIRECT', () => {
      assert.deepEqual([retval('pass'), retval('shot'), retval('redirect')], [-1, 2, 7]);
    });
  });
});

