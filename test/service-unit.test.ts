/** Unit tests of the service's pure parts: routing, body parsing, the error mapping, --metrics. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { ConflictError, ExitCode, KernelError, NotFoundError, UsageError, WrongNetnsError } from '../src/errors';
import { matchRoute, pairSelectorOf, pairSpecsOf, pairsToDelete, targetOf } from '../src/service/api';
import { pairSegment } from '../src/service/client';
import { traceRequest } from '../src/trace';
import { HttpError, errorResponse, objectWith } from '../src/service/http';
import { parseListenAddress } from '../src/service/server';

describe('service (unit)', function () {
  it('routes by method and path; a known path with another method lists the allowed ones', function () {
    const m = matchRoute('PUT', '/v1/pairs/4660/mode');
    assert.ok(m && 'route' in m);
    assert.equal(m.route.path, '/v1/pairs/{pair}/mode');
    assert.deepEqual(m.params, { pair: '4660' });
    const t = matchRoute('GET', '/v1/trace');
    assert.ok(t && 'route' in t && t.route.streams);
    assert.deepEqual(matchRoute('GET', '/v1/pairs/1'), { allowed: ['DELETE'] });
    assert.equal(matchRoute('GET', '/v1/pairs/1/mode/x'), undefined);
    assert.equal(matchRoute('GET', '/v2/health'), undefined);
    assert.throws(() => matchRoute('DELETE', '/v1/pairs/%zz'), UsageError);
  });

  it('pair specs: an object or a non-empty array, with the parser of pair add --file', function () {
    const spec = { in: 'vin1', ex: 'vex1', mac: '02:00:00:00:00:01' };
    assert.deepEqual(pairSpecsOf(spec), { specs: [spec], labels: ['pair'], many: false });
    assert.equal(pairSpecsOf([spec, { ...spec, in: 'vin2', ex: 'vex2' }]).specs.length, 2);
    assert.throws(() => pairSpecsOf([]), /no pairs/);
    assert.throws(() => pairSpecsOf(undefined), /needs a body/);
    assert.throws(() => pairSpecsOf([spec, { ...spec, x: 1 }]), /^UsageError: pair 2: unknown field 'x'/);
    assert.throws(() => pairSpecsOf({ ...spec, mac: 'ff:ff:ff:ff:ff:ff' }), /^UsageError: pair: MAC .* broadcast/);
  });

  it('a pair in a path: its id, or in:VIN / ex:VEX', function () {
    assert.deepEqual(pairSelectorOf('4660'), { id: 4660 });
    assert.deepEqual(pairSelectorOf('in:vin1a2b-eth0'), { in: 'vin1a2b-eth0' });
    assert.deepEqual(pairSelectorOf('ex:vex1'), { ex: 'vex1' });
    for (const bad of ['abc', '70000', '-1', 'vin:x', '']) assert.throws(() => pairSelectorOf(bad), UsageError, bad);
    assert.equal(pairSegment(7), '7');
    assert.equal(pairSegment({ id: 7 }), '7');
    assert.equal(pairSegment({ in: 'vin1' }), 'in%3Avin1');
    const m = matchRoute('DELETE', `/v1/pairs/${pairSegment({ ex: 'vex1' })}`);
    assert.ok(m && 'route' in m);
    assert.deepEqual(pairSelectorOf(m.params.pair!), { ex: 'vex1' });
  });

  it('POST /v1/pairs/delete: ids and in:/ex: strings, or all; anything else refused before a change', function () {
    assert.deepEqual(pairsToDelete({ pairs: [4660, '7', 'in:vin1', 'ex:vex1'] }), [{ id: 4660 }, { id: 7 }, { in: 'vin1' }, { ex: 'vex1' }]);
    assert.equal(pairsToDelete({ all: true }), 'all');
    for (const bad of [undefined, [], {}, { pairs: [] }, { pairs: [1], all: true }, { all: false }, { pairs: [70000] }, { pairs: [{ id: 1 }] }, { pairs: ['vin:x'] }, { pairs: [1], x: 1 }]) {
      assert.throws(() => pairsToDelete(bad), UsageError, JSON.stringify(bad));
    }
    const m = matchRoute('POST', '/v1/pairs/delete');
    assert.ok(m && 'route' in m && m.route.path === '/v1/pairs/delete');
  });

  it('trace filters and bounds: the CLI\'s and the API\'s, one parser', function () {
    const names = { pair: 'pair', in: 'in', count: 'count', duration: 'duration' };
    assert.deepEqual(traceRequest({}, names), { filter: { all: true }, count: undefined, durationS: undefined });
    assert.deepEqual(traceRequest({ pair: '0x1234', count: '5', duration: '1.5' }, names), { filter: { id: 0x1234 }, count: 5, durationS: 1.5 });
    assert.deepEqual(traceRequest({ in: 'vin1' }, names).filter, { in: 'vin1' });
    assert.throws(() => traceRequest({ pair: '1', in: 'x' }, names), /^UsageError: give at most one of pair ID and in VIN/);
    for (const bad of [{ pair: '70000' }, { count: '0' }, { duration: '-1' }, { duration: 'x' }, { in: 3 }]) assert.throws(() => traceRequest(bad, names), UsageError, JSON.stringify(bad));
  });

  it('bodies: only the known fields, the required ones present', function () {
    assert.deepEqual(objectWith({ mode: 'fwd' }, ['mode'], ['mode'], 'b'), { mode: 'fwd' });
    assert.throws(() => objectWith([], ['mode'], [], 'b'), UsageError);
    assert.throws(() => objectWith({ mode: 'fwd', x: 1 }, ['mode'], [], 'b'), /unknown field 'x'/);
    assert.throws(() => objectWith({}, ['mode'], ['mode'], 'b'), /missing field 'mode'/);
    assert.deepEqual(targetOf({ pid: 7 }), { pid: 7 });
    assert.deepEqual(targetOf({ netns: '/proc/7/ns/net' }), { netns: '/proc/7/ns/net' });
    for (const bad of [{}, { pid: 7, netns: 'x' }, { pid: '7' }, { pid: 0 }, { pid: 1.5 }, { netns: '' }, { netns: 3 }]) assert.throws(() => targetOf(bad), UsageError, JSON.stringify(bad));
  });

  it('errors: the exit-code class in the body, its HTTP status', function () {
    const cases: Array<[unknown, number, number]> = [
      [new UsageError('u'), 400, ExitCode.USAGE],
      [new NotFoundError('n'), 404, ExitCode.NOT_FOUND],
      [new ConflictError('c'), 409, ExitCode.CONFLICT],
      [new KernelError('attach x', 1), 403, ExitCode.PERMISSION],
      [new KernelError('attach x', 22), 500, ExitCode.KERNEL],
      [new WrongNetnsError('w'), 409, ExitCode.WRONG_NETNS],
      [new HttpError(413, 'big', ExitCode.USAGE), 413, ExitCode.USAGE],
      [new Error('boom\nat x.js:1:2'), 500, ExitCode.FAILURE],
    ];
    for (const [e, status, code] of cases) {
      const r = errorResponse(e);
      assert.equal(r.status, status, String(e));
      assert.equal(r.body.code, code);
      assert.ok(!r.body.error.includes('\n'));
    }
  });

  it('--metrics HOST:PORT', function () {
    assert.deepEqual(parseListenAddress('127.0.0.1:9469'), { host: '127.0.0.1', port: 9469 });
    assert.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parseListenAddress('localhost:80'), { host: 'localhost', port: 80 });
    for (const bad of ['9469', '127.0.0.1', ':9469', '1.2.3.4:70000', '[zz]:1', 'a b:1', '::1:80']) assert.throws(() => parseListenAddress(bad), UsageError, bad);
  });

  it("the CLI loads the service's server side only when serve runs (every command paid for it at start-up before)", function () {
    const cli = path.join(__dirname, '..', 'src', 'cli.js');
    const r = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(cli)}); console.log(JSON.stringify(Object.keys(require.cache)))`], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const loaded = JSON.parse(r.stdout) as string[];
    assert.ok(loaded.some((f) => f.endsWith(path.join('service', 'client.js'))), 'the client (to find a running service) is loaded');
    for (const f of ['server.js', 'api.js', 'metrics.js']) assert.ok(!loaded.some((l) => l.endsWith(path.join('service', f))), `service/${f} is not loaded`);
    assert.ok(!loaded.some((l) => l.includes(`${path.sep}prom-client${path.sep}`)), 'prom-client is not loaded');
  });
});
