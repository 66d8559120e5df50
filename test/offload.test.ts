/**
 * Flow offload end to end: a host and a workload netns joined through one
 * pair in FWD, the stub DP on vth-neuv playing an enforcer DP that offloads
 * (build/stub-dp --offload-after N --pin-root DIR), and real traffic:
 *
 * - an allowed TCP transfer starts through the DP and, once the DP has
 *   offloaded it, continues in the kernel (FAST) with every byte intact
 *   (SHA-256 of the stream at both ends) and the DP seeing next to none of
 *   it; its FIN retires the entry;
 * - a denied flow is dropped in the kernel after the DP's first decision
 *   (the DP sees no more of it);
 * - a TCP RST retires an allow entry and reaches the DP;
 * - an entry that expires hands its flow back to the DP;
 * - frames whose IPv4 and L4 headers are not in the skb's linear data (from
 *   trafgen's TX ring) take their ALLOW and DENY entries like any other.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { waitFor } from '../harness/proc';
import { StubDp } from '../harness/stub-dp';
import { ucmac, formatMac, parseMac } from '../src/mac';
import { cli, makePinRoot, onCleanup, requireKernel, leakChecks } from './helpers';
import { TCP, TCP_ACK, TCP_FIN, UDP, ip4 } from '../harness/frames';
import { snmpCounter, startTcpTransfer, trafgenRing, udpStream } from './traffic';
import { PairTopology, makePairTopology } from './topology';

const BLOCKED = 9999;

interface Setup {
  t: PairTopology;
  pins: string;
  id: number;
  ucmac: string;
  run(args: string[]): string;
  stub: StubDp;
}

interface FlowRow {
  id: number;
  protoName: string;
  verdict: string;
  a: { addr: string; port: number };
  b: { addr: string; port: number };
  packets: number;
}

type Counters = Record<'to_wl' | 'from_wl', Record<string, { packets: number; bytes: number }>>;

async function setup(subnet: string, stubArgs: string[]): Promise<Setup> {
  const t = makePairTopology({ subnet });
  const pins = makePinRoot();
  const run = (args: string[]) => {
    const r = cli(['--netns', t.enforcer.name, '--bpffs', pins, ...args]);
    assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  run(['load']);
  onCleanup(() => cli(['--netns', t.enforcer.name, '--bpffs', pins, 'unload']));
  const p = JSON.parse(run(['pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'fwd', '--json'])) as { id: number; ucmac: string };
  // The stub DP with the offload policy; nsenter, as it reads the pins.
  const stub = await StubDp.start(t.enforcer.name, { dropPorts: [BLOCKED], args: ['--pin-root', pins, ...stubArgs], nsenter: true });
  return { t, pins, id: p.id, ucmac: p.ucmac, run, stub };
}

function flows(s: Setup): FlowRow[] {
  return JSON.parse(s.run(['flow', 'list', '--json'])) as FlowRow[];
}

function counters(s: Setup): Counters {
  const st = JSON.parse(s.run(['stats', '--json'])) as { pairs: Array<{ id: number; counters: Counters }> };
  return st.pairs.find((p) => p.id === s.id)!.counters;
}

const sum = (c: Counters, v: string) => c.to_wl[v]!.packets + c.from_wl[v]!.packets;

/** Sends UDP datagrams from a fixed source port (so they are one flow), inside a netns. */
function udpFromPort(ns: string, src: string, sport: number, to: string, dport: number, count: number): void {
  const js = `const s=require('dgram').createSocket('udp4');s.bind(${sport},'${src}',async()=>{for(let i=0;i<${count};i++){await new Promise(r=>s.send(Buffer.alloc(32,i),${dport},'${to}',r));await new Promise(r=>setTimeout(r,2))}s.close()})`;
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, '-e', js], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
}

/**
 * IPv4 datagrams that reached a netns's IP layer (Ip InReceives; counted
 * before the header checksum is checked, and whether or not the frame came
 * by bpf_redirect_peer, which device counters of older kernels miss).
 */
const ipIn = (ns: { name: string }) => snmpCounter(ns.name, 'Ip', 'InReceives');

describe('flow offload end to end: the stub DP offloads, the kernel carries on (kernel)', function () {
  this.timeout(180000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('an allowed TCP flow starts through the DP and continues offloaded: every byte intact, the DP sees next to none; FIN retires the entry', async function () {
    const N = 40;
    const s = await setup('10.79.0', ['--offload-after', String(N)]);
    const c0 = counters(s);
    const MiB = 64;
    const tr = await startTcpTransfer({ sender: s.t.host, receiver: s.t.workload, to: s.t.wlAddr, port: 6100, bytes: MiB << 20 });
    const r = await tr.result;
    assert.equal(r.receivedBytes, MiB << 20);
    assert.ok(r.intact, 'SHA-256 and length equal at both ends: no lost, duplicated or reordered byte');
    const c1 = counters(s);
    const st = await s.stub.counts();
    const dpFrames = StubDp.frames(st, 'tcp/6100', s.ucmac).frames;
    if (process.env.NEUV_DEBUG) console.log(JSON.stringify({ c0, c1, st }, null, 1));
    const fast = sum(c1, 'fast') - sum(c0, 'fast');
    const toDp = sum(c1, 'to_dp') - sum(c0, 'to_dp');
    // eslint-disable-next-line no-console
    console.log(`      ${MiB} MiB: ${fast} frames offloaded (fast), ${toDp} through the DP (the DP read ${dpFrames}), stub offloaded ${st.offloaded}x; TCP retransmitted ${r.retransmitted}, out of order ${r.reordered}, ${((MiB * 8 * 1.048576) / r.seconds / 1000).toFixed(2)} Gbit/s`);
    assert.ok((st.offloaded ?? 0) >= 1, 'the stub offloaded the flow');
    assert.equal(st.offload_errors, 0);
    assert.ok(c1.to_wl.fast!.packets > c0.to_wl.fast!.packets && c1.from_wl.fast!.packets > c0.from_wl.fast!.packets, 'both directions took the fast path');
    assert.ok(fast > 10 * dpFrames, `the DP saw next to none of the flow (${dpFrames} frames vs ${fast} offloaded)`);
    assert.ok(dpFrames >= N, 'the flow started through the DP');
    // The FIN retired the entry (and the closing frames went through the DP).
    await waitFor('the FIN to retire the entry', () => flows(s).every((f) => !(f.protoName === 'tcp' && (f.a.port === 6100 || f.b.port === 6100))) || undefined, 3000);
  });

  it('a denied flow is dropped in the kernel after the DP decided once; the DP sees no more of it', async function () {
    const s = await setup('10.79.1', ['--offload-after', '20']);
    const c0 = counters(s);
    const COUNT = 200;
    const res = await udpStream({ senderNs: s.t.host.name, receiverNs: s.t.workload.name, to: s.t.wlAddr, port: BLOCKED, count: COUNT, rate: 1000, idleMs: 300, timeoutMs: 2000 });
    assert.equal(res.sent, COUNT);
    assert.equal(res.received, 0, 'nothing reached the workload');
    const st = await s.stub.counts();
    const seen = StubDp.frames(st, `udp/${BLOCKED}`, s.ucmac, 'to_wl');
    const c1 = counters(s);
    const dropped = c1.to_wl.flow_drop!.packets - c0.to_wl.flow_drop!.packets;
    assert.ok((st.denied ?? 0) >= 1, 'the stub wrote a DENY entry');
    assert.ok(seen.frames >= 1 && seen.frames <= 5, `the DP saw the first datagram(s) only (${seen.frames})`);
    assert.equal(seen.frames + dropped, COUNT, 'every other datagram was dropped in the kernel (flow_drop)');
    const [deny] = flows(s).filter((f) => f.protoName === 'udp' && f.verdict === 'deny');
    assert.ok(deny, 'the DENY entry is listed');
    assert.equal(deny.packets, dropped);
    // TCP to the blocked port: the SYN is decided by the DP, its retransmissions die in the kernel.
    const tcp = spawnSync('ip', ['netns', 'exec', s.t.host.name, process.execPath, '-e',
      `const c=require('net').connect({host:'${s.t.wlAddr}',port:${BLOCKED},timeout:2500});c.on('connect',()=>process.exit(1));c.on('timeout',()=>process.exit(0));c.on('error',()=>process.exit(2))`], { encoding: 'utf8' });
    assert.equal(tcp.status, 0, 'the connection timed out');
    const st2 = await s.stub.counts();
    assert.equal(StubDp.frames(st2, `tcp/${BLOCKED}`, s.ucmac, 'to_wl').frames, 1, 'the DP saw the first SYN only');
    assert.ok(counters(s).to_wl.flow_drop!.packets - c1.to_wl.flow_drop!.packets >= 1, 'the retransmitted SYN was dropped in the kernel');
  });

  it('a TCP RST retires an allow entry and reaches the DP', async function () {
    const s = await setup('10.79.2', []);
    s.run(['flow', 'allow', '--id', String(s.id), '--proto', 'tcp', '--src', `${s.t.hostAddr}:45000`, '--dst', `${s.t.wlAddr}:7`]);
    const c0 = counters(s);
    // Nothing listens on port 7: the SYN goes the fast way, the workload answers with a RST.
    const r = spawnSync('ip', ['netns', 'exec', s.t.host.name, process.execPath, '-e',
      `const c=require('net').connect({host:'${s.t.wlAddr}',port:7,localPort:45000,timeout:3000});c.on('error',(e)=>process.exit(e.code==='ECONNREFUSED'?0:1));c.on('timeout',()=>process.exit(3))`], { encoding: 'utf8' });
    assert.equal(r.status, 0, 'the RST came back to the host (through the DP)');
    const c1 = counters(s);
    assert.equal(c1.to_wl.fast!.packets - c0.to_wl.fast!.packets, 1, 'the SYN took the fast path');
    assert.equal(c1.from_wl.to_dp!.packets - c0.from_wl.to_dp!.packets, 1, 'the RST went to the DP');
    assert.deepEqual(flows(s), [], 'the RST deleted the entry');
    const st = await s.stub.counts();
    assert.equal(StubDp.frames(st, 'tcp/7', s.ucmac, 'from_wl').frames, 1);
  });

  it('an entry that expires hands its flow back to the DP', async function () {
    const s = await setup('10.79.3', []);
    // A deadline long enough for a slow (loaded or emulated) machine to send the first batch before it.
    const c0 = counters(s);
    const st0 = await s.stub.counts();
    const TIMEOUT_S = 8;
    // The CLI sets the deadline somewhere between these two instants (it takes seconds to start in an
    // emulated VM): the first batch must go out before the earliest, the second after the latest.
    const before = Date.now();
    s.run(['flow', 'allow', '--id', String(s.id), '--proto', 'udp', '--src', `${s.t.hostAddr}:5300`, '--dst', `${s.t.wlAddr}:5301`, '--timeout', String(TIMEOUT_S)]);
    const installed = Date.now();
    udpFromPort(s.t.host.name, s.t.hostAddr, 5300, s.t.wlAddr, 5301, 20);
    assert.ok(Date.now() - before < TIMEOUT_S * 1000, 'the first batch went out before the deadline');
    const c1 = counters(s);
    const st1 = await s.stub.counts();
    assert.equal(c1.to_wl.fast!.packets - c0.to_wl.fast!.packets, 20, 'before the deadline: all offloaded');
    assert.equal(StubDp.frames(st1, 'udp/5300', s.ucmac, 'to_wl').frames - StubDp.frames(st0, 'udp/5300', s.ucmac, 'to_wl').frames, 0, 'the DP saw none');
    await new Promise((r) => setTimeout(r, Math.max(0, installed + TIMEOUT_S * 1000 + 300 - Date.now())));
    udpFromPort(s.t.host.name, s.t.hostAddr, 5300, s.t.wlAddr, 5301, 20);
    const c2 = counters(s);
    const st2 = await s.stub.counts();
    assert.equal(c2.to_wl.fast!.packets - c1.to_wl.fast!.packets, 0, 'after the deadline: none offloaded');
    assert.equal(StubDp.frames(st2, 'udp/5300', s.ucmac, 'to_wl').frames - StubDp.frames(st1, 'udp/5300', s.ucmac, 'to_wl').frames, 20, 'the DP saw every datagram again');
    assert.deepEqual(flows(s).filter((f) => f.protoName === 'udp'), [], 'the expired entry was deleted');
    // And a switch to another mode clears what is left of the pair's entries.
    s.run(['flow', 'allow', '--id', String(s.id), '--proto', 'udp', '--src', `${s.t.hostAddr}:5300`, '--dst', `${s.t.wlAddr}:5301`]);
    s.run(['pair', 'mode', '--id', String(s.id), 'bypass']);
    assert.deepEqual(flows(s), []);
    assert.equal(formatMac(ucmac(s.id)), s.ucmac);
  });

  it('frames with their headers outside the linear data (AF_PACKET TX ring) take their ALLOW and DENY entries', async function () {
    const N = 50;
    const s = await setup('10.79.4', []);
    const { hostAddr: H, wlAddr: W } = s.t;
    const wl = parseMac(s.t.wlMac);
    const host = parseMac(s.t.hostMac);
    // IPv4 header checksums left 0 (frames.ts): the receiving stack counts and discards them, and
    // sends nothing back (no ICMP port unreachable, no TCP RST) to disturb the counters or retire an entry.
    const stubFrames = async (kind: string) => StubDp.frames(await s.stub.counts(), kind, s.ucmac).frames;
    s.run(['flow', 'allow', '--id', String(s.id), '--proto', 'udp', '--src', `${H}:5400`, '--dst', `${W}:5401`]);
    s.run(['flow', 'allow', '--id', String(s.id), '--proto', 'tcp', '--src', `${W}:5410`, '--dst', `${H}:5411`]);
    s.run(['flow', 'deny', '--id', String(s.id), '--proto', 'udp', '--src', `${H}:5420`, '--dst', `${W}:5421`]);
    const packetsOf = (port: number) => flows(s).find((f) => f.a.port === port || f.b.port === port)?.packets;

    // ALLOW, vex (towards the workload): UDP.
    let c0 = counters(s);
    let rx0 = ipIn(s.t.workload);
    trafgenRing(s.t.host, s.t.hostIf, [ip4(wl, host, { proto: UDP, src: H, dst: W, sport: 5400, dport: 5401 })], N);
    await waitFor('the frames to reach the workload', () => ipIn(s.t.workload) - rx0 >= N || undefined, 5000).catch(() => undefined);
    let c1 = counters(s);
    assert.equal(c1.to_wl.to_dp!.packets - c0.to_wl.to_dp!.packets, 0, 'UDP, vex: none went to the DP');
    assert.equal(c1.to_wl.fast!.packets - c0.to_wl.fast!.packets, N, 'UDP, vex: every frame took the fast path');
    assert.equal(ipIn(s.t.workload) - rx0, N, 'UDP, vex: they all reached the workload');
    assert.equal(packetsOf(5400), N, 'UDP, vex: the entry counted them');
    assert.equal(await stubFrames('udp/5400'), 0, 'UDP, vex: the DP saw none');

    // ALLOW, vin (from the workload): TCP with IP options (IHL 6), ACKs, then FINs (the first retires the entry).
    const tcp = (flags: number) => ip4(host, wl, { proto: TCP, src: W, dst: H, sport: 5410, dport: 5411, ihl: 6, tcpFlags: flags });
    c0 = counters(s);
    rx0 = ipIn(s.t.host);
    trafgenRing(s.t.workload, s.t.wlIf, [tcp(TCP_ACK)], N);
    await waitFor('the frames to reach the host', () => ipIn(s.t.host) - rx0 >= N || undefined, 5000).catch(() => undefined);
    c1 = counters(s);
    assert.equal(c1.from_wl.to_dp!.packets - c0.from_wl.to_dp!.packets, 0, 'TCP, vin: none went to the DP');
    assert.equal(c1.from_wl.fast!.packets - c0.from_wl.fast!.packets, N, 'TCP, vin: every frame took the fast path');
    assert.equal(ipIn(s.t.host) - rx0, N, 'TCP, vin: they all reached the host');
    assert.equal(packetsOf(5410), N, 'TCP, vin: the entry counted them');
    trafgenRing(s.t.workload, s.t.wlIf, [tcp(TCP_FIN | TCP_ACK)], N);
    await waitFor('the FINs to reach the DP', async () => (await stubFrames('tcp/5410')) >= N || undefined, 5000).catch(() => undefined);
    const c2 = counters(s);
    assert.equal(c2.from_wl.fast!.packets - c1.from_wl.fast!.packets, 0, 'TCP FIN, vin: none took the fast path');
    assert.equal(c2.from_wl.to_dp!.packets - c1.from_wl.to_dp!.packets, N, 'TCP FIN, vin: all went to the DP');
    assert.equal(packetsOf(5410), undefined, 'the FIN retired the entry');

    // DENY, vex: dropped in the kernel.
    c0 = counters(s);
    rx0 = ipIn(s.t.workload);
    trafgenRing(s.t.host, s.t.hostIf, [ip4(wl, host, { proto: UDP, src: H, dst: W, sport: 5420, dport: 5421 })], N);
    await waitFor('the entry to count the frames', () => (packetsOf(5420) ?? 0) >= N || undefined, 5000).catch(() => undefined);
    c1 = counters(s);
    assert.equal(c1.to_wl.to_dp!.packets - c0.to_wl.to_dp!.packets, 0, 'UDP deny, vex: none went to the DP');
    assert.equal(c1.to_wl.flow_drop!.packets - c0.to_wl.flow_drop!.packets, N, 'UDP deny, vex: every frame was dropped in the kernel (flow_drop)');
    assert.equal(packetsOf(5420), N, 'UDP deny, vex: the entry counted them');
    assert.equal(await stubFrames('udp/5420'), 0, 'UDP deny, vex: the DP saw none');
    assert.equal(ipIn(s.t.workload) - rx0, 0, 'UDP deny, vex: nothing reached the workload');
  });
});
