/**
 * Kernel suite for the clients of `neuv-bpf serve` (docs/api.md): the Go
 * client of examples/go/neuvbpf built with Debian's Go and run against a
 * live service (the pair's entries in the pinned maps and its traffic follow
 * each pipe operation), the CLI going through a running service (and
 * standalone without one), and the streamed trace GET /v1/trace.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, cli, leakChecks, makePinRoot, onCleanup, requireKernel, TIME_SCALE } from './helpers';
import { addPair, makePairTopology, PairTopology } from './topology';
import { ping } from './traffic';
import { StubDp } from '../harness/stub-dp';
import { raw, sample, scrape, serve } from './service-fixture';
import { MODE_NAMES, decodePort, u32Key } from '../src/layout';
import { Pins } from '../src/pins';

const GO_PKG = path.join(ROOT, 'examples', 'go', 'neuvbpf');

/** The mode of an interface's entry in the pin root's neuv_ports, or 'none' without one. */
function mapMode(t: PairTopology, pins: string, ifname: string): string {
  const ifindex = (JSON.parse(t.enforcer.exec('ip', ['-j', 'link', 'show', 'dev', ifname])) as Array<{ ifindex: number }>)[0]!.ifindex;
  const v = Pins.with(pins, ['ports'], (p) => p.ports.lookup(u32Key(ifindex)));
  return v ? MODE_NAMES[decodePort(v).mode]! : 'none';
}

describe('the service\'s clients: Go, the CLI, the trace stream (kernel)', function () {
  this.timeout(240000 * TIME_SCALE);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  let t: PairTopology;
  let pins: string;
  beforeEach(function () {
    t = makePairTopology();
    pins = makePinRoot();
  });

  it('the Go client (examples/go/neuvbpf): go test, then each pipe operation changes the pinned entries and the traffic follows', async function () {
    if (spawnSync('go', ['version']).error) throw new Error("go is needed (Debian's golang-go): make deps");
    const s = await serve(t.enforcer.name, pins);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-go-'));
    onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
    // Offline and self-contained: no module download, caches in the temporary directory.
    const env = { ...process.env, GOCACHE: path.join(dir, 'cache'), GOPATH: path.join(dir, 'gopath'), GOPROXY: 'off', GOFLAGS: '', GO111MODULE: 'on', HOME: dir };
    const go = (args: string[], extra: NodeJS.ProcessEnv = {}) => {
      const r = spawnSync('go', args, { cwd: GO_PKG, env: { ...env, ...extra }, encoding: 'utf8' });
      assert.equal(r.status, 0, `go ${args.join(' ')}: ${r.stdout}${r.stderr}`);
      return r.stdout;
    };
    const bin = path.join(dir, 'neuvbpf-pipe');
    go(['build', '-o', bin, './cmd/neuvbpf-pipe']);
    // The package's own test: every operation and two refusals, through the API only.
    const out = go(['test', '-count=1', '-v', '-run', 'TestPipeOperations', '.'], { NEUVBPF_SOCKET: s.socket, NEUVBPF_IN: t.vin, NEUVBPF_EX: t.vex, NEUVBPF_MAC: t.wlMac });
    assert.match(out, /--- PASS: TestPipeOperations/, out);

    const pipe = (...args: string[]) => spawnSync(bin, ['-socket', s.socket, ...args], { encoding: 'utf8' });
    const ok = (...args: string[]) => {
      const r = pipe(...args);
      assert.equal(r.status, 0, `neuvbpf-pipe ${args.join(' ')}: ${r.stderr}`);
      return r.stdout;
    };
    const counters = async () => (await s.client.stats()).pairs.find((p) => p.in === t.vin)!.counters;
    const modes = () => [mapMode(t, pins, t.vin), mapMode(t, pins, t.vex)];

    const a = JSON.parse(ok('attach', t.vin, t.vex, t.wlMac)) as { id: number; ucmac: string; bcmac: string };
    assert.equal(a.ucmac, `4e:65:75:56:${(a.id >> 8).toString(16).padStart(2, '0')}:${(a.id & 0xff).toString(16).padStart(2, '0')}`);
    assert.deepEqual(modes(), ['bypass', 'bypass'], 'attach: bypass');
    assert.equal(ping(t.host, t.wlAddr, 3), 3, 'bypass forwards');

    ok('tap', t.vin, t.vex);
    assert.deepEqual(modes(), ['tap', 'tap']);
    const c0 = await counters();
    assert.equal(ping(t.host, t.wlAddr, 3), 3, 'tap forwards');
    const c1 = await counters();
    assert.ok(c1.to_wl.copy.packets >= c0.to_wl.copy.packets + 3, 'tap: a copy of each frame to the DP');

    ok('fwd', t.vin, t.vex);
    assert.deepEqual(modes(), ['fwd', 'fwd']);
    await StubDp.start(t.enforcer.name, { under: ['nice', '-n', '-15'] });
    assert.equal(ping(t.host, t.wlAddr, 3), 3, 'fwd: through the (stub) DP');
    const c2 = await counters();
    assert.ok(c2.to_wl.to_dp.packets >= 3 && c2.to_wl.from_dp.packets >= 3, `fwd: to and from the DP: ${JSON.stringify(c2.to_wl)}`);

    ok('reset', t.vin, t.vex);
    assert.deepEqual(modes(), ['bypass', 'bypass'], 'reset: bypass');
    ok('detach', t.vin, t.vex);
    assert.deepEqual(modes(), ['none', 'none'], 'detach: no entries');
    assert.deepEqual(JSON.parse(ok('pairs')), [], 'no pairs');
    const r = pipe('fwd', t.vin, t.vex);
    assert.equal(r.status, 1);
    assert.match(r.stderr.trim(), /^neuvbpf-pipe: neuv-bpf PUT \/v1\/pairs\/in:\S+\/mode: .* \(HTTP 404, code 4\)$/);
  });

  it('the CLI goes through a running service (its metrics see the calls), standalone without one, and errors read alike', async function () {
    const w2 = addPair(t, { vin: 'vinF', vex: 'vexF', hostIf: 'hB', wlIf: 'eth1', hostAddr: '10.78.0.1', wlAddr: '10.78.0.2' });
    const s = await serve(t.enforcer.name, pins, ['--metrics', '127.0.0.1:0']);
    const port = s.info.metrics!.port;
    const c = (...args: string[]) => cli(['--netns', t.enforcer.name, '--bpffs', pins, ...args]);
    const calls = (method: string, route: string, status = '200') =>
      sample(scrape(t.enforcer.name, port), 'neuv_api_request_duration_seconds_count', { method, route, status }) ?? 0;

    const add = c('pair', 'add', '--in', t.vin, '--ex', t.vex, '--mac', t.wlMac, '--mode', 'tap', '--json');
    assert.equal(add.code, 0, add.stderr);
    const id = (JSON.parse(add.stdout) as { id: number }).id;
    assert.equal(calls('POST', '/v1/pairs'), 1, 'pair add went through the service');
    const file = path.join(os.tmpdir(), `nbt-pairs-${process.pid}.jsonl`);
    fs.writeFileSync(file, JSON.stringify({ in: w2.vin, ex: w2.vex, mac: w2.wlMac }) + '\n');
    onCleanup(() => fs.rmSync(file, { force: true }));
    const addFile = c('pair', 'add', '--file', file);
    assert.equal(addFile.code, 0, addFile.stderr);
    assert.match(addFile.stdout, /1 pairs: 1 added, 0 existed/);
    assert.equal(calls('POST', '/v1/pairs'), 2, 'pair add --file too');

    for (const sel of [['--id', String(id)], ['--in', t.vin], ['--ex', t.vex]]) {
      const m = c('pair', 'mode', 'fwd', ...sel);
      assert.equal(m.code, 0, m.stderr);
    }
    assert.equal(calls('PUT', '/v1/pairs/{pair}/mode'), 3, 'pair mode by id, vin and vex');
    assert.equal((await s.client.pairs()).pairs.find((p) => p.id === id)!.mode, 'fwd');

    const flow = ['--id', String(id), '--proto', 'udp', '--src', `${t.hostAddr}:5000`, '--dst', `${t.wlAddr}:6000`];
    const allow = c('flow', 'allow', ...flow, '--idle', '30');
    assert.equal(allow.code, 0, allow.stderr);
    assert.match(allow.stdout, /^offloaded allow pair \d+ udp .* idle timeout 30s$/m);
    assert.equal((await s.client.flows({ id })).length, 1);
    assert.equal(c('flow', 'revoke', ...flow).stdout.trim(), 'revoked');
    assert.equal(c('flow', 'deny', ...flow).code, 0);
    assert.match(c('flow', 'revoke', '--id', String(id), '--all').stdout, /^revoked 1 flow of pair/);
    assert.equal(calls('POST', '/v1/flows'), 2);
    assert.equal(calls('DELETE', '/v1/flows'), 1);
    assert.equal(calls('DELETE', '/v1/pairs/{id}/flows'), 1);

    // A refusal reads as it does standalone: the same line, the same exit code.
    const bad = c('pair', 'mode', 'fwd', '--in', 'nosuch0');
    assert.equal(bad.code, 4, bad.stderr);
    assert.equal(calls('PUT', '/v1/pairs/{pair}/mode', '404'), 1);
    const dup = c('pair', 'add', '--in', w2.vin, '--ex', w2.vex, '--mac', '02:00:00:00:00:09');
    assert.equal(dup.code, 5, dup.stderr);

    // Drops by reason: a pair in drop mode, through the CLI and the service, counts its frames per pair and by reason.
    const reason = (text: string) => sample(text, 'neuv_frames_by_reason_total', { reason: 'drop_mode' }) ?? 0;
    const before = reason(scrape(t.enforcer.name, port));
    assert.equal(c('pair', 'mode', 'drop', '--id', String(id)).code, 0);
    assert.equal(ping(t.host, t.wlAddr, 2, 0.2), 0, 'drop mode drops');
    const text = scrape(t.enforcer.name, port);
    assert.ok(reason(text) >= before + 2, `neuv_frames_by_reason_total{reason="drop_mode"}: ${before} -> ${reason(text)}`);
    assert.ok((sample(text, 'neuv_pair_frames_total', { id: String(id), direction: 'to_wl', action: 'drop' }) ?? 0) >= 2);

    assert.equal(c('pair', 'del', '--ex', w2.vex).code, 0);
    assert.equal(calls('DELETE', '/v1/pairs/{pair}'), 1);

    // Without a service (SIGKILLed: its lock is free, its socket stays): standalone.
    s.child.kill('SIGKILL');
    await s.exited;
    assert.ok(fs.existsSync(s.socket), 'the dead service left its socket');
    const alone = c('pair', 'del', '--id', String(id));
    assert.equal(alone.code, 0, alone.stderr);
    assert.match(alone.stdout, /^deleted pair id/);
    assert.equal(c('show', '--json').code, 0);
  });

  it('GET /v1/trace streams NDJSON events with the CLI trace\'s filters, ends at its count or duration, and refuses bad queries', async function () {
    const s = await serve(t.enforcer.name, pins);
    const a = await s.client.addPair({ in: t.vin, ex: t.vex, mac: t.wlMac, mode: 'bypass' });
    // count: ends after that many events, each a `trace --json` object of this pair.
    const events: Array<{ id: number | null; hook: string; mode: string; verdicts: string[] }> = [];
    const pinger = setInterval(() => void ping(t.host, t.wlAddr, 1), 200);
    onCleanup(() => clearInterval(pinger));
    const end = await s.client.trace({ pair: a.id, count: 4, duration: 60 }, (e) => events.push(e));
    assert.equal(end.end, 'count');
    assert.equal(end.records, 4);
    assert.equal(events.length, 4);
    for (const e of events) {
      assert.equal(e.id, a.id);
      assert.equal(e.mode, 'bypass');
      assert.deepEqual(e.verdicts, ['to_peer']);
    }
    // duration: ends by itself; in=: the pair by its vin; a raw request is chunked NDJSON.
    const t0 = Date.now();
    const r = await raw(s.socket, 'GET', `/v1/trace?in=${t.vin}&duration=1`);
    clearInterval(pinger);
    assert.ok(Date.now() - t0 >= 1000);
    assert.equal(r.status, 200);
    const lines = r.text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(Object.keys(lines.at(-1)!).sort(), ['dropped', 'end', 'lost', 'records']);
    assert.equal(lines.at(-1)!.end, 'duration');
    assert.equal(lines.at(-1)!.records, lines.length - 1);
    assert.ok(lines.length > 1, 'events within the second');
    assert.ok(lines.slice(0, -1).every((l) => l.id === a.id));
    // Refused before any stream: JSON errors with the CLI's classes.
    for (const [q, status, code] of [
      ['pair=1&in=x', 400, 2],
      ['pair=70000', 400, 2],
      ['count=0', 400, 2],
      ['duration=-1', 400, 2],
      ['bogus=1', 400, 2],
      ['in=nosuch0', 404, 4],
    ] as const) {
      const e = await raw(s.socket, 'GET', `/v1/trace?${q}`);
      assert.equal(e.status, status, `${q}: ${e.text}`);
      assert.equal((e.body as { code: number }).code, code, `${q}: ${e.text}`);
    }
    // One reader of the ring at a time: a second stream is a conflict; a SIGTERM ends the first one.
    const first = s.client.trace({ duration: 60 }, () => undefined);
    await new Promise((res) => setTimeout(res, 300));
    const second = await raw(s.socket, 'GET', '/v1/trace?duration=1');
    assert.equal(second.status, 409, second.text);
    s.child.kill('SIGTERM');
    assert.equal((await first).end, 'service stopping');
    assert.equal((await s.exited).code, 0);
  });
});
