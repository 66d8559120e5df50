/**
 * neuv_config's writers (src/dp-config.ts): the loader, the tracer and
 * whoever offloads flows each own a field of the one entry, but write it
 * whole; under the config lock no read-modify-write puts back a field another
 * writer changed in between. Real maps, two writer processes at once
 * (test/tools/config-writer.ts); without the lock both checks fail within a
 * second here (the tracer clears NEUV_CFG_FLOWS, the flow API puts back old
 * leases).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfObject, LOCK_EX, LOCK_UN, MapFd, flock } from '../src/bpf';
import { configLockPath, enableFlowLookups, updateConfig } from '../src/dp-config';
import { ConfigFlag, MAPS, decodeConfig, u32Key } from '../src/layout';
import { LOCK_DIR } from '../src/lock';
import { writeLease } from '../src/trace';
import { OBJ, ROOT, leakChecks, makePinRoot, onCleanup, requireKernel } from './helpers';

const WRITER = path.join(ROOT, 'dist', 'test', 'tools', 'config-writer.js');

function writer(role: 'trace' | 'flows', pinRoot: string, start: number, ms: number): Promise<Record<string, number>> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [WRITER, role, pinRoot, String(start), String(ms)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString()));
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('error', reject);
    c.on('close', (code) => {
      if (code !== 0) reject(new Error(`config-writer ${role} exited ${code}: ${err.trim()}`));
      else resolve(JSON.parse(out.trim()) as Record<string, number>);
    });
  });
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
    config = MapFd.fromPin(path.join(pinRoot, MAPS.config.name));
    onCleanup(() => config.close());
    onCleanup(() => fs.rmSync(configLockPath(pinRoot), { force: true }));
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
    assert.equal(configLockPath(pinRoot), path.join(LOCK_DIR, pinRoot.replace(/\//g, '_') + '.config.lock'));
  });

  it('the tracer and the flow API writing at once lose nothing (two processes, real map)', async function () {
    this.timeout(60000);
    updateConfig(pinRoot, config, () => ({ dpIfindex: 42, flags: 0, traceUntil: 0n }));
    const ms = 1500;
    const start = Date.now() + 2000; // both processes started and the maps opened by then
    const [t, f] = await Promise.all([writer('trace', pinRoot, start, ms), writer('flows', pinRoot, start, ms)]);
    // eslint-disable-next-line no-console
    console.log(`      tracer: ${t.writes} lease writes, flows: ${f.trials} set-and-check trials`);
    assert.ok(t.writes! > 100 && f.trials! > 20, `too few writes to tell (${JSON.stringify({ t, f })}): the writers did not overlap`);
    assert.equal(f.lost, 0, `NEUV_CFG_FLOWS cleared by the tracer's write in ${f.lost} of ${f.trials} trials`);
    assert.equal(t.regressions, 0, `an older lease put back ${t.regressions} times in ${t.writes} writes`);
    assert.equal(decodeConfig(config.lookup(u32Key(0))!).dpIfindex, 42, "nobody else's field touched");
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
