/**
 * Kernel suite: DP supervision inside `neuv-bpf serve` (serve --dp PIDFILE
 * --fail open; src/dp/watch.ts's DpWatch, the supervisor of `neuv-bpf
 * watch`) with the stub DP (no control socket: --no-dp-keep-alive). The DP
 * SIGKILLed under a UDP stream: the service fails the FWD pair open, says so
 * through GET /v1/dp and its metrics, `show` marks the pair held; the DP
 * restarted under a new pid: followed, the pair back in FWD, the stream
 * through the DP again. Fail-closed counts its losses and switches nothing.
 * Bad supervision options are refused before anything starts.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { leakChecks, onCleanup, oneErrorLine, pollingThreadsNice, requireKernel, TIME_SCALE } from './helpers';
import { killStub, makeTopology, modeOf, StubDp, stubInto, TestTopology, waitFor } from './topology';
import { startUdpStream } from './traffic';
import { sample, scrape, serve, Served } from './service-fixture';
import { watchStatePath } from '../src/dp/watch';
import { WATCH_NICE } from '../src/cli/watch';
import { HOST_IP4 } from '../harness/topology';
import type { InterceptResult } from '../src/intercept';
import type { DpStatus } from '../src/service/client';

const dpView = (s: Served): Promise<DpStatus> => s.client.dp();

async function untilState(s: Served, state: string, n = 1): Promise<DpStatus> {
  let v: DpStatus | undefined;
  await waitFor(`the service's DP supervisor: ${n} '${state}' event(s)`, async () => {
    v = await dpView(s);
    return v.state === state && v.events.filter((e) => e.state === state).length >= n;
  }, 10000 * TIME_SCALE, 20);
  return v!;
}

function setup(): { tt: TestTopology; p1: InterceptResult; pidfile: string } {
  const tt = makeTopology({ containers: 1 });
  const r = tt.run(['intercept', '--container-netns', tt.c[0]!.path, '--mode', 'fwd', '--json']);
  assert.equal(r.code, 0, r.stderr);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-svcdp-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
  return { tt, p1: JSON.parse(r.stdout) as InterceptResult, pidfile: path.join(dir, 'dp.pid') };
}

const SUPERVISE = (pidfile: string, policy: string) => ['--dp', pidfile, '--fail', policy, '--no-dp-keep-alive', '--dp-interval', '50', '--metrics', '127.0.0.1:0'];

describe('serve --dp: DP supervision inside the service, with the stub DP (kernel)', function () {
  this.timeout(120000 * TIME_SCALE);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('refuses a bare pid, --fail open without --dp and an unknown policy: one line, exit 2, nothing served', function () {
    const tt = makeTopology({ containers: 0 });
    for (const [args, re] of [
      [['--dp', '4242'], /a pid does not follow a restarted DP/],
      [['--fail', 'open'], /--fail open needs --dp/],
      [['--dp', 'local', '--fail', 'ajar'], /--fail 'ajar' is not one of closed, open/],
      [['--dp', 'dp.pid'], /is not 'local' or the absolute path of a pid file/],
    ] as const) {
      const r = tt.run(['serve', '--socket', path.join(os.tmpdir(), `nbt-svcdp-${process.pid}.sock`), ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(oneErrorLine(r), re);
    }
  });

  it('fail-open: the DP SIGKILLed under a stream, the FWD pair to BYPASS, counted and marked held; the DP restarted under a new pid, the pair back in FWD through it', async function () {
    const { tt, p1, pidfile } = setup();
    const id = p1.pair.id;
    const s1 = await stubInto(tt, pidfile);
    const s = await serve(tt.t.enforcer, tt.pins, SUPERVISE(pidfile, 'open'));
    assert.equal(s.info.datapath, 'adopted');
    assert.deepEqual(s.info.dp, { policy: 'open' });
    const up1 = await untilState(s, 'up');
    assert.equal(up1.pid, s1.child.pid);
    assert.equal((await s.client.health()).dp?.state, 'up');
    // The thread polling the DP's pidfd runs at the watcher's priority, as under `neuv-bpf watch`.
    const nice = await waitFor("the service's thread polling the DP's pidfd", () => pollingThreadsNice(s.child.pid!).length > 0 && pollingThreadsNice(s.child.pid!), 5000 * TIME_SCALE);
    assert.deepEqual(nice, [WATCH_NICE], 'the pidfd poll at nice -10');
    const port = s.info.metrics!.port;
    let m = scrape(tt.t.enforcer, port);
    assert.equal(sample(m, 'neuv_dp_up', {}), 1);
    assert.equal(sample(m, 'neuv_dp_fail_open_total', {}), 0);

    const c1 = tt.c[0]!;
    const st = await startUdpStream({ senderNs: c1.ns, receiverNs: tt.t.host, to: HOST_IP4, port: 5030, count: 0, rate: 1000, untilStopped: true, idleMs: 500 });
    await waitFor('the stream through the stub DP', async () => StubDp.frames(await s1.counts(), 'udp/5030').frames > 200, 10000 * TIME_SCALE, 50);
    await killStub(s1);
    const down = await untilState(s, 'down');
    const ev = down.events.find((e) => e.state === 'down')!;
    assert.deepEqual(ev.switched, [id], 'the FWD pair failed open');
    assert.deepEqual(down.held.map((h) => h.id), [id]);
    assert.equal(down.pid, null);
    assert.equal(modeOf(tt, id), 'bypass');
    // Recorded after the switch, for `show` and a next supervisor.
    const shown = JSON.parse(tt.run(['show', '--json']).stdout) as { pairs: Array<{ id: number; heldByWatch?: string }> };
    assert.match(shown.pairs.find((p) => p.id === id)!.heldByWatch ?? '', /^20\d\d-/, 'show marks the pair held');
    m = scrape(tt.t.enforcer, port);
    assert.equal(sample(m, 'neuv_dp_up', {}), 0);
    assert.equal(sample(m, 'neuv_dp_fail_open_total', {}), 1, 'the loss counted');
    assert.equal(sample(m, 'neuv_dp_fail_closed_total', {}), 0);
    assert.equal(sample(m, 'neuv_dp_pairs_held', {}), 1);
    assert.equal(sample(m, 'neuv_dp_pair_switches_total', { to: 'bypass' }), 1);
    await new Promise((r) => setTimeout(r, 500)); // the stream flows in BYPASS meanwhile

    const s2 = await stubInto(tt, pidfile);
    const up2 = await untilState(s, 'up', 2);
    assert.equal(up2.pid, s2.child.pid, 'the restarted DP followed');
    assert.deepEqual(up2.events.filter((e) => e.state === 'up')[1]!.switched, [id], 'back to FWD');
    assert.deepEqual(up2.held, []);
    assert.equal(modeOf(tt, id), 'fwd');
    assert.equal(fs.existsSync(watchStatePath(tt.pins)), false, 'nothing held: no state file');
    await waitFor('the stream through the restarted DP', async () => StubDp.frames(await s2.counts(), 'udp/5030').frames > 100, 10000 * TIME_SCALE, 50);
    st.stop();
    const r = await st.result;
    m = scrape(tt.t.enforcer, port);
    assert.equal(sample(m, 'neuv_dp_up', {}), 1);
    assert.equal(sample(m, 'neuv_dp_returns_total', {}), 1);
    assert.equal(sample(m, 'neuv_dp_pairs_held', {}), 0);
    assert.equal(sample(m, 'neuv_dp_pair_switches_total', { to: 'fwd' }), 1);
    // eslint-disable-next-line no-console
    console.log(`      fail-open in the service: ${r.lost} of ${r.sent} datagrams lost over a kill and a restart (longest pause ${r.maxGapMs} ms)`);
    assert.equal(r.duplicated, 0);
    assert.ok(r.unique > r.sent / 2, `the stream went on through BYPASS and the restarted DP (${r.unique} of ${r.sent})`);
    s.child.kill('SIGTERM');
    assert.equal((await s.exited).code, 0);
  });

  it('fail-closed: the loss counted, nothing switched; a restarted service resumes supervision and the pairs a killed one held', async function () {
    const { tt, p1, pidfile } = setup();
    const id = p1.pair.id;
    const s1 = await stubInto(tt, pidfile);
    const s = await serve(tt.t.enforcer, tt.pins, SUPERVISE(pidfile, 'closed'));
    await untilState(s, 'up');
    await killStub(s1);
    const down = await untilState(s, 'down');
    assert.deepEqual(down.events.find((e) => e.state === 'down')!.switched, []);
    assert.equal(modeOf(tt, id), 'fwd', 'fail-closed: still FWD');
    const m = scrape(tt.t.enforcer, s.info.metrics!.port);
    assert.equal(sample(m, 'neuv_dp_fail_closed_total', {}), 1);
    assert.equal(sample(m, 'neuv_dp_fail_open_total', {}), 0);
    s.child.kill('SIGKILL');
    await s.exited;

    // A fail-open service SIGKILLed while it holds the pair in BYPASS: the next one puts it back once the DP answers.
    const s2 = await stubInto(tt, pidfile);
    const o1 = await serve(tt.t.enforcer, tt.pins, SUPERVISE(pidfile, 'open'));
    await untilState(o1, 'up');
    await killStub(s2);
    await untilState(o1, 'down');
    assert.equal(modeOf(tt, id), 'bypass');
    o1.child.kill('SIGKILL');
    await o1.exited;
    const o2 = await serve(tt.t.enforcer, tt.pins, SUPERVISE(pidfile, 'open'));
    const waiting = await dpView(o2);
    assert.deepEqual(waiting.held.map((h) => h.id), [id], 'the held pair read back from the state file');
    assert.equal(modeOf(tt, id), 'bypass', 'held until the DP answers');
    await stubInto(tt, pidfile);
    const up = await untilState(o2, 'up');
    assert.deepEqual(up.events.find((e) => e.state === 'up')!.switched, [id]);
    assert.equal(modeOf(tt, id), 'fwd');
  });
});
