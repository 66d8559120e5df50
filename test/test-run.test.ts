/**
 * make test's runner (scripts/test-run.js) stopped by a signal: the signal
 * reaches the suite files it runs, whose cleanups then run (test/helpers.ts,
 * cleanupOnSignals), and it waits for them, within a bound, before it exits.
 * The suite it runs is test/tools/signal-suite.ts: one netns, held until the
 * signal.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { collectOutput, waitFor } from '../harness/proc';
import { leakChecks, onCleanup, requireKernel, ROOT, sh, TIME_SCALE } from './helpers';

const RUNNER = path.join(ROOT, 'scripts', 'test-run.js');
const SUITE = path.join(ROOT, 'dist', 'test', 'tools', 'signal-suite.js');

/** The runner on the fixture suite, SIGTERMed once the suite holds its netns. */
async function runStopped(env: NodeJS.ProcessEnv = {}): Promise<{ status: number | null; out: string; ns: string; stopMs: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-testrun-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }), dir);
  const ready = path.join(dir, 'ready');
  const child = spawn(process.execPath, [RUNNER, SUITE], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env, NEUV_TEST_SIGNAL_READY: ready } });
  onCleanup(() => void (child.exitCode === null && child.signalCode === null && child.kill('SIGKILL')), 'the runner');
  const run = collectOutput(child);
  const ns = await waitFor('the suite to hold its netns', () => fs.existsSync(ready) && fs.readFileSync(ready, 'utf8'), 60000 * TIME_SCALE, 50);
  // Whatever the runner does, the netns goes (a leftover fails leakChecks below only for our own names).
  onCleanup(() => fs.existsSync(`/run/netns/${ns}`) && void sh('ip', ['netns', 'del', ns]), `netns ${ns}`);
  const t0 = Date.now();
  child.kill('SIGTERM');
  const r = await run.done;
  return { status: r.code, out: r.stdout + r.stderr, ns, stopMs: Date.now() - t0 };
}

describe("make test's runner stopped by a signal (scripts/test-run.js)", function () {
  before(function () {
    requireKernel(this);
    if (!fs.existsSync(SUITE)) throw new Error(`${SUITE} missing (make build)`);
  });

  it("passes SIGTERM on to the suites it runs, waits for their cleanups (the suite's netns is gone), exits 143", async function () {
    const r = await runStopped();
    assert.equal(r.status, 143, r.out);
    assert.ok(!fs.existsSync(`/run/netns/${r.ns}`), `netns ${r.ns} left behind:\n${r.out}`);
    assert.match(r.out, /test: SIGTERM, running 1 cleanup\(s\) before exiting/);
    assert.match(r.out, /==== signal-suite\.js \(stopped\) ====/);
  });

  it('kills a suite that does not end within NEUV_BPF_TEST_STOP_SECONDS, then exits', async function () {
    const r = await runStopped({ NEUV_TEST_SIGNAL_IGNORE: '1', NEUV_BPF_TEST_STOP_SECONDS: '1' });
    assert.equal(r.status, 143, r.out);
    assert.match(r.out, /signal-suite\.js still running after 1 s: SIGKILL/);
    assert.ok(r.stopMs >= 1000 && r.stopMs < 10000 * TIME_SCALE, `stopped after ${r.stopMs} ms`);
  });

  leakChecks();
});
