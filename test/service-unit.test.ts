/** Unit tests of the service's pure parts: routing, body parsing, the error mapping, --metrics. */
import assert from 'node:assert/strict';
import { ConflictError, ExitCode, KernelError, NotFoundError, UsageError, WrongNetnsError } from '../src/errors';
import { matchRoute, pairSpecsOf, targetOf } from '../src/service/api';
import { HttpError, errorResponse, objectWith } from '../src/service/http';
import { parseListenAddress } from '../src/service/server';

describe('service (unit)', function () {
  it('routes by method and path; a known path with another method lists the allowed ones', function () {
    const m = matchRoute('PUT', '/v1/pairs/4660/mode');
    assert.ok(m && 'route' in m);
    assert.equal(m.route.path, '/v1/pairs/{id}/mode');
    assert.deepEqual(m.params, { id: '4660' });
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
});
