/**
 * Unit tests (no kernel) of bounded input (issue 25): the number parsers of
 * src/numbers.ts and the CLI options built on them, the error printer of
 * src/errors.ts (one line, at most 1,000 bytes, JSON under --json, no raw
 * message of a bug), and src/input.ts (special files refused unopened,
 * size limit).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Command } from 'commander';
import { ExitCode, KernelError, MAX_ERROR_BYTES, NeuvError, UsageError, boundedLine, cutValue, errorReport, formatError } from '../src/errors';
import { FLOW_SECONDS, PORT_ID, PORT_ID_HEX, TRACE_DURATION, WATCH_INTERVAL, parseDecimal, parseInteger, parsePid, parsePortId } from '../src/numbers';
import { integerOption, secondsOption } from '../src/cli/options';
import { MAX_INPUT_BYTES, openRegularFile, readBounded, readInputFile } from '../src/input';

function usage(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UsageError, `a UsageError, not ${String(e)}`);
    assert.match(e.message, re);
    assert.ok(e.message.length < 300, `a short message (${e.message.length} characters)`);
    return true;
  });
}

describe('numbers: one parser per kind, bounded before use', function () {
  it('integers: decimal digits (hex where asked), in range, else a usage error naming what and the range', function () {
    assert.equal(parseInteger('42', '--id', PORT_ID), 42);
    assert.equal(parseInteger(' 007 ', '--id', PORT_ID), 7);
    assert.equal(parseInteger(65535, '--id', PORT_ID), 65535);
    assert.equal(parseInteger('0x1234', '--pair', PORT_ID_HEX), 0x1234);
    assert.ok(Object.is(parseInteger('-0', '--id', PORT_ID), 0), '-0 is 0');
    assert.ok(Object.is(parseInteger(-0, '--id', PORT_ID), 0), '-0 is 0');
    usage(() => parseInteger('0x10', '--id', PORT_ID), /^--id "0x10" is not an integer \(expected 0\.\.65535\)$/);
    usage(() => parseInteger('65536', '--id', PORT_ID), /^--id "65536" is out of range \(expected 0\.\.65535\)$/);
    usage(() => parseInteger('-1', '--id', PORT_ID), /out of range/);
    for (const v of ['1e3', '1.5', 'NaN', 'Infinity', '', ' ', '+1', '1_000', '٣', '0b1', '0o7', '1 2']) usage(() => parseInteger(v, '--id', PORT_ID), /is not an integer/);
    // Past 2^53 and 2^64, and 100,000 digits: out of range, never Infinity or a rounded neighbour.
    for (const v of ['9007199254740993', '18446744073709551617', '1'.repeat(100000), '0x' + 'f'.repeat(20), '0x10000']) {
      usage(() => parseInteger(v, '--pair', PORT_ID_HEX), /is out of range \(expected 0\.\.65535\)$/);
    }
    usage(() => parseInteger('1'.repeat(100000), '--id', PORT_ID), /^--id "1{64}\.\.\." is out of range/);
    for (const v of [1.5, NaN]) usage(() => parseInteger(v, 'id', PORT_ID), /not an integer/);
    for (const v of [Infinity, -Infinity, 2 ** 64, 1e300]) usage(() => parseInteger(v, 'id', PORT_ID), /out of range/);
    for (const v of [null, true, {}, [], undefined]) usage(() => parseInteger(v, 'id', PORT_ID), /not an integer/);
    assert.equal(parsePortId('4660'), 4660);
    usage(() => parsePortId(70000), /^port id 70000 is out of range/);
    assert.equal(parsePid('1'), 1);
    usage(() => parsePid('0', '--pid'), /^--pid "0" is out of range \(expected 1\.\.4194304\)$/);
    usage(() => parsePid('4194305', '--pid'), /out of range/);
  });

  it('decimals (seconds): digits with at most one point, no exponent, in range', function () {
    assert.equal(parseDecimal('0.5', '--duration', TRACE_DURATION), 0.5);
    assert.equal(parseDecimal('.25', '--interval', WATCH_INTERVAL), 0.25);
    assert.equal(parseDecimal('30', '--timeout', FLOW_SECONDS), 30);
    assert.equal(parseDecimal('2.', '--timeout', FLOW_SECONDS), 2);
    assert.equal(parseDecimal('0.' + '3'.repeat(1000), '--interval', WATCH_INTERVAL), 0.33333333333333333);
    assert.equal(parseDecimal(10, '--timeout', FLOW_SECONDS), 10);
    for (const v of ['1e-9', '1e3', '1E3', '0x10', 'NaN', 'Infinity', '', '.', '1.2.3', '--1', '+1', '1,5', '१']) {
      usage(() => parseDecimal(v, '--interval', WATCH_INTERVAL), /^--interval ".*" is not a decimal number \(expected 0\.1\.\.3600 seconds\)$/);
    }
    for (const v of ['0', '-0', '0.01', '3600.001', '-1', '99999999999', '9'.repeat(100000), '0.0000000001']) {
      usage(() => parseDecimal(v, '--interval', WATCH_INTERVAL), /is out of range \(expected 0\.1\.\.3600 seconds\)$/);
    }
    usage(() => parseDecimal('99999999999', '--timeout', FLOW_SECONDS), /^--timeout "99999999999" is out of range \(expected 0\.001\.\.31536000 seconds\)$/);
    usage(() => parseDecimal('3000000', '--duration', TRACE_DURATION), /out of range \(expected 0\.1\.\.604800 seconds\)/);
    // A trace's longest duration fits one Node timer (2^31 - 1 ms).
    assert.ok(TRACE_DURATION.max * 1000 < 2 ** 31 - 1);
    // The longest flow timeout fits the map's u64 nanoseconds with room for now().
    assert.ok(BigInt(FLOW_SECONDS.max) * 1_000_000_000n < 2n ** 63n);
    for (const v of [Infinity, NaN, -1, 1e400]) usage(() => parseDecimal(v, 'timeout', FLOW_SECONDS), /timeout/);
  });

  it('options: commander parses and checks them as it reads them, naming the option', async function () {
    const p = new Command('x').exitOverride().configureOutput({ writeErr: () => undefined, writeOut: () => undefined });
    let got: Record<string, unknown> = {};
    p.addOption(integerOption('--id <n>', 'id', PORT_ID))
      .addOption(secondsOption('--interval <s>', 'interval', WATCH_INTERVAL, 1))
      .action((o: Record<string, unknown>) => {
        got = o;
      });
    await p.parseAsync(['node', 'x', '--id', '7']);
    assert.deepEqual(got, { id: 7, interval: 1 });
    await p.parseAsync(['node', 'x', '--interval', '0.5']);
    assert.equal(got.interval, 0.5);
    await assert.rejects(p.parseAsync(['node', 'x', '--id', '65536']), (e: unknown) => e instanceof UsageError && /^--id "65536" is out of range/.test(e.message));
    await assert.rejects(p.parseAsync(['node', 'x', '--interval', '1e-9']), (e: unknown) => e instanceof UsageError && /^--interval "1e-9" is not a decimal number/.test(e.message));
  });
});

describe('errors: the one line the CLI prints', function () {
  it('cutValue cuts at a character, never inside a surrogate pair', function () {
    assert.equal(cutValue('abc', 5), 'abc');
    assert.equal(cutValue('abcdefgh', 5), 'abcde...');
    assert.equal(cutValue('abcd😀x', 5), 'abcd...');
  });

  it('boundedLine: one line, control characters visible, long words cut, at most 1,000 bytes', function () {
    assert.equal(boundedLine('a\nb\r\n  c'), 'a b c');
    assert.equal(boundedLine('name \x1b[31mred'), 'name \\x1b[31mred');
    assert.equal(boundedLine(`interface ${'x'.repeat(1 << 20)} not found`), `interface ${'x'.repeat(100)}... not found`);
    for (const msg of ['é'.repeat(5000), 'ab '.repeat(2000), `${'😀'.repeat(400)} ${'x y'.repeat(1000)}`, '\u0000'.repeat(3000)]) {
      const l = boundedLine(msg);
      assert.ok(Buffer.byteLength(l) <= MAX_ERROR_BYTES, `${Buffer.byteLength(l)} bytes`);
      assert.ok(!l.includes('\n') && !l.includes('\ufffd'), 'one line of whole characters');
    }
  });

  it('errorReport: our errors keep their message and code (errno by name); anything else is one generic line', function () {
    assert.deepEqual(errorReport(new UsageError('bad')), { error: 'bad', code: 2 });
    assert.deepEqual(errorReport(new KernelError('attach vin1 ingress', 22)), { error: 'attach vin1 ingress: Invalid argument (EINVAL)', code: 6, errno: 'EINVAL' });
    const bug = errorReport(new RangeError('The value of "value" is out of range. It must be >= 0n and < 2n ** 64n. Received 99_999_999_999_000_000_000n'));
    assert.equal(bug.code, ExitCode.FAILURE);
    assert.match(bug.error, /^internal error \(RangeError\): a bug in neuv-bpf/);
    assert.doesNotMatch(bug.error, /2n \*\* 64n|Received/);
    const sys = Object.assign(new Error("EACCES: permission denied, open '/run/neuv-bpf/x'"), { code: 'EACCES', errno: -13, syscall: 'open' });
    assert.deepEqual(errorReport(sys), { error: 'unexpected failure in open: Permission denied (EACCES) (--log-level debug logs the details)', code: 1, errno: 'EACCES' });
    assert.match(errorReport('a string').error, /^internal error \(error\)/);
    assert.match(errorReport(undefined).error, /^internal error/);
  });

  it('formatError: "neuv-bpf: ..." or one JSON object, both within 1,000 bytes', function () {
    assert.equal(formatError({ error: 'bad', code: 2 }, false), 'neuv-bpf: bad');
    assert.equal(formatError({ error: 'x: Invalid argument (EINVAL)', code: 6, errno: 'EINVAL' }, true), '{"error":"x: Invalid argument (EINVAL)","code":6,"errno":"EINVAL"}');
    for (const error of ['"'.repeat(5000), '\u0001 '.repeat(3000), 'é'.repeat(3000), `${'y'.repeat(1 << 20)}`]) {
      for (const json of [false, true]) {
        const s = formatError({ error, code: 2 }, json);
        assert.ok(Buffer.byteLength(s) <= MAX_ERROR_BYTES && !s.includes('\n'), `${Buffer.byteLength(s)} bytes`);
        if (json) assert.equal((JSON.parse(s) as { code: number }).code, 2);
      }
    }
  });

  it('a NeuvError keeps its class code through errorReport', function () {
    assert.equal(errorReport(new NeuvError('x', ExitCode.CONFLICT)).code, 5);
  });
});

describe('input: files a user names', function () {
  let dir: string;
  before(function () {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-input-'));
  });
  after(function () {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('a regular file is read; a symlink to one too', function () {
    const f = path.join(dir, 'a.jsonl');
    fs.writeFileSync(f, '{"in":"vin1"}\n');
    assert.equal(readInputFile(f, '--file'), '{"in":"vin1"}\n');
    fs.symlinkSync(f, path.join(dir, 'link'));
    assert.equal(readInputFile(path.join(dir, 'link'), '--file'), '{"in":"vin1"}\n');
  });

  it('a FIFO without a writer, /dev/zero, a directory: refused at once, never read', function () {
    const fifo = path.join(dir, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const t0 = Date.now();
    usage(() => readInputFile(fifo, '--file'), /^--file \S+fifo is a FIFO, not a regular file$/);
    assert.ok(Date.now() - t0 < 1000, 'no wait for a writer');
    usage(() => readInputFile('/dev/zero', '--file'), /^--file \/dev\/zero is a character device, not a regular file$/);
    usage(() => readInputFile(dir, '--from'), /^--from \S+ is a directory, not a regular file$/);
    usage(() => readInputFile('', '--file'), /--file is empty/);
    assert.throws(() => readInputFile(path.join(dir, 'nosuch'), '--file'), (e: unknown) => e instanceof NeuvError && e.code === ExitCode.NOT_FOUND && /not found: No such file or directory \(ENOENT\)$/.test(e.message));
    assert.throws(() => openRegularFile(path.join(dir, 'a.jsonl', 'x'), '--obj'), (e: unknown) => e instanceof NeuvError && e.code === ExitCode.NOT_FOUND);
  });

  it('past the limit: refused, by size before reading and while reading (a file that lies about its size)', function () {
    const f = path.join(dir, 'big');
    fs.writeFileSync(f, Buffer.alloc(2000, 0x41));
    assert.equal(readInputFile(f, '--file', 2000).length, 2000);
    usage(() => readInputFile(f, '--file', 1999), /^--file \S+big is larger than 1999 bytes, the most an input may hold$/);
    // /proc files say size 0: the read itself is bounded.
    usage(() => readInputFile('/proc/self/maps', '--file', 10), /larger than 10 bytes/);
    const fd = fs.openSync('/dev/zero', 'r');
    try {
      usage(() => readBounded(fd, 3 << 20, 'stdin'), /^stdin is larger than 3 MiB/);
    } finally {
      fs.closeSync(fd);
    }
    assert.equal(MAX_INPUT_BYTES, 64 << 20);
  });
});
