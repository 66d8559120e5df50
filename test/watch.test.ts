/**
 * Kernel suite: `neuv-bpf watch` (src/dp/watch.ts) with the stub DP
 * (tools/stub-dp.c: no control socket, so --no-keep-alive; its exit and its
 * ring on vth-neuv tell). What it must do (issue 24): fail open only after
 * it has seen the DP alive once; follow the DP across restarts (a pid file
 * re-read) and put the pairs back in FWD when it returns; notice a SIGKILL
 * at once (pidfd), measured with a UDP stream; fail open even when its state
 * file cannot be written (one log line); say every heldLogMs that pairs are
 * held, and `show` marks them. A bare pid is refused.
 */
import assert from 'node:assert/strict';
import { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cliSpawn, leakChecks, onCleanup, oneErrorLine, pollingThreadsNice, requireKernel, TIME_SCALE } from './helpers';
import { killStub, makeTopology, modeOf, StubDp, stubInto, TestTopology, waitFor } from './topology';
import { startUdpStream } from './traffic';
import { watchStatePath } from '../src/dp/watch';
import { WATCH_NICE } from '../src/cli/watch';
import { ContainerNs, HOST_IP4 } from '../harness/topology';
import type { InterceptResult } from '../src/intercept';

function intercept(tt: TestTopology, c: ContainerNs, mode: string): InterceptResult {
  const r = tt.run(['intercept', '--container-netns', c.path, '--mode', mode, '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as InterceptResult;
}

interface WatchEventLine {
  state: string;
  why: string;
  switched: number[];
  pid?: number;
}

interface WatchChild {
  child: ChildProcess;
  events: WatchEventLine[];
  stderr: () => string;
  seen: (state: string, n: number) => Promise<unknown>;
  stop: (sig?: NodeJS.Signals) => Promise<number | null>;
}

/** `neuv-bpf watch --dp PIDFILE --fail open --no-keep-alive --json` as a child, its events parsed as they come. */
function watchCli(tt: TestTopology, pidfile: string, env: NodeJS.ProcessEnv = {}): WatchChild {
  const child = cliSpawn(['--netns', tt.t.enforcer, '--bpffs', tt.pins, 'watch', '--dp', pidfile, '--fail', 'open', '--no-keep-alive', '--interval', '50', '--json'], env);
  onCleanup(() => child.kill('SIGKILL'));
  const closed = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  const events: WatchEventLine[] = [];
  let buf = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i; (i = buf.indexOf('\n')) >= 0; buf = buf.slice(i + 1)) events.push(JSON.parse(buf.slice(0, i)) as WatchEventLine);
  });
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return {
    child,
    events,
    stderr: () => err,
    seen: (state, n) => waitFor(`${n} '${state}' events (stderr: ${err})`, () => events.filter((e) => e.state === state).length >= n, 10000 * TIME_SCALE),
    stop: (sig = 'SIGTERM') => (child.kill(sig), closed),
  };
}

function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-watch-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('watch: the fail-open supervisor with the stub DP (kernel)', function () {
  this.timeout(120000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('a bare pid is refused (it cannot follow a restart): one line, exit 2', function () {
    const tt = makeTopology({ containers: 1 });
    const r = tt.run(['watch', '--dp', String(process.pid), '--fail', 'open']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(oneErrorLine(r), /a pid does not follow a restarted DP/);
  });

  it('waits (no fail-open) until the DP was seen; then follows it across a restart under a new pid, back to FWD each time', async function () {
    const tt = makeTopology({ containers: 1 });
    const p1 = intercept(tt, tt.c[0]!, 'fwd');
    const pidfile = path.join(tmpDir(), 'dp.pid');
    const w = watchCli(tt, pidfile);
    await w.seen('waiting', 1);
    // No DP yet (no pid file): 20 probes later, still waiting and the pair still in FWD.
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(w.events.map((e) => e.state), ['waiting'], 'nothing but waiting before a DP was seen');
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');

    // --dp local with no DP listening in the enforcer netns: waits as well.
    const local = cliSpawn(['--netns', tt.t.enforcer, '--bpffs', tt.pins, 'watch', '--dp', 'local', '--fail', 'open', '--interval', '50', '--json']);
    onCleanup(() => local.kill('SIGKILL'));
    let localOut = '';
    local.stdout!.on('data', (d: Buffer) => (localOut += d.toString()));
    await waitFor('the local watcher waiting', () => localOut.includes('"waiting"'), 10000 * TIME_SCALE);
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(localOut.trim().split('\n').map((l) => (JSON.parse(l) as WatchEventLine).state), ['waiting'], '--dp local: nothing but waiting');
    local.kill('SIGTERM');

    const s1 = await stubInto(tt, pidfile);
    await w.seen('up', 1);
    const nice = await waitFor("the watcher's thread polling the DP's pidfd", () => pollingThreadsNice(w.child.pid!).length > 0 && pollingThreadsNice(w.child.pid!), 5000 * TIME_SCALE);
    assert.deepEqual(nice, [WATCH_NICE], 'the pidfd poll at nice -10');
    await killStub(s1);
    await w.seen('down', 1);
    const down1 = w.events.filter((e) => e.state === 'down')[0]!;
    assert.deepEqual(down1.switched, [p1.pair.id]);
    // Its pidfd, or a probe that ran between the dying DP closing its ring and its exit.
    assert.match(down1.why, new RegExp(`^(exited \\(pid ${s1.child.pid}\\)|no DP ring on vth-neuv)$`), `seen dying: ${down1.why}`);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');

    // Restarted under a new pid (the pid file rewritten): followed, the pair back in FWD.
    const s2 = await stubInto(tt, pidfile);
    assert.notEqual(s2.child.pid, s1.child.pid);
    await w.seen('up', 2);
    const up2 = w.events.filter((e) => e.state === 'up')[1]!;
    assert.deepEqual(up2.switched, [p1.pair.id], 'back to FWD');
    assert.equal(up2.pid, s2.child.pid);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');

    // And its death is seen too (the new pid is the one followed).
    await killStub(s2);
    await w.seen('down', 2);
    assert.deepEqual(w.events.filter((e) => e.state === 'down')[1]!.switched, [p1.pair.id]);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    assert.equal(await w.stop(), 0);
    fs.rmSync(watchStatePath(tt.pins), { force: true });
  });

  it('pairs held in BYPASS: `show` marks them (text and JSON), the watcher says so every interval (NEUV_BPF_WATCH_HELD_MS)', async function () {
    const tt = makeTopology({ containers: 1 });
    const p1 = intercept(tt, tt.c[0]!, 'fwd');
    onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
    const pidfile = path.join(tmpDir(), 'dp.pid');
    const s1 = await stubInto(tt, pidfile);
    const w = watchCli(tt, pidfile, { NEUV_BPF_WATCH_HELD_MS: '200' });
    await w.seen('up', 1);
    const heldBefore = w.events.filter((e) => e.state === 'held').length;
    assert.equal(heldBefore, 0, 'nothing held while the DP is up');
    await killStub(s1);
    await w.seen('down', 1);
    await w.seen('held', 2);
    const held = w.events.filter((e) => e.state === 'held');
    assert.deepEqual(held[0]!.switched, [p1.pair.id]);
    assert.match(held[0]!.why, /^since 20\d\d-/);

    const js = tt.run(['show', '--json']);
    assert.equal(js.code, 0, js.stderr);
    const pair = (JSON.parse(js.stdout) as { pairs: Array<{ id: number; heldByWatch?: string }> }).pairs.find((p) => p.id === p1.pair.id)!;
    assert.match(pair.heldByWatch ?? '', /^20\d\d-\d\d-\d\dT/, 'JSON: heldByWatch is since when');
    const txt = tt.run(['show']);
    assert.match(txt.stdout, /held in BYPASS by neuv-bpf watch since 20\d\d-/);
    assert.match(txt.stdout, /\bwatch\b/, 'the FLAGS column');

    // Back: no more marks, no more reminders.
    await stubInto(tt, pidfile);
    await w.seen('up', 2);
    const n = w.events.filter((e) => e.state === 'held').length;
    assert.doesNotMatch(tt.run(['show']).stdout, /held in BYPASS/);
    await new Promise((r) => setTimeout(r, 600));
    assert.equal(w.events.filter((e) => e.state === 'held').length, n, 'no reminder once the pairs are back');
    assert.equal(await w.stop(), 0);
    // The warnings on stderr: one per reminder, JSON lines (no stack trace).
    assert.doesNotMatch(w.stderr(), /\n\s+at /);
  });

  it('a state file it cannot write (a directory in its place): the pair still goes to BYPASS at once, the error is logged once', async function () {
    const tt = makeTopology({ containers: 1 });
    const p1 = intercept(tt, tt.c[0]!, 'fwd');
    const state = watchStatePath(tt.pins);
    fs.mkdirSync(state, { recursive: true });
    fs.writeFileSync(path.join(state, 'x'), 'not empty\n');
    onCleanup(() => fs.rmSync(state, { recursive: true, force: true }));
    const pidfile = path.join(tmpDir(), 'dp.pid');
    const s1 = await stubInto(tt, pidfile);
    const w = watchCli(tt, pidfile, { NEUV_BPF_WATCH_HELD_MS: '100' });
    await w.seen('up', 1);
    await killStub(s1);
    await w.seen('down', 1);
    assert.deepEqual(w.events.find((e) => e.state === 'down')!.switched, [p1.pair.id]);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    await w.seen('held', 3);
    // The DP back: the pair back in FWD although nothing could be recorded.
    await stubInto(tt, pidfile);
    await w.seen('up', 2);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    assert.equal(await w.stop(), 0);
    const errs = w.stderr().split('\n').filter((l) => /cannot write the watch state file/.test(l));
    assert.equal(errs.length, 1, `logged once:\n${w.stderr()}`);
    assert.doesNotMatch(w.stderr(), /\n\s+at |"stack"/, 'no stack trace');
  });

  it('a watcher killed between its switch and its state file: `show` still marks the pair, the next watcher puts it back in FWD', async function () {
    const tt = makeTopology({ containers: 1 });
    const p1 = intercept(tt, tt.c[0]!, 'fwd');
    onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
    const pidfile = path.join(tmpDir(), 'dp.pid');
    const s1 = await stubInto(tt, pidfile);
    const w = watchCli(tt, pidfile, { NEUV_BPF_FAULT: 'crash@watch:after-switch' });
    await w.seen('up', 1);
    await killStub(s1);
    await waitFor('the watcher killed at its crash point', () => w.child.signalCode === 'SIGKILL', 10000 * TIME_SCALE);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    assert.equal(fs.existsSync(watchStatePath(tt.pins)), false, 'no state file written');
    const js = JSON.parse(tt.run(['show', '--json']).stdout) as { pairs: Array<{ id: number; heldByWatch?: string }> };
    assert.equal(js.pairs.find((p) => p.id === p1.pair.id)?.heldByWatch, 'unknown (not recorded)');
    await stubInto(tt, pidfile);
    const w2 = watchCli(tt, pidfile);
    await w2.seen('up', 1);
    assert.deepEqual(w2.events.find((e) => e.state === 'up')!.switched, [p1.pair.id]);
    assert.equal(modeOf(tt, p1.pair.id), 'fwd');
    assert.doesNotMatch(tt.run(['show']).stdout, /held in BYPASS/);
    assert.equal(await w2.stop(), 0);
  });

  it('fail-open within 20 ms of a SIGKILL of the DP: the gap measured with a UDP stream at 2,000/s', async function () {
    const tt = makeTopology({ containers: 1 });
    const c1 = tt.c[0]!;
    const p1 = intercept(tt, c1, 'fwd');
    onCleanup(() => fs.rmSync(watchStatePath(tt.pins), { force: true }));
    const pidfile = path.join(tmpDir(), 'dp.pid');
    const s1 = await stubInto(tt, pidfile);
    const w = watchCli(tt, pidfile);
    await w.seen('up', 1);
    const RATE = 2000;
    const s = await startUdpStream({ senderNs: c1.ns, receiverNs: tt.t.host, to: HOST_IP4, port: 5020, count: 0, rate: RATE, untilStopped: true, idleMs: 500 });
    await waitFor('the stream through the stub DP', async () => StubDp.frames(await s1.counts(), 'udp/5020').frames > 500, 10000 * TIME_SCALE, 50);
    const killedAt = Date.now();
    s1.child.kill('SIGKILL');
    await w.seen('down', 1);
    const down = w.events.find((e) => e.state === 'down')! as WatchEventLine & { time: number; switchMs: number };
    assert.deepEqual(down.switched, [p1.pair.id]);
    await new Promise((r) => setTimeout(r, 1000));
    s.stop();
    const r = await s.result;
    assert.equal(await w.stop(), 0);
    // The sender's real rate (a loaded machine sends fewer than RATE a second).
    const perMs = r.sent / (r.senderSeconds * 1000);
    const gapMs = r.lost / perMs;
    const load = os.loadavg()[0]!;
    // eslint-disable-next-line no-console
    console.log(`      fail-open after SIGKILL: seen and switched ${down.time - killedAt} ms after the kill (switch ${down.switchMs.toFixed(1)} ms); ` +
      `${r.lost} of ${r.sent} datagrams lost at ${(perMs * 1000).toFixed(0)}/s = a ${gapMs.toFixed(1)} ms gap (longest pause at the receiver ${r.maxGapMs} ms); load average ${load.toFixed(1)}`);
    assert.equal(modeOf(tt, p1.pair.id), 'bypass');
    assert.equal(r.duplicated, 0);
    assert.match(down.why, /^(exited \(pid \d+\)|no DP ring on vth-neuv)$/, 'seen dying');
    // 20 ms with a CPU to spare; on a loaded machine each wake-up (the DP's exit, the watcher's
    // threads, the DP's backlog of frames lost with it) waits its turn among load/cpus runnable
    // threads per CPU. Past twice the CPUs (beyond what the suites promise to hold at), only the
    // old bound (1 s) is checked.
    const perCpu = Math.max(1, Math.ceil(load / os.cpus().length));
    const bound = (perCpu > 2 ? 1000 : 20 * perCpu) * TIME_SCALE;
    assert.ok(gapMs <= bound, `the gap is at most ${bound} ms (load ${load.toFixed(1)}): ${gapMs.toFixed(1)} ms, ${r.lost} lost at ${(perMs * 1000).toFixed(0)}/s`);
  });
});
