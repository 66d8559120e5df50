/**
 * Kernel suite for `neuv-bpf serve` (src/service/, docs/api.md): the real
 * CLI as a child process on a private pin root and netns, driven through the
 * typed client (src/service/client.ts) and raw HTTP on its unix socket.
 * Every call; bad bodies refused with JSON errors and the kernel state
 * unchanged; SIGTERM finishing the call in flight; SIGKILL under a UDP
 * stream losing no frame and a restarted service resuming; one service per
 * pin root; metrics checked by promtool and scraped by a real Prometheus.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cli, kernelState, leakChecks, makePinRoot, onCleanup, requireKernel, TIME_SCALE } from './helpers';
import { addPair, containerState, makePairTopology, makeTopology, PairTopology, waitFor } from './topology';
import { ping, startUdpStream } from './traffic';
import { raw, sample, scrape, serve, showJson, tool } from './service-fixture';
import { ServiceClient, ServiceError, defaultSocketPath } from '../src/service/client';
import { MAX_BODY_BYTES } from '../src/service/http';
import { withLock } from '../src/lock';
import { isLoaded } from '../src/pins';

describe('neuv-bpf serve: the API service (kernel)', function () {
  this.timeout(180000 * TIME_SCALE);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  let t: PairTopology;
  let pins: string;
  const spec = () => ({ in: t.vin, ex: t.vex, mac: t.wlMac });
  beforeEach(function () {
    t = makePairTopology();
    pins = makePinRoot();
  });

  it('loads the datapath, serves every pair and flow call on a 0600 root socket, and the CLI sees the same state', async function () {
    const s = await serve(t.enforcer.name, pins);
    assert.equal(s.info.datapath, 'loaded');
    assert.equal(s.socket, defaultSocketPath(pins));
    const st = fs.lstatSync(s.socket);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600, 'socket mode');
    assert.equal(st.uid, 0);
    const c = s.client;

    const h = await c.health();
    assert.equal(h.status, 'ok');
    assert.equal(h.pinRoot, pins);
    assert.equal((await c.pairs()).pairs.length, 0);

    const a = await c.addPair({ ...spec(), mode: 'tap' });
    assert.equal(a.created, true);
    assert.equal(a.mode, 'tap');
    assert.equal((await c.addPair({ ...spec(), mode: 'tap' })).created, false, 'idempotent re-add');
    const shown = showJson(t.enforcer.name, pins) as { pairs: Array<{ id: number; mode: string }> };
    assert.deepEqual(shown.pairs.map((p) => [p.id, p.mode]), [[a.id, 'tap']], 'the CLI sees the pair');
    assert.equal(ping(t.host, t.wlAddr, 3), 3, 'tap forwards');

    const m = await c.setMode(a.id, 'fwd');
    assert.deepEqual([m.from, m.to], ['tap', 'fwd']);
    const stats = await c.stats();
    const ps = stats.pairs.find((p) => p.id === a.id)!;
    assert.equal(ps.mode, 'fwd');
    assert.ok(ps.counters.to_wl.to_peer.packets >= 3, 'counters as numbers');

    const flow = { id: a.id, proto: 'udp', src: `${t.hostAddr}:5000`, dst: `${t.wlAddr}:6000` };
    const o = await c.offload(flow, { verdict: 'deny', idleS: 30 });
    assert.equal(o.verdict, 'deny');
    assert.equal(o.pairMode, 'fwd');
    assert.equal((await c.flows()).length, 1);
    assert.equal((await c.flows({ id: a.id })).length, 1);
    assert.equal((await c.flows({ id: a.id + 1 })).length, 0);
    const listed = cli(['--netns', t.enforcer.name, '--bpffs', pins, 'flow', 'list', '--json']);
    assert.equal((JSON.parse(listed.stdout) as unknown[]).length, 1, 'the CLI sees the flow');
    assert.deepEqual(await c.revoke(flow), { revoked: 1 });
    assert.deepEqual(await c.revoke(flow), { revoked: 0 });
    await c.offload(flow);
    assert.deepEqual(await c.revokeAll(a.id), { id: a.id, revoked: 1 });

    const d = await c.delPair(a.id);
    assert.equal(d.id, a.id);
    assert.equal((await c.pairs()).pairs.length, 0);

    // Many pairs in one call: an array in, an array out; all or nothing.
    const w2 = addPair(t, { vin: 'vinF', vex: 'vexF', hostIf: 'hB', wlIf: 'eth1', hostAddr: '10.78.0.1', wlAddr: '10.78.0.2' });
    const many = await c.addPairs([spec(), { in: w2.vin, ex: w2.vex, mac: w2.wlMac, mode: 'bypass' }]);
    assert.deepEqual(many.map((p) => [p.in, p.created]), [[t.vin, true], [w2.vin, true]]);
    assert.equal((showJson(t.enforcer.name, pins) as { pairs: unknown[] }).pairs.length, 2);
    for (const p of many) await c.delPair(p.id);

    // curl works on the socket.
    const r = spawnSync('curl', ['-s', '--unix-socket', s.socket, 'http://localhost/v1/health'], { encoding: 'utf8' });
    assert.equal((JSON.parse(r.stdout) as { status: string }).status, 'ok');

    s.child.kill('SIGTERM');
    assert.deepEqual(await s.exited, { code: 0, signal: null });
    assert.ok(!fs.existsSync(s.socket), 'socket removed on exit');
    assert.ok(isLoaded(pins), 'the datapath stays loaded');
  });

  it('intercept and release a container through the API', async function () {
    const tt = makeTopology({ containers: 1, load: false });
    const s = await serve(tt.t.enforcer, tt.pins);
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const r = await s.client.intercept({ netns: c1.path }, { mode: 'tap' });
    assert.equal(r.pair.mode, 'tap');
    assert.deepEqual(containerState(tt.t, c1), before, 'container state while intercepted');
    assert.deepEqual((await s.client.pairs()).pairs.map((p) => p.id), [r.pair.id]);
    const rel = await s.client.release({ netns: c1.path });
    assert.equal(rel.pairId, r.pair.id);
    assert.deepEqual(containerState(tt.t, c1), before, 'container state after release');
    assert.equal((await s.client.pairs()).pairs.length, 0);
  });

  it('refuses bad bodies and unknown calls with one-line JSON errors, leaving the kernel state as it was', async function () {
    const s = await serve(t.enforcer.name, pins);
    const a = await s.client.addPair(spec());
    const w2 = addPair(t, { vin: 'vinF', vex: 'vexF', hostIf: 'hB', wlIf: 'eth1', hostAddr: '10.78.0.1', wlAddr: '10.78.0.2' });
    const ok2 = { in: w2.vin, ex: w2.vex, mac: w2.wlMac };
    const j = (v: unknown) => JSON.stringify(v);
    const cases: Array<[string, string, string | Buffer | undefined, number, number]> = [
      ['POST', '/v1/pairs', 'not json', 400, 2],
      ['POST', '/v1/pairs', undefined, 400, 2],
      ['POST', '/v1/pairs', '{}', 400, 2],
      ['POST', '/v1/pairs', j({ ...ok2, bogus: 1 }), 400, 2],
      ['POST', '/v1/pairs', '[]', 400, 2],
      ['POST', '/v1/pairs', '"vinF"', 400, 2],
      ['POST', '/v1/pairs', j([ok2, { ...ok2, in: 'vinX', ex: 'vexX', mac: 'ff:ff:ff:ff:ff:ff' }]), 400, 2],
      ['POST', '/v1/pairs', j([ok2, { ...ok2, mac: '02:00:00:00:00:09' }]), 409, 5],
      ['POST', '/v1/pairs', j({ ...ok2, id: a.id }), 409, 5],
      ['POST', '/v1/pairs', j({ ...ok2, ex: 'nosuch0' }), 404, 4],
      ['POST', '/v1/pairs', j({ ...ok2, mode: 'drop' }), 400, 2],
      ['POST', '/v1/pairs', Buffer.alloc(MAX_BODY_BYTES + 1, 0x20), 413, 2],
      ['PUT', `/v1/pairs/${a.id}/mode`, j({ mode: 'warp' }), 400, 2],
      ['PUT', `/v1/pairs/${a.id}/mode`, j({ mode: 'fwd', also: 1 }), 400, 2],
      ['PUT', `/v1/pairs/${a.id}/mode`, undefined, 400, 2],
      ['PUT', '/v1/pairs/abc/mode', j({ mode: 'fwd' }), 400, 2],
      ['PUT', `/v1/pairs/${(a.id + 1) & 0xffff}/mode`, j({ mode: 'fwd' }), 404, 4],
      ['DELETE', '/v1/pairs/70000', undefined, 400, 2],
      ['DELETE', `/v1/pairs/${(a.id + 1) & 0xffff}`, undefined, 404, 4],
      ['POST', '/v1/flows', j({ id: a.id, proto: 'sctpx', src: '10.0.0.1', dst: '10.0.0.2' }), 400, 2],
      ['POST', '/v1/flows', j({ id: a.id, proto: 'udp', src: '10.0.0.1:1', dst: '10.0.0.2:2', timeoutS: -1 }), 400, 2],
      ['POST', '/v1/flows', j({ id: (a.id + 1) & 0xffff, proto: 'udp', src: '10.0.0.1:1', dst: '10.0.0.2:2' }), 404, 4],
      ['DELETE', '/v1/flows', j({ id: a.id }), 400, 2],
      ['POST', '/v1/intercept', '{}', 400, 2],
      ['POST', '/v1/intercept', j({ pid: -1 }), 400, 2],
      ['POST', '/v1/intercept', j({ pid: 1, netns: 'x' }), 400, 2],
      ['POST', '/v1/intercept', j({ netns: 'nbtnosuchns' }), 404, 4],
      ['POST', '/v1/intercept', j({ pid: process.pid, mode: 'fwdx' }), 400, 2],
      ['POST', '/v1/release', j({ netns: 'nbtnosuchns' }), 404, 4],
      ['POST', '/v1/release', j({ netnsInode: 4026531999 }), 404, 4],
      ['POST', '/v1/release', j({ netnsInode: '4026531999' }), 400, 2],
      ['POST', '/v1/release', j({ netnsInode: 4026531999, pid: 1 }), 400, 2],
      ['GET', '/v1/nope', undefined, 404, 4],
      ['GET', '/v2/pairs', undefined, 404, 4],
      ['DELETE', '/v1/health', undefined, 405, 2],
      ['GET', '/v1/pairs/%zz', undefined, 405, 2],
      ['DELETE', '/v1/pairs/%zz', undefined, 400, 2],
    ];
    const kBefore = kernelState(t.enforcer, pins);
    const sBefore = showJson(t.enforcer.name, pins);
    for (const [method, p, body, status, code] of cases) {
      const r = await raw(s.socket, method, p, body);
      const what = `${method} ${p} ${body === undefined ? '' : String(body).slice(0, 80)}`;
      assert.equal(r.status, status, `${what}: ${r.text}`);
      assert.deepEqual(Object.keys(r.body as object).sort(), ['code', 'error'], `${what}: ${r.text}`);
      const e = r.body as { error: string; code: number };
      assert.equal(e.code, code, `${what}: ${r.text}`);
      assert.ok(e.error.length > 0 && !e.error.includes('\n') && !/\bat .+:\d+:\d+/.test(e.error), `${what}: one line, no stack: ${e.error}`);
    }
    assert.deepEqual(showJson(t.enforcer.name, pins), sBefore, 'show --json unchanged');
    assert.equal(kernelState(t.enforcer, pins), kBefore, 'kernel state unchanged');
    // The client turns a refusal into a ServiceError with the CLI's exit-code class.
    await assert.rejects(s.client.setMode(a.id, 'warp' as 'fwd'), (e: unknown) => e instanceof ServiceError && e.code === 2 && e.status === 400);
    // And the service still serves.
    assert.equal((await s.client.health()).status, 'ok');
  });

  it('SIGTERM: no new connections, the call in flight (waiting for the CLI lock) finishes, exit 0, pins stay', async function () {
    const s = await serve(t.enforcer.name, pins, [], { NEUV_BPF_LOG_LEVEL: 'info' });
    let result: Promise<{ status: number; body: unknown }> | undefined;
    await withLock(pins, async () => {
      // The CLI's lock is held (here): the service's pair add waits for it.
      result = raw(s.socket, 'POST', '/v1/pairs', JSON.stringify({ ...spec(), mode: 'bypass' }));
      await waitFor('the service to wait for the lock', () => /waiting/.test(s.stderr()), 30000 * TIME_SCALE);
      s.child.kill('SIGTERM');
      await waitFor('the socket to go away', () => !fs.existsSync(s.socket), 30000 * TIME_SCALE);
      await assert.rejects(raw(s.socket, 'GET', '/v1/health'), /ENOENT|ECONNREFUSED/);
      assert.equal(s.child.exitCode, null, 'still running while its call is in flight');
    });
    const r = await result!;
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal((r.body as { created: boolean }).created, true);
    assert.deepEqual(await s.exited, { code: 0, signal: null });
    assert.equal(ping(t.host, t.wlAddr, 3), 3, 'the pair forwards with no service');
  });

  it('SIGKILL under a UDP stream loses no frame; a restarted service adopts the datapath and sees its pairs', async function () {
    const s1 = await serve(t.enforcer.name, pins);
    const a = await s1.client.addPair({ ...spec(), mode: 'bypass' });
    await s1.client.setMode(a.id, 'tap');
    const progBefore = (await s1.client.pairs()).pairs[0]!.vin!.progId;
    assert.ok(progBefore);
    const down = await startUdpStream({ senderNs: t.host.name, receiverNs: t.workload.name, to: t.wlAddr, port: 5101, count: 0, rate: 5000, idleMs: 1500, untilStopped: true });
    const up = await startUdpStream({ senderNs: t.workload.name, receiverNs: t.host.name, to: t.hostAddr, port: 5102, count: 0, rate: 5000, idleMs: 1500, untilStopped: true });
    onCleanup(() => {
      down.kill();
      up.kill();
    });
    // Frames to the workload, whatever the verdict.
    const toWl = async (c: ServiceClient) => {
      const p = (await c.stats()).pairs.find((x) => x.id === a.id)!;
      return Object.values(p.counters.to_wl).reduce((n, v) => n + v.packets, 0);
    };
    await waitFor('the stream to flow', async () => (await toWl(s1.client)) >= 2000, 60000 * TIME_SCALE, 100);
    s1.child.kill('SIGKILL');
    assert.equal((await s1.exited).signal, 'SIGKILL');
    assert.ok(fs.lstatSync(s1.socket).isSocket(), 'a killed service leaves its socket');
    const s2 = await serve(t.enforcer.name, pins);
    assert.equal(s2.info.datapath, 'adopted');
    const seen = (await s2.client.pairs()).pairs;
    assert.deepEqual(seen.map((p) => [p.id, p.mode]), [[a.id, 'tap']]);
    assert.equal(seen[0]!.vin!.progId, progBefore, 'adopted as it was: the same programs run');
    await s2.client.setMode(a.id, 'bypass');
    const before = await toWl(s2.client);
    await waitFor('the stream to go on', async () => (await toWl(s2.client)) >= before + 2000, 60000 * TIME_SCALE, 100);
    down.stop();
    up.stop();
    const [rd, ru] = await Promise.all([down.result, up.result]);
    // eslint-disable-next-line no-console
    console.log(`      SIGKILL + restart under ${rd.sent} + ${ru.sent} datagrams: lost ${rd.lost} + ${ru.lost}, duplicated ${rd.duplicated} + ${ru.duplicated}, longest gap ${rd.maxGapMs} / ${ru.maxGapMs} ms`);
    assert.equal(rd.lost, 0, JSON.stringify(rd));
    assert.equal(ru.lost, 0, JSON.stringify(ru));
    assert.equal(rd.duplicated + ru.duplicated, 0);
    s2.child.kill('SIGTERM');
    assert.equal((await s2.exited).code, 0);
  });

  it('one service per pin root; a live socket, a file or a symlink at --socket is never taken over', async function () {
    const s = await serve(t.enforcer.name, pins);
    const second = cli(['--netns', t.enforcer.name, '--bpffs', pins, 'serve', '--socket', path.join(os.tmpdir(), 'nbt-other.sock')]);
    assert.equal(second.code, 5, second.stderr);
    assert.match(second.stderr.trim(), /^neuv-bpf: another neuv-bpf serve owns pin root .*$/);
    const other = makePinRoot();
    const third = cli(['--netns', t.enforcer.name, '--bpffs', other, 'serve', '--socket', s.socket]);
    assert.equal(third.code, 5, third.stderr);
    assert.match(third.stderr.trim(), /^neuv-bpf: another process serves on /);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-svc-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const target = path.join(dir, 'target');
    fs.writeFileSync(target, 'keep');
    fs.symlinkSync(target, path.join(dir, 'link.sock'));
    for (const p of [path.join(dir, 'link.sock'), target]) {
      const r = cli(['--netns', t.enforcer.name, '--bpffs', other, 'serve', '--socket', p]);
      assert.equal(r.code, 5, r.stderr);
      assert.match(r.stderr.trim(), /exists and is not a socket/);
    }
    assert.equal(fs.readFileSync(target, 'utf8'), 'keep');
    assert.ok(!isLoaded(other), 'a refused serve loads nothing');
    const elsewhere = cli(['--netns', t.host.name, '--bpffs', pins, 'serve', '--socket', path.join(dir, 'elsewhere.sock')]);
    assert.equal(elsewhere.code, 7, `the pin root is bound to the enforcer netns: ${elsewhere.stderr}`);
    assert.ok(!fs.existsSync(path.join(dir, 'elsewhere.sock')));
    const bad = cli(['--netns', t.enforcer.name, '--bpffs', other, 'serve', '--metrics', 'nohostport']);
    assert.equal(bad.code, 2, bad.stderr);
    assert.equal((await s.client.health()).status, 'ok', 'the first one still serves');
  });

  it('metrics: per-pair frames and bytes, pairs by mode, flows, API latency; promtool check metrics passes; a real Prometheus scrapes a counter', async function () {
    tool('promtool');
    tool('prometheus');
    const s = await serve(t.enforcer.name, pins, ['--metrics', '127.0.0.1:0']);
    const port = s.info.metrics!.port;
    const a = await s.client.addPair({ ...spec(), mode: 'bypass' });
    assert.equal(ping(t.host, t.wlAddr, 5), 5);
    await s.client.offload({ id: a.id, proto: 'tcp', src: `${t.hostAddr}:1`, dst: `${t.wlAddr}:2` });
    const text = scrape(t.enforcer.name, port);
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    assert.equal(check.status, 0, `promtool check metrics: ${check.stdout}${check.stderr}`);
    const pl = { id: String(a.id), in: t.vin, ex: t.vex, direction: 'to_wl', action: 'to_peer' };
    assert.ok((sample(text, 'neuv_pair_frames_total', pl) ?? 0) >= 5, 'frames to the workload');
    assert.ok((sample(text, 'neuv_pair_bytes_total', pl) ?? 0) >= 5 * 98, 'bytes to the workload');
    assert.ok((sample(text, 'neuv_pair_frames_total', { ...pl, direction: 'from_wl' }) ?? 0) >= 5, 'frames from the workload');
    assert.equal(sample(text, 'neuv_pairs', { mode: 'bypass' }), 1);
    assert.equal(sample(text, 'neuv_pairs', { mode: 'fwd' }), 0);
    assert.equal(sample(text, 'neuv_flows', {}), 1);
    assert.equal(sample(text, 'neuv_flows_capacity', {}), 65536);
    assert.equal(sample(text, 'neuv_datapath_loaded', {}), 1);
    assert.ok((sample(text, 'neuv_api_request_duration_seconds_count', { method: 'POST', route: '/v1/pairs', status: '200' }) ?? 0) >= 1);
    await s.client.setMode(a.id, 'fwd');
    const after = scrape(t.enforcer.name, port);
    assert.equal(sample(after, 'neuv_pairs', { mode: 'fwd' }), 1, 'read on scrape');
    assert.equal(sample(after, 'neuv_flows', {}), 0, 'the mode switch cleared the flow');

    // A real Prometheus in the same netns: a 1 s scrape, the counter queried back through its HTTP API.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-prom-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    const cfg = path.join(dir, 'prometheus.yml');
    fs.writeFileSync(cfg, `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: neuv\n    static_configs:\n      - targets: ['127.0.0.1:${port}']\n`);
    const promPort = 19090;
    const prom = spawn('ip', ['netns', 'exec', t.enforcer.name, 'prometheus', `--config.file=${cfg}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'], { stdio: 'ignore' });
    onCleanup(() => prom.kill('SIGKILL'));
    const api = (q: string): { status: string; data: unknown } | undefined => {
      const r = spawnSync('ip', ['netns', 'exec', t.enforcer.name, 'curl', '-sf', `http://127.0.0.1:${promPort}${q}`], { encoding: 'utf8' });
      return r.status === 0 ? (JSON.parse(r.stdout) as { status: string; data: unknown }) : undefined;
    };
    await waitFor('Prometheus to scrape the service', () => {
      const r = api('/api/v1/targets');
      return (r?.data as { activeTargets?: Array<{ health: string }> } | undefined)?.activeTargets?.some((x) => x.health === 'up') ?? false;
    }, 120000 * TIME_SCALE, 250);
    const q = encodeURIComponent(`neuv_pair_frames_total{id="${a.id}",direction="to_wl",action="to_peer"}`);
    let value = 0;
    await waitFor('the counter in Prometheus', () => {
      const r = api(`/api/v1/query?query=${q}`);
      const res = (r?.data as { result?: Array<{ value: [number, string] }> } | undefined)?.result;
      value = res?.length ? Number(res[0]!.value[1]) : 0;
      return value >= 5;
    }, 60000 * TIME_SCALE, 250);
    assert.ok(value >= 5, `Prometheus has ${value}`);
  });
});
