/**
 * Kernel suite for pairs at scale: 1,000 pairs with `pair add --file`, and
 * the same with tcx hooks for reference.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cli as runCli, CLI, makeNetns, makePinRoot, onCleanup, requireKernel, leakChecks } from './helpers';
import { features } from '../src/features';
import { configureLogging } from '../src/log';
import { Datapath } from '../src/pairs';
import { dump, ports } from './pairs-fixture';

describe('pairs at scale (kernel)', function () {
  before(function () {
    requireKernel(this);
    configureLogging('warn', false);
  });
  leakChecks();

  it('adds 1,000 pairs with --file well within a few seconds; one mode switch via the API and the CLI', async function () {
    this.timeout(300000);
    const N = 1000;
    const ns = makeNetns();
    const pins = makePinRoot();
    const c = (args: string[], opts: { input?: string } = {}) => runCli(['--netns', ns.name, '--bpffs', pins, ...args], opts);
    assert.equal(c(['load']).code, 0);
    const lines: string[] = [];
    // vinN and vexN each with a peer of its own: vinN-vexN peers would loop a frame and are refused (src/pairs/loops.ts).
    for (let i = 0; i < N; i++) lines.push(`link add vin${i} type veth peer name wl${i}`, `link add vex${i} type veth peer name h${i}`);
    const tl = Date.now();
    ns.ipBatch(lines);
    const linkMs = Date.now() - tl;
    const hex = (i: number) => [(i >> 8) & 0xff, i & 0xff].map((b) => b.toString(16).padStart(2, '0')).join(':');
    const input = Array.from({ length: N }, (_, i) => JSON.stringify({ in: `vin${i}`, ex: `vex${i}`, mac: `02:00:00:00:${hex(i)}`, mode: i % 2 ? 'tap' : 'bypass' })).join('\n') + '\n';
    const t0 = Date.now();
    const r = c(['pair', 'add', '--file', '-'], { input });
    const addMs = Date.now() - t0;
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /1000 pairs: 1000 added, 0 existed/);
    const tv = Date.now();
    c(['--help']); // node + commander start-up alone, for reference
    const startMs = Date.now() - tv;
    assert.equal(dump(pins, 'neuv_ids').length, N);
    assert.equal(ports(pins).size, 2 * N);

    const ts = Date.now();
    // show --json of 1,000 pairs is a few MB: more than spawnSync's default buffer.
    const big = spawnSync(process.execPath, [CLI, '--netns', ns.name, '--bpffs', pins, 'show', '--json'], { encoding: 'utf8', maxBuffer: 256 << 20 });
    assert.equal(big.status, 0, big.stderr);
    const shown = JSON.parse(big.stdout) as { consistent: boolean; pairs: unknown[] };
    const showMs = Date.now() - ts;
    assert.equal(shown.consistent, true);
    assert.equal(shown.pairs.length, N);

    const dp = Datapath.open(pins, { netns: ns.name });
    onCleanup(() => dp.close());
    const lat: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const t1 = process.hrtime.bigint();
      await dp.setMode({ in: 'vin500' }, i % 2 ? 'bypass' : 'tap');
      lat.push(Number(process.hrtime.bigint() - t1) / 1e6);
    }
    lat.sort((x, y) => x - y);
    const cliLat: number[] = [];
    for (let i = 0; i < 5; i++) {
      const t1 = Date.now();
      assert.equal(c(['pair', 'mode', '--in', 'vin501', i % 2 ? 'bypass' : 'fwd']).code, 0);
      cliLat.push(Date.now() - t1);
    }
    cliLat.sort((x, y) => x - y);
    const td = Date.now();
    assert.equal(c(['pair', 'del', '--in', 'vin999']).code, 0);
    const delMs = Date.now() - td;
    // eslint-disable-next-line no-console
    console.log(
      `      ${N} veth pairs created in ${linkMs} ms; pair add --file of ${N} pairs: ${addMs} ms wall (CLI start-up alone ~${startMs} ms); ` +
        `show --json: ${showMs} ms; mode switch: API median ${(lat[500]! * 1000).toFixed(0)} µs (p99 ${(lat[990]! * 1000).toFixed(0)} µs), ` +
        `CLI median ${cliLat[2]} ms; pair del: ${delMs} ms`,
    );
    // No timing assertion: speed is measured by `make bench` (bench/control.ts), not by tests.
    assert.equal(dump(pins, 'neuv_ids').length, N - 1);
  });

  it('for reference: the same with tcx hooks (NEUV_BPF_ATTACH=tcx), 100 pairs', function () {
    if (!features().tcx) this.skip();
    this.timeout(120000);
    const N = 100;
    const ns = makeNetns();
    const pins = makePinRoot();
    const env = { NEUV_BPF_ATTACH: 'tcx' };
    const c = (args: string[], opts: { input?: string } = {}) => runCli(['--netns', ns.name, '--bpffs', pins, ...args], { ...opts, env });
    assert.equal(c(['load']).code, 0);
    ns.ipBatch(Array.from({ length: N }, (_, i) => [`link add vin${i} type veth peer name wl${i}`, `link add vex${i} type veth peer name h${i}`]).flat());
    const input = Array.from({ length: N }, (_, i) => JSON.stringify({ in: `vin${i}`, ex: `vex${i}`, mac: `02:00:00:00:00:${(i + 1).toString(16).padStart(2, '0')}` })).join('\n');
    const t0 = Date.now();
    const r = c(['pair', 'add', '--file', '-'], { input });
    const ms = Date.now() - t0;
    assert.equal(r.code, 0, r.stderr);
    // eslint-disable-next-line no-console
    console.log(`      tcx: pair add --file of ${N} pairs (${2 * N} tcx links): ${ms} ms, ~${(ms / (2 * N)).toFixed(1)} ms per hook (an RCU grace period under RTNL each)`);
  });
});
