/**
 * The pure parts of src/pairs/ (spec.ts): spec validation, `pair add --file` JSON
 * lines, id allocation, selectors, and the text formatting of show/stats.
 */
import assert from 'node:assert/strict';
import { ConflictError, NeuvError, UsageError } from '../src/errors';
import { Mode } from '../src/layout';
import {
  allocateIds,
  checkBatch,
  IdRequest,
  parseModeName,
  parsePairLines,
  parsePortId,
  parseWorkloadMac,
  validateSpec,
} from '../src/pairs';
import { selectorFrom } from '../src/cli/pair';
import { si, table } from '../src/format';

const OK = { in: 'vin1', ex: 'vex1', mac: '02:42:ac:11:00:02' };

function throwsClass(fn: () => unknown, cls: typeof NeuvError, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.constructor?.name}: ${(e as Error)?.message}`);
    assert.match((e as Error).message, re);
    return true;
  });
}

describe('pairs: spec validation', () => {
  it('accepts a minimal spec; mode and id stay unset, ipv6ToDp false', () => {
    const v = validateSpec(OK);
    assert.equal(v.in, 'vin1');
    assert.equal(v.ex, 'vex1');
    assert.deepEqual([...v.mac], [2, 0x42, 0xac, 0x11, 0, 2]);
    assert.equal(v.mode, undefined);
    assert.equal(v.id, undefined);
    assert.equal(v.ipv6ToDp, false);
  });

  it('accepts every add mode in either case, and ids 0 and 65535', () => {
    assert.equal(validateSpec({ ...OK, mode: 'fwd' }).mode, Mode.FWD);
    assert.equal(validateSpec({ ...OK, mode: 'TAP' as never }).mode, Mode.TAP);
    assert.equal(validateSpec({ ...OK, mode: 'bypass' }).mode, Mode.BYPASS);
    assert.equal(validateSpec({ ...OK, id: 0 }).id, 0);
    assert.equal(validateSpec({ ...OK, id: 65535 }).id, 65535);
    assert.equal(validateSpec({ ...OK, ipv6ToDp: true }).ipv6ToDp, true);
  });

  const bad: Array<[string, object, RegExp]> = [
    ['malformed MAC', { mac: '02:42:ac:11:00' }, /malformed MAC/],
    ['multicast MAC', { mac: '01:00:5e:00:00:01' }, /multicast address: a workload MAC must be unicast/],
    ['broadcast MAC', { mac: 'ff:ff:ff:ff:ff:ff' }, /broadcast address/],
    ['all-zero MAC', { mac: '00:00:00:00:00:00' }, /all zeros/],
    ['UCMAC-prefixed MAC', { mac: '4e:65:75:56:00:01' }, /4e:65:75:56 \("NeuV"\)/],
    ['MAC not a string', { mac: 42 }, /malformed MAC/],
    ['drop is not an add mode', { mode: 'drop' }, /unknown mode "drop" \(expected fwd, tap or bypass\)/],
    ['unknown mode', { mode: 'inline' }, /unknown mode "inline"/],
    ['id out of range', { id: 65536 }, /port id 65536 is out of range/],
    ['negative id', { id: -1 }, /port id -1 is out of range/],
    ['fractional id', { id: 1.5 }, /not an integer/],
    ['id as text', { id: 'x' }, /not an integer/],
    ['bad interface name', { in: 'a/b' }, /contains a space, '\/'/],
    ['interface name too long', { ex: 'x'.repeat(16) }, /longer than 15 bytes/],
    ['in == ex', { ex: 'vin1' }, /in and ex are the same interface \(vin1\)/],
    ['vbr-neuv as a port', { ex: 'vbr-neuv' }, /DP port pair/],
    ['ipv6ToDp not a boolean', { ipv6ToDp: 'yes' }, /ipv6ToDp must be true or false/],
    ['in not a string', { in: 7 }, /must be a string/],
  ];
  for (const [what, patch, re] of bad) {
    it(`refuses ${what} with a UsageError`, () => {
      throwsClass(() => validateSpec({ ...OK, ...patch } as never), UsageError, re);
    });
  }

  it('prefixes errors with the label', () => {
    throwsClass(() => validateSpec({ ...OK, mac: 'zz' }, 'f.jsonl line 7'), UsageError, /^f\.jsonl line 7: malformed MAC/);
  });

  it('parsePortId takes numbers and decimal strings only', () => {
    assert.equal(parsePortId('4660'), 4660);
    assert.equal(parsePortId(' 12 '), 12);
    for (const s of ['0x10', '1e3', '', '-1', '12a']) throwsClass(() => parsePortId(s), UsageError, /port id/);
    throwsClass(() => parsePortId('65536'), UsageError, /out of range/);
  });

  it('parseModeName lists the allowed modes', () => {
    assert.equal(parseModeName('drop'), Mode.DROP);
    throwsClass(() => parseModeName('none'), UsageError, /expected fwd, tap, bypass or drop/);
    throwsClass(() => parseModeName(undefined), UsageError, /unknown mode/);
  });

  it('parseWorkloadMac accepts locally administered and vendor unicast MACs', () => {
    assert.equal(parseWorkloadMac('02:42:AC:11:00:02').length, 6);
    assert.equal(parseWorkloadMac('00:16:3e:00:00:01').length, 6);
  });
});

describe('pairs: JSON lines (pair add --file)', () => {
  it('parses one object per line, skipping blank lines, with labels naming the line', () => {
    const text = [
      JSON.stringify({ in: 'vin1', ex: 'vex1', mac: '02:00:00:00:00:01' }),
      '',
      JSON.stringify({ in: 'vin2', ex: 'vex2', mac: '02:00:00:00:00:02', mode: 'tap', id: 7, ipv6ToDp: true }),
      '   ',
    ].join('\n');
    const { specs, labels } = parsePairLines(text, 'p.jsonl');
    assert.equal(specs.length, 2);
    assert.deepEqual(labels, ['p.jsonl line 1', 'p.jsonl line 3']);
    assert.equal(specs[1]!.id, 7);
    assert.equal(specs[1]!.mode, 'tap');
  });

  it('accepts CRLF line ends', () => {
    const { specs } = parsePairLines('{"in":"a","ex":"b","mac":"02:00:00:00:00:01"}\r\n', 'x');
    assert.equal(specs.length, 1);
  });

  const bad: Array<[string, string, typeof NeuvError, RegExp]> = [
    ['bad JSON', '{"in":"vin1",', UsageError, /^f line 2: not valid JSON/],
    ['not an object', '[1,2]', UsageError, /^f line 2: expected a JSON object/],
    ['unknown field', '{"in":"vin1","ex":"vex1","mac":"02:00:00:00:00:09","ipv6":true}', UsageError, /^f line 2: unknown field 'ipv6' \(expected in, ex, mac, mode, id, ipv6ToDp\)/],
    ['missing fields', '{"in":"vin1"}', UsageError, /^f line 2: missing fields 'ex', 'mac'/],
    ['bad value', '{"in":"vin9","ex":"vex9","mac":"01:00:00:00:00:01"}', UsageError, /^f line 2: MAC 01:00:00:00:00:01 is a multicast/],
    ['id as a string', '{"in":"vin9","ex":"vex9","mac":"02:00:00:00:00:01","id":"x"}', UsageError, /^f line 2: port id "x"/],
    ['interface twice', '{"in":"vin9","ex":"vin0","mac":"02:00:00:00:00:03"}', ConflictError, /^f line 2: interface vin0 is also in f line 1/],
    ['pinned id twice', '{"in":"vin9","ex":"vex9","mac":"02:00:00:00:00:03","id":5}', ConflictError, /^f line 2: port id 5 is also pinned by f line 1/],
  ];
  for (const [what, line2, cls, re] of bad) {
    it(`refuses ${what}, naming the line`, () => {
      const line1 = JSON.stringify({ in: 'vin0', ex: 'vex0', mac: '02:00:00:00:00:01', id: 5 });
      throwsClass(() => parsePairLines(`${line1}\n${line2}\n`, 'f'), cls, re);
    });
  }

  it('refuses an empty input', () => {
    throwsClass(() => parsePairLines('\n\n', 'stdin'), UsageError, /stdin: no pairs/);
  });

  it('checkBatch catches an interface used as vin by one spec and vex by another', () => {
    const a = validateSpec({ in: 'a', ex: 'b', mac: '02:00:00:00:00:01' });
    const b = validateSpec({ in: 'c', ex: 'a', mac: '02:00:00:00:00:02' });
    throwsClass(() => checkBatch([a, b], ['one', 'two']), ConflictError, /two: interface a is also in one/);
  });
});

describe('pairs: id allocation', () => {
  const req = (derived: number, pinned?: number, label = `r${derived}`): IdRequest => ({ derived, pinned, label });

  it('uses the derived id (exPort ifindex & 0xffff) when free', () => {
    assert.deepEqual(allocateIds([req(12), req(14)], new Map()), [
      { id: 12, source: 'derived' },
      { id: 14, source: 'derived' },
    ]);
  });

  it('a taken derived id gets the lowest free id instead, saying which was taken', () => {
    const used = new Map([[12, 'pair a/b'], [0, 'pair c/d']]);
    assert.deepEqual(allocateIds([req(12)], used), [{ id: 1, source: 'allocated', taken: 12 }]);
  });

  it('two exPorts whose ifindexes differ by 65536 never share an id', () => {
    const g = allocateIds([req(70000 & 0xffff), req(4464)], new Map());
    assert.equal(g[0]!.id, 4464);
    assert.equal(g[1]!.source, 'allocated');
    assert.notEqual(g[1]!.id, 4464);
  });

  it('pinned ids are reserved before derived ones, whatever the order in the batch', () => {
    const g = allocateIds([req(7), req(9, 7)], new Map());
    assert.deepEqual(g, [{ id: 0, source: 'allocated', taken: 7 }, { id: 7, source: 'pinned' }]);
  });

  it('a fallback never steals another request’s own derived id', () => {
    // r1 wants 5 (taken); the lowest free would be 5's neighbour... r2 derives 0.
    const used = new Map([[5, 'x']]);
    const g = allocateIds([req(5, undefined, 'r1'), req(0, undefined, 'r2')], used);
    assert.deepEqual(g, [{ id: 1, source: 'allocated', taken: 5 }, { id: 0, source: 'derived' }]);
  });

  it('a pinned id already in use is a ConflictError naming its owner', () => {
    throwsClass(() => allocateIds([req(3, 12, 'line 4')], new Map([[12, 'pair vin1/vex1 (id 12)']])), ConflictError, /line 4: port id 12 is already used by pair vin1\/vex1 \(id 12\)/);
  });

  it('runs out cleanly when all 65536 ids are taken', () => {
    const used = new Map<number, string>();
    for (let i = 0; i < 65536; i++) used.set(i, 'x');
    throwsClass(() => allocateIds([req(1)], used), ConflictError, /no free port id left/);
  });

  it('allocates 1,000 colliding requests quickly and without duplicates', () => {
    const reqs = Array.from({ length: 1000 }, (_, i) => req(7, undefined, `r${i}`));
    const t0 = Date.now();
    const g = allocateIds(reqs, new Map());
    assert.ok(Date.now() - t0 < 200);
    assert.equal(new Set(g.map((x) => x.id)).size, 1000);
  });
});

describe('pairs: CLI selectors and formatting', () => {
  it('needs exactly one of --in, --ex, --id', () => {
    assert.deepEqual(selectorFrom({ in: 'vin1' }), { in: 'vin1' });
    assert.deepEqual(selectorFrom({ ex: 'vex1' }), { ex: 'vex1' });
    assert.deepEqual(selectorFrom({ id: '42' }), { id: 42 });
    throwsClass(() => selectorFrom({}), UsageError, /exactly one of --in VIN, --ex VEX or --id N/);
    throwsClass(() => selectorFrom({ in: 'a', id: '1' }), UsageError, /exactly one/);
    throwsClass(() => selectorFrom({ id: '70000' }), UsageError, /out of range/);
  });

  it('si() keeps three significant digits', () => {
    assert.equal(si(0), '0');
    assert.equal(si(999), '999');
    assert.equal(si(1234), '1.23k');
    assert.equal(si(56_700_000n, 'B'), '56.7MB');
    assert.equal(si(1.5), '1.5');
  });

  it('table() aligns columns', () => {
    assert.deepEqual(table(['A', 'BB'], [['xyz', '1'], ['q', '22']], ['l', 'r']), ['A    BB', 'xyz   1', 'q    22']);
  });
});
