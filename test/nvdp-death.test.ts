/**
 * Kernel suite: NeuVector's real DP SIGKILLed mid-stream in FWD, under each
 * failure policy of the supervisor (src/dp/watch.ts): fail-closed leaves the
 * FWD pair black-holed until the DP is back; fail-open switches it to BYPASS
 * within a second and back to FWD once the DP has been configured again.
 * The gaps are measured with a sequenced UDP stream and logged.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliSpawn, onCleanup, TIME_SCALE, leakChecks } from './helpers';
import { makeTopology, TestTopology, waitFor } from './topology';
import { startUdpStream } from './traffic';
import { addEndpoint, interceptC, requireNvdp, startNvdp } from './nvdp-fixture';
import type { NvDp } from '../harness/nvdp';
import { DpWatch, FailPolicy } from '../src/dp/watch';
import { HOST_IP4 } from '../harness/topology';

const RATE = 1000; // datagrams per second: a gap of N ms loses about N datagrams

function modeOf(tt: TestTopology, id: number): string | undefined {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: Array<{ id: number; mode: string }> }).pairs.find((p) => p.id === id)?.mode;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** c1 in FWD through the real DP (an endpoint of it), a watcher with `policy` that configures each new DP. */
async function setup(policy: FailPolicy) {
  const tt = makeTopology({ containers: 1 });
  const c1 = tt.c[0]!;
  const p1 = interceptC(tt, c1, 'fwd');
  const dps: NvDp[] = [];
  const start = async () => {
    const dp = await startNvdp(tt);
    dps.push(dp);
    return dp;
  };
  const dp = await start();
  await addEndpoint(dp.client, p1, c1);
  const current = () => dps[dps.length - 1]!;
  const w = DpWatch.start({
    pinRoot: tt.pins, netns: tt.t.enforcer, policy,
    locate: () => (current().alive() ? { pid: current().pid, root: current().root } : undefined),
    onBack: (client) => addEndpoint(client, p1, c1).then(() => true),
  });
  onCleanup(() => void w.stop());
  await w.until('up');
  /** A stream c1 -> host on `port` until stopped. */
  const stream = (port: number) => startUdpStream({ senderNs: c1.ns, receiverNs: tt.t.host, to: HOST_IP4, port, count: 0, rate: RATE, untilStopped: true, idleMs: 500 });
  /** A stream on `port`, the DP SIGKILLed 1 s into it; the watcher must see that within 1 s. */
  const killMidStream = async (port: number) => {
    const streamAt = Date.now();
    const s = await stream(port);
    await sleep(1000);
    const killedAt = Date.now();
    current().kill();
    const down = (await w.until('down', 5000 * TIME_SCALE))!;
    assert.ok(down.time - killedAt < 1000 * TIME_SCALE, `the watcher saw it within 1 s (${down.time - killedAt} ms)`);
    return { s, streamAt, killedAt, down };
  };
  return { tt, p1, w, start, stream, killMidStream };
}

describe('NeuVector DP death: fail-closed and fail-open (kernel)', function () {
  this.timeout(120000);
  before(function () {
    this.timeout(300000);
    requireNvdp(this);
  });
  leakChecks();

  it('fail-closed (default): the FWD pair is black-holed from the kill until the DP is back and configured, then flows again', async function () {
    const { tt, p1, w, start, killMidStream } = await setup('closed');
    const { s, streamAt, killedAt, down } = await killMidStream(5010);
    assert.deepEqual(down.switched, [], 'fail-closed switches nothing');
    await sleep(1500);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd', 'still FWD');
    // A new DP, configured by the watcher's onBack (the agent's job), as in
    // fail-open. Configured twice (here and by onBack), the DP's endpoint went
    // back to TAP and inline again under the stream and wrote 1-4 datagrams twice.
    await start();
    const up = (await w.until('up', 10000 * TIME_SCALE))!;
    const backAt = up.time;
    await sleep(1000);
    s.stop();
    const r = await s.result;
    const outage = backAt - killedAt;
    // eslint-disable-next-line no-console
    console.log(`      fail-closed: DP down seen after ${down.time - killedAt} ms; stream gap ${r.maxGapMs} ms, ${r.lost} of ${r.sent} lost over an outage of ${outage} ms (kill to restarted + configured)`);
    assert.ok(r.maxGapMs >= outage - 300, `traffic stopped for the outage (gap ${r.maxGapMs} ms of ${outage})`);
    // At the rate the sender really kept (a loaded machine sends fewer than RATE a second).
    const perMs = Math.min(RATE / 1000, r.sent / (Date.now() - streamAt));
    assert.ok(r.lost >= (outage - 300) * perMs * 0.8, `datagrams lost while black-holed (${r.lost}, at ${(perMs * 1000).toFixed(0)}/s)`);
    assert.deepEqual(up.switched, []);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    assert.equal(r.duplicated, 0);
  });

  it('fail-open: BYPASS within 1 s of the kill, FWD again once the DP is back; the gap both ways, no loss on the way back', async function () {
    const { tt, p1, w, start, stream, killMidStream } = await setup('open');
    // Way out: kill mid-stream, until the pair is in BYPASS.
    const { s: a, killedAt, down } = await killMidStream(5011);
    assert.deepEqual(down.switched, [p1.pair.id], 'the FWD pair went to BYPASS');
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    await sleep(1000);
    a.stop();
    const ra = await a.result;

    // Way back: a new DP, configured by the watcher's onBack (the agent's job), then FWD.
    const b = await stream(5012);
    await sleep(500);
    const dp2 = await start();
    const up = (await w.until('up', 10000 * TIME_SCALE))!;
    assert.deepEqual(up.switched, [p1.pair.id], 'back to FWD');
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    const c0 = await dp2.client.counterDevice();
    await sleep(1000);
    b.stop();
    const rb = await b.result;
    const c1n = await dp2.client.counterDevice();
    // eslint-disable-next-line no-console
    console.log(`      fail-open: down seen after ${down.time - killedAt} ms, ${down.switched.length} pair to BYPASS in ${down.switchMs.toFixed(1)} ms; gap out ${ra.maxGapMs} ms (${ra.lost} of ${ra.sent} lost); ` +
      `back: to FWD in ${up.switchMs.toFixed(1)} ms, gap ${rb.maxGapMs} ms (${rb.lost} of ${rb.sent} lost)`);
    assert.ok(ra.maxGapMs < 1000 * TIME_SCALE, `the way out lost under 1 s of traffic (gap ${ra.maxGapMs} ms)`);
    assert.equal(rb.lost, 0, 'nothing lost on the way back');
    assert.equal(ra.duplicated + rb.duplicated, 0);
    assert.ok(c1n.udpPackets - c0.udpPackets >= 500n, 'the stream goes through the new DP again');
  });
  it('the CLI: `watch --dp PIDFILE --fail open --json` prints down/up events and switches the pair', async function () {
    const tt = makeTopology({ containers: 1 });
    const c1 = tt.c[0]!;
    const p1 = interceptC(tt, c1, 'fwd');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-watch-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pidfile = path.join(dir, 'dp.pid');
    const startDp = async () => {
      const dp = await startNvdp(tt);
      await addEndpoint(dp.client, p1, c1);
      fs.writeFileSync(pidfile, `${dp.pid}\n`);
      return dp;
    };
    const dp = await startDp();
    const child = cliSpawn(['--netns', tt.t.enforcer, '--bpffs', tt.pins, 'watch', '--dp', pidfile, '--fail', 'open', '--json']);
    onCleanup(() => child.kill('SIGKILL'));
    const events: Array<{ state: string; switched: number[]; policy: string }> = [];
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) events.push(JSON.parse(buf.slice(0, i)));
    });
    const seen = (state: string, n: number) => waitFor(`${n} '${state}' events`, () => events.filter((e) => e.state === state).length >= n, 5000);
    await seen('up', 1);
    dp.kill();
    await seen('down', 1);
    assert.deepEqual(events.find((e) => e.state === 'down')!.switched, [p1.pair.id]);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    await startDp();
    await seen('up', 2);
    assert.deepEqual(events.filter((e) => e.state === 'up')[1]!.switched, [p1.pair.id]);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    assert.equal(events[0]!.policy, 'open');
    child.kill('SIGTERM');
    const code = await new Promise((r) => child.on('close', r));
    assert.equal(code, 0, 'exits 0 on SIGTERM');
  });
});
