/** Unit tests (no kernel): src/log.ts: the log level. */
import assert from 'node:assert/strict';
import { resolveLevel } from '../src/log';

describe('log level resolution', function () {
  it('flag beats environment beats default', function () {
    assert.equal(resolveLevel(undefined, {}), 'warn');
    assert.equal(resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'debug' }), 'debug');
    assert.equal(resolveLevel('warn', { NEUV_BPF_LOG_LEVEL: 'debug' }), 'warn');
    assert.equal(resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'TRACE' }), 'trace');
  });
  it('rejects an unknown level', function () {
    assert.throws(() => resolveLevel('loud', {}), /unknown log level 'loud'/);
    assert.throws(() => resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'x' }), /unknown log level 'x'/);
  });
});
