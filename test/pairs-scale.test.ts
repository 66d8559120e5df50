/**
 * Kernel suite for pairs at scale: 1,000 pairs with `pair add --file`, and
 * the same with tcx hooks for reference.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { cli as runCli, CLI, makeNetns, makePinRoot, onCleanup, requireKernel, leakChecks } from './helpers';
import { raw, serve } from './service-fixture';
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
    assert.equal(dump(pins, 'ids').length, N);
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
    // The other 999 in one go (Datapath.delPairs): no entry, filter or qdisc left.
    const ta = Date.now();
    const all = c(['pair', 'del', '--all', '--json']);
    const delAllMs = Date.now() - ta;
    assert.equal(all.code, 0, all.stderr);
    const gone = JSON.parse(all.stdout) as Array<{ id: number; detached: string[]; qdiscsRemoved: string[] }>;
    assert.equal(gone.length, N - 1);
    assert.ok(gone.every((g) => g.detached.length === 2 && g.qdiscsRemoved.length === 2));
    assert.deepEqual((['ports', 'ids', 'stats'] as const).map((m) => dump(pins, m).length), [0, 0, 0]);
    // No clsact left on a pair port (vbr-neuv keeps its own where tcx is missing: the datapath's, not a pair's).
    assert.deepEqual((JSON.parse(ns.exec('tc', ['-j', 'qdisc', 'show']) || '[]') as Array<{ kind: string; dev: string }>).filter((q) => q.kind === 'clsact' && q.dev !== 'vbr-neuv'), []);
    // eslint-disable-next-line no-console
    console.log(
      `      ${N} veth pairs created in ${linkMs} ms; pair add --file of ${N} pairs: ${addMs} ms wall (CLI start-up alone ~${startMs} ms); ` +
        `show --json: ${showMs} ms; mode switch: API median ${(lat[500]! * 1000).toFixed(0)} µs (p99 ${(lat[990]! * 1000).toFixed(0)} µs), ` +
        `CLI median ${cliLat[2]} ms; pair del: ${delMs} ms; pair del --all (${N - 1}): ${delAllMs} ms`,
    );
    // No timing assertion: speed is measured by `make bench` (bench/control.ts), not by tests.
  });

  it('POST /v1/pairs with 1,000 pairs is all or nothing: a bad spec at 700, a kernel change failing at the 700th pair, then all added', async function () {
    this.timeout(180000);
    const N = 1000;
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(runCli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    // Up, as a container's ports are (a new clsact on an up device costs the kernel more).
    const lines: string[] = [];
    for (let i = 0; i < N; i++) {
      lines.push(`link add vin${i} type veth peer name wl${i}`, `link add vex${i} type veth peer name h${i}`);
      for (const d of [`vin${i}`, `wl${i}`, `vex${i}`, `h${i}`]) lines.push(`link set dev ${d} up`);
    }
    ns.ipBatch(lines);
    const hex = (i: number) => [(i >> 8) & 0xff, i & 0xff].map((b) => b.toString(16).padStart(2, '0')).join(':');
    const specs = Array.from({ length: N }, (_, i) => ({ in: `vin${i}`, ex: `vex${i}`, mac: `02:00:00:01:${hex(i)}`, mode: 'fwd' as const }));
    // The 700th pair's vin entry fails once: every hook, qdisc and entry of the 699 before it (and of the 700th) goes.
    // Then the batch delete fails once, after its 1,500th port entry: all of it is put back.
    const s = await serve(ns.name, pins, [], { NEUV_BPF_FAULT: 'fail@pair-add:after-vin-entry#700,fail@pair-del:after-port#1500' });
    // What a batch leaves: clsact qdiscs in the netns (one `tc qdisc show` for all; our filters hang off them), pins, map entries.
    const residue = () => {
      const qdiscs = (JSON.parse(ns.exec('tc', ['-j', 'qdisc', 'show']) || '[]') as Array<{ kind: string; dev: string }>).filter((q) => q.kind === 'clsact').map((q) => q.dev);
      const entries = (['ports', 'ids', 'stats'] as const).map((m) => `${m}: ${dump(pins, m).length}`);
      return { qdiscs, pins: fs.readdirSync(pins).sort(), entries };
    };
    const before = residue();
    assert.deepEqual(before.entries, ['ports: 0', 'ids: 0', 'stats: 0']);

    const bad = specs.map((x, i) => (i === 699 ? { ...x, mac: '02:00:00:01:zz:00' } : x));
    const r1 = await raw(s.socket, 'POST', '/v1/pairs', JSON.stringify(bad));
    assert.equal(r1.status, 400, r1.text);
    assert.match((r1.body as { error: string }).error, /^pair 700: .*malformed MAC/);
    assert.deepEqual(residue(), before, 'a bad spec changes nothing');

    const r2 = await raw(s.socket, 'POST', '/v1/pairs', JSON.stringify(specs));
    assert.equal(r2.status, 500, r2.text);
    assert.match((r2.body as { error: string }).error, /injected failure at pair-add:after-vin-entry/);
    assert.deepEqual(residue(), before, 'a failure at the 700th pair leaves no hook, qdisc or entry behind');

    const r3 = await raw(s.socket, 'POST', '/v1/pairs', JSON.stringify(specs));
    assert.equal(r3.status, 200, r3.text);
    const added = r3.body as Array<{ in: string; created: boolean; mode: string }>;
    assert.equal(added.length, N);
    assert.ok(added.every((p, i) => p.created && p.in === `vin${i}` && p.mode === 'fwd'));
    assert.equal(dump(pins, 'ids').length, N);
    assert.equal(ports(pins).size, 2 * N);
    assert.equal(dump(pins, 'stats').length, N);
    // Every port hooked with its role's program (the tc filters of one batch).
    assert.equal(residue().qdiscs.length - before.qdiscs.length, 2 * N, 'a clsact on each new port (vbr-neuv has its own where tcx is missing)');
    const hooked = () => {
      const filters = ns.exec('tc', ['-force', '-batch', '-'], { input: Array.from({ length: N }, (_, i) => `filter show dev vin${i} ingress\nfilter show dev vex${i} ingress\n`).join('') });
      return [filters.match(/handle 0x4e56 neuv_vin:\[\d+\] direct-action/g)?.length, filters.match(/handle 0x4e56 neuv_vex:\[\d+\] direct-action/g)?.length];
    };
    assert.deepEqual(hooked(), [N, N]);
    // The same batch again: nothing to do, nothing repaired.
    const again = await s.client.addPairs(specs);
    assert.ok(again.every((p) => !p.created && p.repaired.length === 0));

    // Deleting them all in one call (POST /v1/pairs/delete) is all or nothing too.
    const full = residue();
    const d1 = await raw(s.socket, 'POST', '/v1/pairs/delete', JSON.stringify({ pairs: [1, 2, 'in:vin2', 5000] }));
    assert.equal(d1.status, 404, d1.text);
    assert.deepEqual(residue(), full, 'a pair not found changes nothing');
    const d2 = await raw(s.socket, 'POST', '/v1/pairs/delete', JSON.stringify({ all: true }));
    assert.equal(d2.status, 500, d2.text);
    assert.match((d2.body as { error: string }).error, /injected failure at pair-del:after-port/);
    assert.deepEqual(residue(), full, 'a failure at the 1,500th port entry puts every hook, qdisc and entry back');
    assert.deepEqual(hooked(), [N, N]);
    const td = Date.now();
    const d3 = await s.client.delPairs('all');
    const delMs = Date.now() - td;
    assert.equal(d3.length, N);
    assert.deepEqual(residue(), before, 'all deleted: no hook, qdisc or entry left');
    // eslint-disable-next-line no-console
    console.log(`      POST /v1/pairs/delete of ${N} pairs: ${delMs} ms`);
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
