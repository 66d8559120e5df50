/**
 * Kernel suite against NeuVector's real enforcer DP (built from its source
 * tarball, docs/neuvector-dp.md), driven only through its control socket
 * (src/dp/client.ts), with containers intercepted by the CLI's `intercept`:
 * FWD passes everything with no policy and blocks exactly a denied port, the
 * DP's injected TCP resets reach both ends, TAP lets everything through
 * while the DP sees the sessions and nothing it writes back gets through,
 * BYPASS never reaches the DP.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { leakChecks } from './helpers';
import { capture, makeTopology, nsView, TestTopology, waitFor } from './topology';
import { startTcpTransfer } from './traffic';
import { addEndpoint, denyPort, interceptC, requireNvdp, sessionsBetween, startNvdp } from './nvdp-fixture';
import { decodeSession, DpClient } from '../src/dp/client';
import { UnixDgram } from '../src/bpf/unixgram';
import { BCAST4, ContainerNs, HOST_IP4, HOST_IP6, MCAST_GROUP, PORTS, ping, runProbes, startServer } from '../harness/topology';

const UC = /^4e:65:75:56:/;
const TCP = 6;
const UDP = 17;
const ICMP = 1;

interface Stats {
  pairs: Array<{ id: number; counters: Record<'to_wl' | 'from_wl', Record<string, { packets: number }>> }>;
  global: Record<string, number>;
}

function stats(tt: TestTopology): Stats {
  const r = tt.run(['stats', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Stats;
}

/** A counter of the datapath summed over pairs and directions. */
function sum(s: Stats, verdict: string): number {
  let n = 0;
  for (const p of s.pairs) for (const d of ['to_wl', 'from_wl'] as const) n += p.counters[d][verdict]?.packets ?? 0;
  return n;
}

/** Two containers with echo servers, intercepted in `mode`, the real DP on vth-neuv with both as endpoints. */
async function setup(mode: 'fwd' | 'tap' | 'bypass', o: { tap?: boolean; extra?: string[] } = {}) {
  const tt = makeTopology();
  const [c1, c2] = tt.c as [ContainerNs, ContainerNs];
  await startServer(tt.t, c1.ns);
  await startServer(tt.t, c2.ns);
  const p1 = interceptC(tt, c1, mode, o.extra);
  const p2 = interceptC(tt, c2, mode, o.extra);
  const dp = await startNvdp(tt);
  await addEndpoint(dp.client, p1, c1, { tap: o.tap });
  await addEndpoint(dp.client, p2, c2, { tap: o.tap });
  return { tt, c1, c2, p1, p2, dp };
}

describe('NeuVector DP client (unit)', function () {
  let dir: string;
  let fake: UnixDgram;
  let client: DpClient;
  beforeEach(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-dpc-'));
    fs.mkdirSync(path.join(dir, 'tmp'));
    fake = UnixDgram.bind(path.join(dir, 'tmp', 'dp_listen.sock'));
    client = DpClient.open({ root: dir, timeoutMs: 300 });
  });
  afterEach(function () {
    client.close();
    fake.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const next = async () => JSON.parse((await fake.recv(1000))!.toString()) as Record<string, unknown>;

  it("sends ctrl.c's messages: srvc port, endpoint, inline, apps, policy, delete", async function () {
    client.addSrvcPort();
    client.addMac({ mac: '02:42:AC:11:00:02', ucmac: '4e:65:75:56:12:34', bcmac: 'ff:ff:ff:00:12:34', ips: ['10.0.0.2'] });
    client.cfgMac(['02:42:ac:11:00:02'], { tap: false, apps: [{ port: 53, ipProto: 17 }] });
    client.cfgPolicy({ macs: ['02:42:ac:11:00:02'], rules: [{ id: 7, dip: '10.0.0.2', port: 9999, proto: 6, action: 'deny', ingress: true }] });
    client.delMac('02:42:ac:11:00:02');
    client.delSrvcPort();
    assert.deepEqual(await next(), { ctrl_add_srvc_port: { iface: 'vth-neuv', jumboframe: false } });
    assert.deepEqual(await next(), {
      ctrl_add_mac: { iface: 'vth-neuv', mac: '02:42:ac:11:00:02', ucmac: '4e:65:75:56:12:34', bcmac: 'ff:ff:ff:00:12:34', oldmac: '', pmac: '', pips: [{ ip: '10.0.0.2' }] },
    });
    assert.deepEqual(await next(), { ctrl_cfg_mac: { macs: ['02:42:ac:11:00:02'], tap: false, apps: [{ port: 53, ip_proto: 17, app: 0, server: 0 }] } });
    assert.deepEqual(await next(), {
      ctrl_cfg_policy: {
        cmd: 1, flag: 3, defact: 2, dir: 3, mac: ['02:42:ac:11:00:02'],
        rules: [{ id: 7, sip: '0.0.0.0', sipr: '255.255.255.255', dip: '10.0.0.2', dipr: '10.0.0.2', port: 9999, portr: 9999, proto: 6, action: 7, ingress: true }],
      },
    });
    assert.deepEqual(await next(), { ctrl_del_mac: { mac: '02:42:ac:11:00:02' } });
    assert.deepEqual(await next(), { ctrl_del_srvc_port: { iface: 'vth-neuv' } });
  });

  it('keep-alive: matches the reply by seq_num, ignores stale ones, times out clearly', async function () {
    const reply = (seq: number) => {
      const b = Buffer.alloc(8);
      b[0] = 10;
      b.writeUInt16BE(8, 2);
      b.writeUInt32BE(seq, 4);
      return b;
    };
    const rtt = client.keepAlive();
    const req = await next();
    const seq = (req.ctrl_keep_alive as { seq_num: number }).seq_num;
    fake.send(client.replyPath, reply(seq + 100)); // stale
    fake.send(client.replyPath, reply(seq));
    assert.ok((await rtt) >= 0);
    await assert.rejects(client.keepAlive(), /no reply from the DP .* within 300 ms/);
  });

  it('refuses bad input with one clear error, sending nothing', async function () {
    assert.throws(() => client.addMac({ mac: 'nope', ucmac: '4e:65:75:56:00:01', bcmac: 'ff:ff:ff:00:00:01' }), /mac "nope" is not a MAC/);
    assert.throws(() => client.addMac({ mac: '02:00:00:00:00:01', ucmac: '4e:65:75:56:00:01', bcmac: 'ff:ff:ff:00:00:01', ips: ['fd00::1'] }), /not an IPv4 address/);
    assert.throws(() => client.addSrvcPort('a/b'), /contains a space, '\/'/);
    assert.throws(() => client.cfgMac([], {}), /at least one MAC/);
    assert.throws(() => client.cfgPolicy({ macs: ['02:00:00:00:00:01'], rules: [{ id: 1, dip: '10.0.0.1', port: 70000, proto: 6, action: 'deny', ingress: true }] }), /port 70000/);
    assert.equal(await fake.recv(50), undefined);
  });

  it('a DPMsgSession decodes field by field (defs.h layout, network byte order)', function () {
    const b = Buffer.alloc(140);
    b.writeUInt32BE(77, 0);
    Buffer.from([0x02, 0, 0, 0, 0, 1]).copy(b, 4);
    b.writeUInt16BE(0x0800, 10);
    Buffer.from([10, 77, 0, 11]).copy(b, 24);
    Buffer.from([10, 77, 0, 12]).copy(b, 40);
    b.writeUInt16BE(40000, 56);
    b.writeUInt16BE(8080, 58);
    b[62] = 6;
    b.writeUInt32BE(5, 64);
    b.writeUInt32BE(4, 68);
    b.writeUInt16BE(1003, 106);
    b.writeUInt32BE(1001, 112);
    b[116] = 7;
    b.writeUInt16BE(0x0101, 118);
    const s = decodeSession(b);
    assert.deepEqual(
      [s.id, s.epMac, s.clientIp, s.serverIp, s.clientPort, s.serverPort, s.ipProto, s.clientPkts, s.serverPkts, s.application, s.policyId, s.policyAction, s.flags],
      [77, '02:00:00:00:00:01', '10.77.0.11', '10.77.0.12', 40000, 8080, 6, 5, 4, 1003, 1001, 7, 0x0101],
    );
  });

});

describe('NeuVector DP: FWD, TAP and BYPASS with the real enforcer datapath (kernel)', function () {
  this.timeout(120000);
  before(function () {
    this.timeout(300000); // the first run builds the DP
    requireNvdp(this);
  });
  leakChecks();

  it('FWD, no policy: TCP, UDP, ICMP through the DP both ways; ARP, broadcast, multicast and IPv6 pass; the DP lists the sessions', async function () {
    const { tt, c1, c2, dp } = await setup('fwd');
    const s0 = stats(tt);
    assert.equal(ping(tt.t, c1.ns, c2.ip4, 3), 3, 'ping c1 -> c2');
    // At once: the DP ages ICMP sessions out within seconds (a loaded machine takes that long below).
    const icmp = sessionsBetween(await dp.client.listSessions(), c1.ip4, c2.ip4, { proto: ICMP });
    const [tcp, udp, tcp9] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip4, port: PORTS.tcp },
      { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
      { t: 'tcp', host: c2.ip4, port: PORTS.blocked },
    ]);
    assert.ok(tcp!.ok, `tcp c1 -> c2: ${tcp!.error}`);
    assert.equal(udp!.received, 5, 'udp c1 -> c2');
    assert.equal(udp!.duplicates, 0);
    assert.ok(tcp9!.ok, 'no policy: port 9999 passes too');
    const [hostTcp] = await runProbes(tt.t.host, [{ t: 'tcp', host: c1.ip4, port: PORTS.tcpHost }]);
    assert.ok(hostTcp!.ok, `tcp host -> c1 through the DP: ${hostTcp!.error}`);

    // What FWD never sends to the DP still works with the DP inline.
    tt.t.ip(c1.ns, 'neigh', 'flush', 'dev', 'eth0');
    await runProbes(c1.ns, [{ t: 'udp', host: c2.ip4, port: PORTS.udpArp, count: 1 }]);
    const [n] = JSON.parse(tt.t.ip(c1.ns, '-j', 'neigh', 'show', c2.ip4)) as Array<{ lladdr?: string }>;
    assert.equal(n?.lladdr, c2.mac, 'ARP resolved c2 to its real MAC');
    const mc = await startServer(tt.t, c2.ns, 'mcast');
    await runProbes(c1.ns, [
      { t: 'send', host: BCAST4, port: PORTS.mcast, count: 3, broadcast: true },
      { t: 'send', host: MCAST_GROUP, port: PORTS.mcast, count: 3, multicast: true },
    ]);
    await waitFor('3 broadcasts and 3 multicasts at c2', () => (mc.counts.get(`mcast/${PORTS.mcast}`) ?? 0) >= 6, 3000);
    assert.equal(ping(tt.t, c1.ns, c2.ip6, 3), 3, 'ping6 c1 -> c2');
    assert.equal(ping(tt.t, c1.ns, HOST_IP6, 2), 2, 'ping6 c1 -> host');
    const [tcp6] = await runProbes(c1.ns, [{ t: 'tcp', host: c2.ip6, port: PORTS.tcp }]);
    assert.ok(tcp6!.ok, 'tcp6 c1 -> c2');

    const s1 = stats(tt);
    const toDp = sum(s1, 'to_dp') - sum(s0, 'to_dp');
    const fromDp = sum(s1, 'from_dp') - sum(s0, 'from_dp');
    assert.ok(toDp > 0, 'frames went to the DP');
    assert.equal(fromDp, toDp, `the DP returned every frame it got (${fromDp} of ${toDp})`);
    const ss = await waitFor('the DP to list the TCP session', async () => {
      const l = await dp.client.listSessions();
      return sessionsBetween(l, c1.ip4, c2.ip4, { proto: TCP, port: PORTS.tcp }).length ? l : undefined;
    }, 3000);
    assert.ok(sessionsBetween(ss, c1.ip4, c2.ip4, { proto: UDP, port: PORTS.udp }).length >= 1, 'a UDP session');
    assert.ok(icmp.length >= 1, 'an ICMP session');
    assert.ok(sessionsBetween(ss, HOST_IP4, c1.ip4, { proto: TCP, port: PORTS.tcpHost }).length >= 1, 'the host -> c1 session');
    const dev = await dp.client.counterDevice();
    assert.ok(dev.tcpPackets > 0n && dev.udpPackets > 0n && dev.icmpPackets > 0n, 'the DP counted TCP, UDP and ICMP');
  });
  it('FWD with --ipv6-to-dp: IPv6 unicast (ICMPv6, TCP, UDP) goes through the DP and passes', async function () {
    const { tt, c1, c2, dp } = await setup('fwd', { extra: ['--ipv6-to-dp'] });
    const s0 = stats(tt);
    assert.equal(ping(tt.t, c1.ns, c2.ip6, 3), 3, 'ping6 c1 -> c2');
    const [tcp6, udp6] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip6, port: PORTS.tcp },
      { t: 'udp', host: c2.ip6, port: PORTS.udp, count: 5 },
    ]);
    assert.ok(tcp6!.ok, `tcp6: ${tcp6!.error}`);
    assert.equal(udp6!.received, 5, 'udp6');
    const s1 = stats(tt);
    assert.ok(sum(s1, 'to_dp') - sum(s0, 'to_dp') >= 20, 'IPv6 frames went to the DP');
    assert.equal(sum(s1, 'from_dp') - sum(s0, 'from_dp'), sum(s1, 'to_dp') - sum(s0, 'to_dp'), 'and all came back');
    const v6 = (await dp.client.listSessions()).filter((x) => x.etherType === 0x86dd);
    assert.ok(v6.some((x) => x.ipProto === TCP && x.serverPort === PORTS.tcp && x.clientIp === c1.ip6 && x.serverIp === c2.ip6), `the DP lists the TCP6 session: ${JSON.stringify(v6)}`);
  });

  it('FWD with a deny rule: exactly the denied port is blocked (TCP and UDP, from a container and from the host), the rest passes', async function () {
    const { tt, c1, c2, p2, dp } = await setup('fwd');
    await denyPort(dp, p2, c2, PORTS.blocked);
    const cap = await capture(tt.t, c2.ns, 'eth0', ['port', String(PORTS.blocked)]);
    const [tcpB, udpB, tcp, udp] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip4, port: PORTS.blocked, timeoutMs: 700 },
      { t: 'udp', host: c2.ip4, port: PORTS.blocked, count: 3, timeoutMs: 500 },
      { t: 'tcp', host: c2.ip4, port: PORTS.tcp },
      { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
    ]);
    const [hostB, hostOk] = await runProbes(tt.t.host, [
      { t: 'tcp', host: c2.ip4, port: PORTS.blocked, timeoutMs: 700 },
      { t: 'tcp', host: c2.ip4, port: PORTS.tcpHost },
    ]);
    // The rule is c2's ingress: c1's own port 9999 stays open.
    const [reverse] = await runProbes(c2.ns, [{ t: 'tcp', host: c1.ip4, port: PORTS.blocked }]);
    const frames = await cap.stop();
    assert.equal(tcpB!.ok, false, 'tcp c1 -> c2:9999 blocked');
    assert.equal(udpB!.received, 0, 'udp c1 -> c2:9999 blocked');
    assert.equal(hostB!.ok, false, 'tcp host -> c2:9999 blocked');
    assert.ok(tcp!.ok && hostOk!.ok, 'tcp to c2:8080 and :8081 pass');
    assert.equal(udp!.received, 5, 'udp to c2:8080 passes');
    assert.equal(ping(tt.t, c1.ns, c2.ip4, 3), 3, 'ping passes');
    assert.ok(reverse!.ok, 'c2 -> c1:9999 passes (the rule is on c2 only)');
    assert.equal(frames.filter((f) => f.line.includes(`${c2.ip4}.${PORTS.blocked}`) && f.line.includes(`> ${c2.ip4}`)).length, 0, 'no frame to c2:9999 reached c2');
    // The DP saw the requests (at c1's egress) and no reply; it keeps no session of the denied side.
    const ss = sessionsBetween(await dp.client.listSessions(), c1.ip4, c2.ip4, { port: PORTS.blocked }).filter((x) => x.clientIp === c1.ip4);
    assert.ok(ss.some((x) => x.ipProto === UDP && x.clientPkts === 3 && x.serverPkts === 0), 'the DP saw 3 datagrams to c2:9999, no reply');
    assert.ok(ss.some((x) => x.ipProto === TCP && x.serverPkts === 0), 'and a SYN to c2:9999, no reply');
  });

  it("FWD: a deny mid-stream makes the DP inject TCP resets; each reaches its own side with the real MACs", async function () {
    const { tt, c1, c2, p2, dp } = await setup('fwd');
    const port = 5555;
    const rst = ['tcp', 'port', String(port), 'and', 'tcp[tcpflags] & tcp-rst != 0'];
    const at1 = await capture(tt.t, c1.ns, 'eth0', rst);
    const at2 = await capture(tt.t, c2.ns, 'eth0', rst);
    const tr = await startTcpTransfer({ sender: nsView(c1.ns), receiver: nsView(c2.ns), to: c2.ip4, port, untilStopped: true, rate: 200000 });
    await waitFor('the stream to flow through the DP', async () => {
      const l = sessionsBetween(await dp.client.listSessions(), c1.ip4, c2.ip4, { proto: TCP, port });
      return l.some((x) => x.clientBytes > 20000);
    }, 10000, 100);
    await denyPort(dp, p2, c2, port, TCP);
    const err = await tr.result.then(() => undefined, (e: Error) => e);
    tr.kill();
    assert.ok(err, 'the transfer was cut');
    assert.match(err.message, /ECONNRESET|EPIPE/, 'by a reset');
    const f1 = await at1.stop();
    const f2 = await at2.stop();
    const toClient = f1.filter((f) => f.line.includes(`${c2.ip4}.${port} > ${c1.ip4}.`));
    const toServer = f2.filter((f) => f.line.includes(`${c1.ip4}.`) && f.line.includes(`> ${c2.ip4}.${port}`));
    assert.ok(toClient.length >= 1, `c1 got a reset from c2's address:\n${f1.map((f) => f.line).join('\n')}`);
    assert.ok(toServer.length >= 1, `c2 got a reset from c1's address:\n${f2.map((f) => f.line).join('\n')}`);
    assert.ok(toClient.every((f) => f.da === c1.mac && !UC.test(f.sa)), 'to c1: DA c1, no UCMAC');
    assert.ok(toServer.every((f) => f.da === c2.mac && f.sa === c1.mac), 'to c2: DA c2, SA c1');
    assert.equal(f1.filter((f) => f.line.includes(`> ${c2.ip4}.${port}`)).length, 0, "no reset meant for c2 showed up at c1");
    assert.equal(f2.filter((f) => f.line.includes(`> ${c1.ip4}.`)).length, 0, 'no reset meant for c1 showed up at c2');
  });

  it('TAP with the DP endpoints in tap: everything flows (a denied port too), the DP lists the sessions, nothing it writes gets through', async function () {
    const { tt, c1, c2, p2, dp } = await setup('tap', { tap: true });
    await denyPort(dp, p2, c2, PORTS.blocked);
    const s0 = stats(tt);
    const d0 = await dp.client.counterDevice();
    const port = 5556;
    const tr = await startTcpTransfer({ sender: nsView(c1.ns), receiver: nsView(c2.ns), to: c2.ip4, port, bytes: 4 << 20, rate: 4 << 20 });
    await denyPort(dp, p2, c2, port, TCP); // in FWD this would reset the stream
    const [tcpB, udpB, tcp, udp] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip4, port: PORTS.blocked },
      { t: 'udp', host: c2.ip4, port: PORTS.blocked, count: 5 },
      { t: 'tcp', host: c2.ip4, port: PORTS.tcp },
      { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
    ]);
    assert.equal(ping(tt.t, c1.ns, c2.ip4, 3), 3);
    const r = await tr.result;
    assert.ok(r.intact, 'the stream arrived intact: no reset reached it');
    assert.ok(tcpB!.ok && tcp!.ok, 'tcp to 9999 and 8080');
    assert.equal(udpB!.received + udp!.received, 10, 'udp to 9999 and 8080');
    assert.equal(udpB!.duplicates + udp!.duplicates, 0, 'no duplicates');
    const ss = await dp.client.listSessions();
    for (const [what, o] of [['tcp 8080', { proto: TCP, port: PORTS.tcp }], ['udp 9999', { proto: UDP, port: PORTS.blocked }], ['the stream', { proto: TCP, port }], ['icmp', { proto: ICMP }]] as const) {
      assert.ok(sessionsBetween(ss, c1.ip4, c2.ip4, o).length >= 1, `the DP saw ${what}`);
    }
    assert.ok(ss.filter((x) => x.serverPort === PORTS.blocked || x.serverPort === port).every((x) => (x.flags & 0x2) !== 0), 'as TAP sessions (DPSESS_FLAG_TAP)');
    const s1 = stats(tt);
    const d1 = await dp.client.counterDevice();
    assert.ok(sum(s1, 'copy') - sum(s0, 'copy') > 1000, 'copies went to the DP');
    assert.equal(sum(s1, 'to_dp') - sum(s0, 'to_dp'), 0, 'no frame was handed to the DP to forward');
    assert.equal(sum(s1, 'from_dp') - sum(s0, 'from_dp'), 0, 'nothing came back from the DP');
    const wrote = Number(d1.txPackets - d0.txPackets);
    assert.equal(s1.global.drop_inject! - s0.global.drop_inject!, wrote, `whatever the DP wrote (${wrote}) was dropped`);
  });

  it('BYPASS: the DP never sees a frame', async function () {
    const { tt, c1, c2, dp } = await setup('bypass');
    const d0 = await dp.client.counterDevice();
    const s0 = stats(tt);
    const atDp = await capture(tt.t, tt.t.enforcer, 'vth-neuv', []);
    assert.equal(ping(tt.t, c1.ns, c2.ip4, 3), 3);
    const [tcp, udp] = await runProbes(c1.ns, [
      { t: 'tcp', host: c2.ip4, port: PORTS.tcp },
      { t: 'udp', host: c2.ip4, port: PORTS.udp, count: 5 },
    ]);
    const [host] = await runProbes(tt.t.host, [{ t: 'tcp', host: c1.ip4, port: PORTS.tcpHost }]);
    assert.ok(tcp!.ok && host!.ok);
    assert.equal(udp!.received, 5);
    const d1 = await dp.client.counterDevice();
    const s1 = stats(tt);
    const frames = await atDp.stop();
    assert.ok(sum(s1, 'to_peer') - sum(s0, 'to_peer') >= 20, 'frames went straight to the peer');
    for (const v of ['to_dp', 'copy', 'from_dp']) assert.equal(sum(s1, v) - sum(s0, v), 0, `${v}: none`);
    // vth-neuv's own IPv6 chatter (router solicitations) may reach the ring; no frame of a pair does.
    assert.deepEqual(frames.filter((f) => UC.test(f.sa) || UC.test(f.da)).map((f) => f.line), [], 'no frame of a pair on vth-neuv');
    assert.equal(d1.ipv4Packets - d0.ipv4Packets, 0n, 'the DP inspected nothing');
    assert.deepEqual(await dp.client.listSessions(), [], 'and lists no session');
  });
});
