/**
 * Kernel suite: the fail-open supervisor (`neuv-bpf watch`, src/dp/watch.ts)
 * killed while NeuVector's real DP is down. The pairs it put in BYPASS are
 * kept in its state file, and the next watcher puts them back in FWD once the
 * DP answers; a pair whose id now belongs to another container is left alone.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliSpawn, onCleanup, leakChecks, TIME_SCALE } from './helpers';
import { makeTopology, TestTopology, waitFor } from './topology';
import { ECHO_APPS, interceptC, requireNvdp } from './nvdp-fixture';
import { NvDp } from '../harness/nvdp';
import { readWatchState, watchStatePath, writeWatchState } from '../src/dp/watch';

function modeOf(tt: TestTopology, id: number): string | undefined {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: Array<{ id: number; mode: string }> }).pairs.find((p) => p.id === id)?.mode;
}

interface WatchChild {
  events: Array<{ state: string; switched: number[] }>;
  kill: (sig: NodeJS.Signals) => Promise<number | null>;
}

/** `neuv-bpf watch --dp PIDFILE --fail open --json` as a child, its events parsed as they come. */
function watch(tt: TestTopology, pidfile: string): WatchChild {
  const child = cliSpawn(['--netns', tt.t.enforcer, '--bpffs', tt.pins, 'watch', '--dp', pidfile, '--fail', 'open', '--json']);
  onCleanup(() => child.kill('SIGKILL'));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  const events: WatchChild['events'] = [];
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) events.push(JSON.parse(buf.slice(0, i)));
  });
  return { events, kill: (sig) => (child.kill(sig), closed) };
}

const seen = (w: WatchChild, state: string, n: number) =>
  waitFor(`${n} '${state}' events`, () => w.events.filter((e) => e.state === state).length >= n, 5000 * TIME_SCALE);

describe('watch: pairs a killed supervisor left in BYPASS (kernel, NeuVector DP)', function () {
  this.timeout(120000);
  before(function () {
    this.timeout(300000);
    requireNvdp(this);
  });
  leakChecks();

  it('a watcher SIGKILLed while the DP is down: the next one puts its pair back in FWD when the DP returns, and removes the state file', async function () {
    const tt = makeTopology({ containers: 1 });
    const c1 = tt.c[0]!;
    const p1 = interceptC(tt, c1, 'fwd');
    const state = watchStatePath(tt.pins);
    onCleanup(() => fs.rmSync(state, { force: true }));
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-watch-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pidfile = path.join(dir, 'dp.pid');
    const startDp = async () => {
      const dp = await NvDp.start({ netns: tt.t.enforcer });
      onCleanup(() => dp.kill());
      dp.client.addMac({ mac: p1.mac, ucmac: p1.pair.ucmac, bcmac: p1.pair.bcmac, ips: [c1.ip4] });
      dp.client.cfgMac([p1.mac], { tap: false, apps: ECHO_APPS });
      await dp.client.sync();
      fs.writeFileSync(pidfile, `${dp.pid}\n`);
      return dp;
    };

    const dp = await startDp();
    const w1 = watch(tt, pidfile);
    await seen(w1, 'up', 1);
    dp.kill();
    await seen(w1, 'down', 1);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    assert.deepEqual(readWatchState(tt.pins).map((b) => ({ id: b.id, mac: b.mac })), [{ id: p1.pair.id, mac: p1.mac }], 'the state file names the pair');
    assert.match(readWatchState(tt.pins)[0]!.since ?? '', /^20\d\d-/, 'and since when');
    assert.equal(await w1.kill('SIGKILL'), null, 'killed');
    assert.equal(modeOf(tt, p1.pair.id), 'bypass', 'left in BYPASS by the dead watcher');

    // The DP is gone and this watcher never saw it: it waits (no fail-open, no 'down').
    const w2 = watch(tt, pidfile);
    await seen(w2, 'waiting', 1);
    await startDp();
    await seen(w2, 'up', 1);
    assert.deepEqual(w2.events.find((e) => e.state === 'up')!.switched, [p1.pair.id], 'the pair the first watcher bypassed');
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    assert.equal(fs.existsSync(state), false, 'no state file once every pair is back');
    assert.ok(w2.events.every((e) => e.state !== 'down'), 'never failed open before it saw the DP');
    assert.equal(await w2.kill('SIGTERM'), 0);
  });

  it('a state file naming an id that is now another container (another MAC) leaves that pair in BYPASS', async function () {
    const tt = makeTopology({ containers: 1 });
    const c1 = tt.c[0]!;
    const p1 = interceptC(tt, c1, 'bypass');
    onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
    writeWatchState(tt.pins, [{ id: p1.pair.id, mac: '02:00:00:00:00:99' }]);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-watch-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const pidfile = path.join(dir, 'dp.pid');
    const dp = await NvDp.start({ netns: tt.t.enforcer });
    onCleanup(() => dp.kill());
    fs.writeFileSync(pidfile, `${dp.pid}\n`);
    const w = watch(tt, pidfile);
    await seen(w, 'up', 1);
    assert.deepEqual(w.events.find((e) => e.state === 'up')!.switched, []);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    assert.deepEqual(readWatchState(tt.pins), [], 'the stale entry is dropped');
    assert.equal(await w.kill('SIGTERM'), 0);
  });
});
