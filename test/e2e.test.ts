/**
 * End-to-end kernel suite: intercepted containers, the stub DP on vth-neuv,
 * real traffic, and the frames on the wire (tcpdump -e) checked against
 * docs/datapath.md section 3: what FWD sends through the DP and with which MACs,
 * what bypasses it, TAP's copies and its refusal of injected frames, and
 * that two pairs never mix.
 */
import assert from 'node:assert/strict';
import { requireKernel, leakChecks } from './helpers';
import { capture, makeTopology, StubDp, TestTopology, waitFor } from './topology';
import { udpStream } from './traffic';
import {
  BCAST4, ContainerNs, HOST_IP4, HOST_IP6, MCAST_GROUP, PORTS, ping, runProbes, startServer,
} from '../harness/topology';
import type { InterceptResult } from '../src/intercept';

const UC = /^4e:65:75:56:/;

function intercept(tt: TestTopology, c: ContainerNs, mode: string, extra: string[] = []): InterceptResult {
  const r = tt.run(['intercept', '--container-netns', c.path, '--mode', mode, '--json', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as InterceptResult;
}

function global(tt: TestTopology): Record<string, number> {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { global: Record<string, number> }).global;
}

function hostMac(tt: TestTopology): string {
  return (JSON.parse(tt.t.ip(tt.t.host, '-j', 'link', 'show', 'dev', 'br0')) as Array<{ address: string }>)[0]!.address;
}

describe('end to end through the stub DP (kernel)', function () {
  this.timeout(120000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('FWD: allowed flows pass both ways through the DP with the real MACs on the wire; the blocked port gets nothing', async function () {
    const tt = makeTopology();
    const [c1, c2] = tt.c as [ContainerNs, ContainerNs];
    const stub = await StubDp.start(tt.t.enforcer, { dropPorts: [PORTS.blocked] });
    await startServer(tt.t, c1.ns);
    await startServer(tt.t, c2.ns);
    const p1 = intercept(tt, c1, 'fwd');
    const p2 = intercept(tt, c2, 'fwd');
    const before = await stub.counts();

    const cap = await capture(tt.t, c2.ns, 'eth0', ['udp', 'port', String(PORTS.udp), 'or', 'port', String(PORTS.blocked)]);
    const [ok, blocked] = await runProbes(c1.ns, [
      { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
      { t: 'udp', host: c2.ip4, port: PORTS.blocked, count: 5, timeoutMs: 400 },
    ]);
    const frames = await cap.stop();
    assert.equal(ok!.received, 5, 'allowed UDP echoed');
    assert.equal(ok!.duplicates, 0);
    assert.equal(blocked!.received, 0, 'blocked port: nothing back');
    const allowed = frames.filter((f) => f.line.includes(`.${PORTS.udp}`));
    assert.equal(allowed.filter((f) => f.sa === c1.mac && f.da === c2.mac).length, 5, 'requests at c2 carry the real MACs');
    assert.equal(allowed.filter((f) => f.sa === c2.mac && f.da === c1.mac).length, 5, 'replies leave c2 with the real MACs');
    assert.equal(frames.filter((f) => f.line.includes(`.${PORTS.blocked}`)).length, 0, 'no frame to the blocked port reached c2');
    assert.ok(frames.every((f) => !UC.test(f.sa) && !UC.test(f.da)), 'no UCMAC on the wire');

    const after = await stub.counts();
    const d = (uc: string, dir: 'to_wl' | 'from_wl', kind: string) =>
      StubDp.frames(after, kind, uc, dir).frames - StubDp.frames(before, kind, uc, dir).frames;
    // Each request crosses the DP twice (out of c1's pair, into c2's), each reply too.
    assert.equal(d(p1.pair.ucmac, 'from_wl', `udp/${PORTS.udp}`), 5);
    assert.equal(d(p2.pair.ucmac, 'to_wl', `udp/${PORTS.udp}`), 5);
    assert.equal(d(p2.pair.ucmac, 'from_wl', `udp/${PORTS.udp}`), 5);
    assert.equal(d(p1.pair.ucmac, 'to_wl', `udp/${PORTS.udp}`), 5);
    assert.equal(StubDp.frames(after, `udp/${PORTS.blocked}`, p1.pair.ucmac, 'from_wl').dropped, 5, 'the DP dropped the blocked datagrams');
    assert.equal(StubDp.frames(after, `udp/${PORTS.blocked}`, p2.pair.ucmac).frames, 0, "blocked frames never reached c2's pair");

    // TCP from the host side (checksum offload on the bridge: CHECKSUM_PARTIAL frames through the DP) and back.
    const [tcp] = await runProbes(tt.t.host, [{ t: 'tcp', host: c1.ip4, port: PORTS.tcpHost }]);
    assert.ok(tcp!.ok, `tcp host -> c1 through the DP: ${tcp!.error}`);
    const [tcpBlocked] = await runProbes(tt.t.host, [{ t: 'tcp', host: c1.ip4, port: PORTS.blocked, timeoutMs: 400 }]);
    assert.equal(tcpBlocked!.ok, false, 'tcp to the blocked port');
  });

  it('FWD: multicast, broadcast, ARP and (by default) IPv6 bypass the DP and still work', async function () {
    const tt = makeTopology();
    const [c1, c2] = tt.c as [ContainerNs, ContainerNs];
    const stub = await StubDp.start(tt.t.enforcer, { dropPorts: [PORTS.blocked] });
    await startServer(tt.t, c2.ns);
    const p1 = intercept(tt, c1, 'fwd');
    const p2 = intercept(tt, c2, 'fwd');
    // Multicast memberships belong to a device: the listener joins on the new eth0.
    const mc = await startServer(tt.t, c2.ns, 'mcast');
    const before = await stub.counts();

    // ARP: forget c2; resolving it again must give its real MAC.
    tt.t.ip(c1.ns, 'neigh', 'flush', 'dev', 'eth0');
    await runProbes(c1.ns, [{ t: 'udp', host: c2.ip4, port: PORTS.udpArp, count: 1 }]);
    const [n] = JSON.parse(tt.t.ip(c1.ns, '-j', 'neigh', 'show', c2.ip4)) as Array<{ lladdr?: string }>;
    assert.equal(n?.lladdr, c2.mac, 'ARP resolved c2 to its real MAC');

    await runProbes(c1.ns, [
      { t: 'send', host: BCAST4, port: PORTS.mcast, count: 3, broadcast: true },
      { t: 'send', host: MCAST_GROUP, port: PORTS.mcast, count: 3, multicast: true },
    ]);
    // The multicast listener also gets the broadcasts (same port, bound to 0.0.0.0).
    await waitFor('3 broadcasts and 3 multicasts at c2', () => (mc.counts.get(`mcast/${PORTS.mcast}`) ?? 0) >= 6, 2000);
    assert.equal(ping(tt.t, c1.ns, c2.ip6, 3), 3, 'ping6 c1 -> c2');
    assert.equal(ping(tt.t, c1.ns, HOST_IP6, 2), 2, 'ping6 c1 -> host');
    const [tcp6] = await runProbes(c1.ns, [{ t: 'tcp', host: c2.ip6, port: PORTS.tcp }]);
    assert.ok(tcp6!.ok, 'tcp6 c1 -> c2');

    const after = await stub.counts();
    for (const kind of ['arp', `udp/${PORTS.mcast}`, 'icmp6', `tcp6/${PORTS.tcp}`]) {
      assert.equal(StubDp.frames(after, kind).frames - StubDp.frames(before, kind).frames, 0, `${kind} bypassed the DP`);
    }
    // Only the ARP probe's unicast IPv4 datagram and its echo went through the DP.
    for (const p of [p1, p2]) {
      const pair = after.pairs[p.pair.ucmac];
      const kinds = pair ? [...Object.keys(pair.to_wl.kinds), ...Object.keys(pair.from_wl.kinds)] : [];
      assert.deepEqual([...new Set(kinds)], [`udp/${PORTS.udpArp}`], `kinds the DP saw for ${p.vin}`);
    }
  });

  it('FWD with --ipv6-to-dp: IPv6 unicast goes through the DP (and its port rule applies)', async function () {
    const tt = makeTopology();
    const [c1, c2] = tt.c as [ContainerNs, ContainerNs];
    const stub = await StubDp.start(tt.t.enforcer, { dropPorts: [PORTS.blocked] });
    await startServer(tt.t, c2.ns);
    const p1 = intercept(tt, c1, 'fwd', ['--ipv6-to-dp']);
    intercept(tt, c2, 'fwd', ['--ipv6-to-dp']);
    assert.equal(p1.pair.ipv6ToDp, true);
    assert.equal(ping(tt.t, c1.ns, c2.ip6, 3), 3, 'ping6 through the DP');
    const [tcp6, blocked6] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip6, port: PORTS.tcp },
      { t: 'udp', host: c2.ip6, port: PORTS.blocked, count: 3, timeoutMs: 400 },
    ]);
    assert.ok(tcp6!.ok, 'tcp6 through the DP');
    assert.equal(blocked6!.received, 0, 'udp6 to the blocked port dropped by the DP');
    const c = await stub.counts();
    assert.ok(StubDp.frames(c, 'icmp6', p1.pair.ucmac, 'from_wl').frames >= 3, 'the DP saw the echo requests');
    assert.ok(StubDp.frames(c, `tcp6/${PORTS.tcp}`, p1.pair.ucmac).frames > 0, 'the DP saw the TCP segments');
    assert.equal(StubDp.frames(c, `udp6/${PORTS.blocked}`, p1.pair.ucmac, 'from_wl').dropped, 3);
  });

  it("TAP: one copy per IPv4 unicast frame, with the UCMAC in the workload MAC's place; injected frames dropped; the flow untouched", async function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const stub = await StubDp.start(tt.t.enforcer);
    const p1 = intercept(tt, c1, 'tap');
    const gw = hostMac(tt);
    const g0 = global(tt);
    const s0 = await stub.counts();
    const atDp = await capture(tt.t, tt.t.enforcer, 'vth-neuv', ['-Q', 'in', 'udp', 'port', '5001']);
    const atHost = await capture(tt.t, tt.t.host, c1.hostPort, ['-Q', 'in', 'udp', 'port', '5001']);
    const N = 200;
    const res = await udpStream({ senderNs: c1.ns, receiverNs: tt.t.host, to: HOST_IP4, port: 5001, count: N, rate: 500, idleMs: 500 });
    const dpFrames = await atDp.stop(N);
    const hostFrames = await atHost.stop(N);
    assert.equal(res.unique, N, 'every datagram arrived');
    assert.equal(res.duplicated, 0, 'no duplicates: the DP could not inject');
    assert.equal(res.lost, 0);
    assert.equal(dpFrames.length, N, 'one copy per frame at the DP');
    assert.ok(dpFrames.every((f) => f.sa === p1.pair.ucmac && f.da === gw), 'copies carry SA = UCMAC, DA untouched');
    assert.equal(hostFrames.length, N);
    assert.ok(hostFrames.every((f) => f.sa === c1.mac && f.da === gw), 'the original leaves with the real MAC');

    const s1 = await stub.counts();
    assert.equal(StubDp.frames(s1, 'udp/5001', p1.pair.ucmac, 'from_wl').frames - StubDp.frames(s0, 'udp/5001', p1.pair.ucmac, 'from_wl').frames, N);
    const wrote = s1.sent - s0.sent;
    assert.ok(wrote >= N, `the stub wrote its ${N} copies back (${wrote})`);
    const g1 = await waitFor('drop_inject to count every injected frame', () => {
      const g = global(tt);
      return g.drop_inject! - g0.drop_inject! >= wrote ? g : undefined;
    }, 3000);
    assert.equal(g1.drop_inject! - g0.drop_inject!, wrote, 'every frame the DP wrote back was dropped');
  });

  it("two intercepted containers never see each other's frames through the DP", async function () {
    const tt = makeTopology();
    const [c1, c2] = tt.c as [ContainerNs, ContainerNs];
    const stub = await StubDp.start(tt.t.enforcer);
    const p1 = intercept(tt, c1, 'fwd');
    const p2 = intercept(tt, c2, 'fwd');
    const cap1 = await capture(tt.t, c1.ns, 'eth0', ['udp', 'port', '5003']);
    const cap2 = await capture(tt.t, c2.ns, 'eth0', ['udp', 'port', '5002']);
    const [r1, r2] = await Promise.all([
      udpStream({ senderNs: c1.ns, receiverNs: tt.t.host, to: HOST_IP4, port: 5002, count: 100, rate: 1000, idleMs: 300 }),
      udpStream({ senderNs: c2.ns, receiverNs: tt.t.host, to: HOST_IP4, port: 5003, count: 100, rate: 1000, idleMs: 300 }),
    ]);
    assert.equal(r1.unique, 100);
    assert.equal(r2.unique, 100);
    assert.equal(r1.duplicated + r2.duplicated, 0);
    assert.equal((await cap1.stop()).length, 0, "c1 saw none of c2's frames");
    assert.equal((await cap2.stop()).length, 0, "c2 saw none of c1's frames");
    const c = await stub.counts();
    assert.equal(StubDp.frames(c, 'udp/5002', p1.pair.ucmac, 'from_wl').frames, 100);
    assert.equal(StubDp.frames(c, 'udp/5003', p2.pair.ucmac, 'from_wl').frames, 100);
    assert.equal(StubDp.frames(c, 'udp/5002', p2.pair.ucmac).frames, 0, "c2's pair carried none of c1's flow");
    assert.equal(StubDp.frames(c, 'udp/5003', p1.pair.ucmac).frames, 0, "c1's pair carried none of c2's flow");
    assert.notEqual(p1.pair.ucmac, p2.pair.ucmac);
  });
});
