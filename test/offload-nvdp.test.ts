/**
 * Kernel suite: automatic offload in the service (`serve --dp PIDFILE
 * --offload RULE`, src/offload/) with NeuVector's real DP on vth-neuv:
 *
 * - new TCP sessions reach the DP first: each is a new session in the DP
 *   (its device counters), and each entry the service wrote is for a session
 *   the DP had listed with at least after=N packets each way; the rest of
 *   the session is carried by the kernel (fast), every byte intact;
 * - the rule is kept: a SIGKILLed service's successor resumes it; PUT
 *   /v1/offload sets another one, a bad one is refused and changes nothing;
 * - a policy changed under an offloaded UDP stream: at the entry's recheck
 *   deadline the flow's next frame goes to the DP, which now denies it, and
 *   the service drops the rest of it in the kernel (flow_drop).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { leakChecks, onCleanup, TIME_SCALE } from './helpers';
import { makeTopology, nsView, TestTopology, waitFor } from './topology';
import { startTcpTransfer, startUdpStream } from './traffic';
import { addEndpoint, denyPort, interceptC, requireNvdp, startNvdp } from './nvdp-fixture';
import { serve, Served } from './service-fixture';
import { offloadRulePath } from '../src/offload';
import { watchStatePath } from '../src/dp/watch';
import { PORTS } from '../harness/topology';
import type { NvDp } from '../harness/nvdp';
import type { InterceptResult } from '../src/intercept';

const N = 4;

interface Counters {
  to_wl: Record<string, { packets: number }>;
  from_wl: Record<string, { packets: number }>;
}

async function counters(s: Served, id: number): Promise<Counters> {
  return (await s.client.stats()).pairs.find((p) => p.id === id)!.counters as unknown as Counters;
}
const both = (c: Counters, v: string) => c.to_wl[v]!.packets + c.from_wl[v]!.packets;

async function setup(rule: string): Promise<{ tt: TestTopology; p1: InterceptResult; dp: NvDp; pidfile: string; s: Served }> {
  const tt = makeTopology({ containers: 1 });
  const c1 = tt.c[0]!;
  const p1 = interceptC(tt, c1, 'fwd');
  const dp = await startNvdp(tt);
  await addEndpoint(dp.client, p1, c1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-offload-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  onCleanup(() => fs.rmSync(offloadRulePath(tt.pins), { force: true }));
  onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
  const pidfile = path.join(dir, 'dp.pid');
  fs.writeFileSync(pidfile, `${dp.pid}\n`);
  const s = await serve(tt.t.enforcer, tt.pins, ['--dp', pidfile, '--offload', rule]);
  await waitFor('the service sees the DP up', async () => (await s.client.dp()).state === 'up', 20000 * TIME_SCALE, 50);
  return { tt, p1, dp, pidfile, s };
}

describe('serve --offload: what NeuVector\'s DP decided, offloaded by the service (kernel)', function () {
  this.timeout(180000 * TIME_SCALE);
  before(function () {
    this.timeout(300000);
    requireNvdp(this);
  });
  leakChecks();

  it('new TCP sessions reach the DP first, the rest goes through the kernel intact; the rule is kept across a SIGKILL, set and refused through the API', async function () {
    const { tt, p1, dp, pidfile, s } = await setup(`after=${N},every=50`);
    const c1 = tt.c[0]!;
    const id = p1.pair.id;
    const d0 = await dp.client.counterDevice();
    const c0 = await counters(s, id);
    const K = 3;
    const MiB = 48;
    for (let i = 0; i < K; i++) {
      const tr = await startTcpTransfer({ sender: nsView(tt.t.host), receiver: nsView(c1.ns), to: c1.ip4, port: 6200 + i, bytes: MiB << 20 });
      const r = await tr.result;
      assert.equal(r.receivedBytes, MiB << 20);
      assert.ok(r.intact, `transfer ${i}: every byte intact`);
    }
    const d1 = await dp.client.counterDevice();
    const c1c = await counters(s, id);
    const st = await s.client.offloadStatus();
    const ours = st.recent.filter((o) => o.proto === 'tcp' && /:620\d$/.test(o.server));
    const fast = both(c1c, 'fast') - both(c0, 'fast');
    const toDp = both(c1c, 'to_dp') - both(c0, 'to_dp');
    // eslint-disable-next-line no-console
    console.log(`      ${K} x ${MiB} MiB: ${Number(d1.tcpSessions - d0.tcpSessions)} new TCP sessions in the DP, ${ours.length} offloaded ` +
      `(the DP had seen ${ours.map((o) => `${o.dpClientPkts}/${o.dpServerPkts}`).join(', ')} packets each way), ${fast} frames fast, ${toDp} to the DP`);
    assert.ok(d1.tcpSessions - d0.tcpSessions >= BigInt(K), 'every new session was a new session in the DP: it reached the DP first');
    assert.ok(ours.length >= 1, `sessions offloaded: ${JSON.stringify({ stats: st.stats, pairs: (await s.client.pairs()).pairs.map((p) => [p.id, p.mac, p.mode]), sessions: (await dp.client.listSessions()).slice(0, 4) })}`);
    for (const o of ours) {
      assert.equal(o.verdict, 'allow');
      assert.equal(o.id, id);
      assert.ok(o.dpClientPkts >= N && o.dpServerPkts >= N, `decided by the DP first: ${o.dpClientPkts}/${o.dpServerPkts} packets each way (after=${N})`);
    }
    assert.ok(c1c.to_wl.fast!.packets > c0.to_wl.fast!.packets && c1c.from_wl.fast!.packets > c0.from_wl.fast!.packets, 'both directions in the kernel');
    assert.ok(fast > toDp, `most frames in the kernel (${fast} fast, ${toDp} to the DP)`);
    assert.deepEqual((await s.client.flows({ id })).filter((f) => f.protoName === 'tcp'), [], 'the FINs retired the entries');

    // Kept: a SIGKILLed service's successor resumes the rule.
    s.child.kill('SIGKILL');
    await s.exited;
    const s2 = await serve(tt.t.enforcer, tt.pins, ['--dp', pidfile]);
    assert.equal((s2.info as { offload?: string }).offload, `after=${N},deny=yes,idle=30,recheck=10,every=50`);
    assert.equal((await s2.client.offloadStatus()).rule, `after=${N},deny=yes,idle=30,recheck=10,every=50`);
    // A bad rule: 400, one line, the rule unchanged.
    await assert.rejects(s2.client.setOffloadRule('after=0'), (e: Error & { status?: number; code?: number }) => e.status === 400 && e.code === 2 && /rule after "0" is out of range/.test(e.message));
    assert.equal((await s2.client.offloadStatus()).rule, `after=${N},deny=yes,idle=30,recheck=10,every=50`);
    assert.equal((await s2.client.setOffloadRule('after=2,ports=80:443')).rule, 'after=2,ports=80:443,deny=yes,idle=30,recheck=10,every=100');
    assert.match(fs.readFileSync(offloadRulePath(tt.pins), 'utf8'), /"rule":"after=2,ports=80:443,/);
    assert.equal((await s2.client.request<{ rule: string }>('DELETE', '/v1/offload')).rule, 'off');
    assert.equal(fs.existsSync(offloadRulePath(tt.pins)), false, 'off: nothing kept');
  });

  it('a policy changed under an offloaded UDP stream: at the recheck deadline the DP denies it, the kernel drops the rest', async function () {
    const { tt, p1, dp, s } = await setup(`after=${N},oneway,recheck=1,every=50`);
    const c1 = tt.c[0]!;
    const id = p1.pair.id;
    const port = PORTS.udpArp; // a UDP app of the endpoint (ECHO_APPS): the DP knows c1 is the server
    const st = await startUdpStream({ senderNs: tt.t.host, receiverNs: c1.ns, to: c1.ip4, port, count: 0, rate: 1000, untilStopped: true, idleMs: 500 });
    const entry = async (verdict: string) => (await s.client.flows({ id })).find((f) => f.protoName === 'udp' && (f.a.port === port || f.b.port === port) && f.verdict === verdict);
    await waitFor('the stream offloaded (allow)', async () => (await entry('allow')) !== undefined, 20000 * TIME_SCALE, 50);
    await denyPort(dp, p1, c1, port, 17);
    await waitFor('the DP denies it at the recheck, the service drops it in the kernel', async () => (await entry('deny')) !== undefined, 20000 * TIME_SCALE, 50);
    const a = await counters(s, id);
    await new Promise((r) => setTimeout(r, 500));
    const b = await counters(s, id);
    st.stop();
    const r = await st.result;
    const dropped = both(b, 'flow_drop') - both(a, 'flow_drop');
    const toDp = both(b, 'to_dp') - both(a, 'to_dp');
    // eslint-disable-next-line no-console
    console.log(`      denied mid-stream: ${dropped} datagrams dropped in the kernel in 0.5 s, ${toDp} to the DP; ${r.unique} of ${r.sent} received`);
    assert.ok(dropped >= 100, `dropped in the kernel (${dropped})`);
    assert.ok(toDp < dropped / 10, `the DP sees next to none of it (${toDp})`);
    assert.ok(r.unique < r.sent, 'the receiver lost the denied part');
    const os2 = await s.client.offloadStatus();
    assert.ok(os2.stats.deny >= 1 && os2.stats.allow >= 1);
  });
});
