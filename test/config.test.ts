/**
 * neuv_config's writers (src/config.ts): the loader, the tracer and
 * whoever offloads flows each own a field of the one entry, but write it
 * whole; under the config lock no read-modify-write puts back a field another
 * writer changed in between. Real maps, two writer processes at once
 * (test/tools/config-writer.ts); without the lock the first check fails
 * here in a few % of the trials (the tracer's renewal clears NEUV_CFG_FLOWS).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfObject, LOCK_EX, LOCK_UN, MapFd, flock } from '../src/bpf';
import { configLockPath, enableFlowLookups, updateConfig } from '../src/config';
import { ConfigFlag, decodeConfig, u32Key } from '../src/layout';
import { LOCK_DIR } from '../src/lock';
import { writeLease } from '../src/trace';
import { OBJ, ROOT, leakChecks, makePinRoot, onCleanup, requireKernel } from './helpers';
import { Pins } from '../src/pins';

const WRITER = path.join(ROOT, 'dist', 'test', 'tools', 'config-writer.js');

interface Writer {
  ready: Promise<void>;
  result: Promise<Record<string, number>>;
}

function writer(role: 'trace' | 'flows', pinRoot: string, ms: number, trials = 0): Writer {
  const c = spawn(process.execPath, [WRITER, role, pinRoot, String(ms), String(trials)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((r) => (onReady = r));
  c.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.startsWith('ready\n')) onReady();
  });
  c.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const result = new Promise<Record<string, number>>((resolve, reject) => {
    c.on('error', reject);
    c.on('close', (code) => {
      onReady(); // a writer that died before "ready" fails here, not by a hang
      if (code !== 0) reject(new Error(`config-writer ${role} exited ${code}: ${err.trim()}`));
      else resolve(JSON.parse(out.slice('ready\n'.length).trim()) as Record<string, number>);
    });
  });
  return { ready, result };
}

describe('neuv_config: one entry, several writers (kernel)', function () {
  let pinRoot: string;
  let config: MapFd;

  before(function () {
    requireKernel(this);
  });
  beforeEach(function () {
    pinRoot = makePinRoot();
    const obj = BpfObject.open(OBJ, { pinRoot });
    onCleanup(() => obj.close());
    obj.load();
    const pins = Pins.open(pinRoot, ['config']);
    onCleanup(() => pins.close());
    config = pins.config;
  });
  leakChecks();

  it('each writer changes only its field: lease, filter, NEUV_CFG_FLOWS, dp_ifindex', function () {
    updateConfig(pinRoot, config, () => ({ dpIfindex: 42, flags: 0, traceUntil: 0n }));
    assert.equal(enableFlowLookups(pinRoot, config), true);
    assert.equal(enableFlowLookups(pinRoot, config), false, 'already set');
    writeLease(pinRoot, config, 123n, ConfigFlag.TRACE_ID | 7);
    assert.deepEqual(decodeConfig(config.lookup(u32Key(0))!), { dpIfindex: 42, flags: ConfigFlag.FLOWS | ConfigFlag.TRACE_ID | 7, traceUntil: 123n });
    writeLease(pinRoot, config, 0n, 0);
    assert.deepEqual(decodeConfig(config.lookup(u32Key(0))!), { dpIfindex: 42, flags: ConfigFlag.FLOWS, traceUntil: 0n });
    assert.equal(configLockPath(pinRoot), path.join(LOCK_DIR, pinRoot.replace(/\//g, '_') + '.config.lock'), 'a pin root of [A-Za-z0-9/-] keeps its name of before');
  });

  it('the tracer and the flow API writing at once lose nothing (two processes, real map)', async function () {
    this.timeout(60000);
    updateConfig(pinRoot, config, () => ({ dpIfindex: 0, flags: 0, traceUntil: 0n }));
    // dp_ifindex is the writers' go (1) and stop (2): both run until the flows writer made 200 trials (or 20 s).
    const t = writer('trace', pinRoot, 20000);
    const f = writer('flows', pinRoot, 20000, 200);
    await Promise.all([t.ready, f.ready]);
    updateConfig(pinRoot, config, (c) => ({ ...c, dpIfindex: 1 }));
    const [tr, fr] = await Promise.all([t.result, f.result]);
    // eslint-disable-next-line no-console
    console.log(`      tracer: ${tr.writes} lease writes, flows: ${fr.trials} set-and-check trials`);
    assert.ok(fr.trials! >= 50, `too few trials to tell (${JSON.stringify({ tr, fr })})`);
    assert.equal(fr.lost, 0, `NEUV_CFG_FLOWS cleared by the tracer's write in ${fr.lost} of ${fr.trials} trials`);
    assert.equal(tr.regressions, 0, `an older lease put back ${tr.regressions} times in ${tr.writes} writes`);
  });

  it('the C writers take the same lock (build/flow-offload waits for it)', async function () {
    this.timeout(30000);
    const bin = path.join(ROOT, 'build', 'flow-offload');
    if (!fs.existsSync(bin)) this.skip();
    updateConfig(pinRoot, config, (c) => ({ ...c, flags: 0 }));
    const p = configLockPath(pinRoot);
    const fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    try {
      flock(fd, LOCK_EX, p);
      const child = spawn(bin, ['--pin-root', pinRoot, '1', 'udp', '10.0.0.1:1', '10.0.0.2:2'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const done = new Promise<number>((r) => child.on('close', (code) => r(code ?? -1)));
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(child.exitCode, null, 'flow-offload did not wait for the config lock');
      assert.equal(decodeConfig(config.lookup(u32Key(0))!).flags & ConfigFlag.FLOWS, 0);
      flock(fd, LOCK_UN, p);
      assert.equal(await done, 0, err);
      assert.ok(decodeConfig(config.lookup(u32Key(0))!).flags & ConfigFlag.FLOWS);
    } finally {
      fs.closeSync(fd);
    }
  });
});
