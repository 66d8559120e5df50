/** Unit tests (no kernel): src/layout/: the map codecs. */
import assert from 'node:assert/strict';
import { decodePort, encodePort, Role, Mode, parseMode, encodeConfig, decodeConfig, addStats, emptyStats, encodeStats } from '../src/layout';

describe('codecs', function () {
  it('port entries round-trip and match the C layout byte for byte', function () {
    const p = { peerIfindex: 0x01020304, flags: 3, id: 0xbeef, role: Role.VEX, mode: Mode.TAP, mac: Buffer.from([2, 0x42, 0xac, 0x11, 0, 2]) };
    const b = encodePort(p);
    assert.equal(b.toString('hex'), '04030201' + '03000000' + 'efbe' + '02' + '02' + '0242ac110002' + '0000' + '00000000' /* lock */);
    assert.deepEqual(decodePort(b), p);
  });
  it('config and stats round-trip; per-CPU stats add up', function () {
    const c = { dpIfindex: 10000000, flags: 0, traceUntil: 123n };
    assert.deepEqual(decodeConfig(encodeConfig(c)), c);
    const s = emptyStats();
    s[1]![2] = { packets: 5n, bytes: 500n };
    const total = addStats(addStats(emptyStats(), encodeStats(s)), encodeStats(s));
    assert.deepEqual(total[1]![2], { packets: 10n, bytes: 1000n });
    assert.deepEqual(total[0]![0], { packets: 0n, bytes: 0n });
  });
  it('parses modes', function () {
    assert.equal(parseMode('fwd'), Mode.FWD);
    assert.equal(parseMode('TAP'), Mode.TAP);
    assert.equal(parseMode('bypass'), Mode.BYPASS);
    assert.equal(parseMode('drop'), Mode.DROP);
    assert.throws(() => parseMode('none'), /unknown mode 'none'/);
    assert.throws(() => parseMode('reset'), /unknown mode/);
  });
});
