/** Pure unit tests: option parsing, error mapping, codecs, name validation. */
import assert from 'node:assert/strict';
import { resolveLevel } from '../src/log';
import { KernelError, errnoName, ExitCode, UsageError } from '../src/errors';
import { validateIfName } from '../src/link';
import { checkPrivileges, pinRootFrom } from '../src/loader';
import { decodePort, encodePort, Role, Mode, parseMode, encodeConfig, decodeConfig, addStats, emptyStats, encodeStats } from '../src/layout';

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

describe('errors', function () {
  it('names errnos and maps classes to exit codes', function () {
    assert.equal(errnoName(1), 'EPERM');
    assert.equal(errnoName(-17), 'EEXIST');
    assert.equal(errnoName(95), 'EOPNOTSUPP');
    const eperm = new KernelError('attach vex1234-eth0 ingress', 1);
    assert.equal(eperm.message, 'attach vex1234-eth0 ingress: Operation not permitted (EPERM): needs root (CAP_BPF and CAP_NET_ADMIN)');
    assert.equal(eperm.code, ExitCode.PERMISSION);
    assert.equal(new KernelError('x', 19).code, ExitCode.NOT_FOUND);
    assert.equal(new KernelError('x', 22).code, ExitCode.KERNEL);
    assert.equal(new KernelError('x', 13, 'verifier', ExitCode.KERNEL).code, ExitCode.KERNEL);
    assert.equal(new UsageError('bad').code, ExitCode.USAGE);
  });
});

describe('interface name validation', function () {
  it('accepts what Linux accepts', function () {
    for (const n of ['eth0', 'vex1a2b-eth0', 'vin-x.1', 'a', '123456789012345', 'br_0@x']) assert.equal(validateIfName(n), n);
  });
  it('refuses empty, long, dot names, spaces, slashes and shell metacharacters', function () {
    for (const n of ['', '1234567890123456', '.', '..', 'a b', 'a/b', 'a:b', 'a;rm', '$(x)', 'a`b', 'a\nb', "a'b", 'a|b', 'ä'.repeat(8)]) {
      assert.throws(() => validateIfName(n), UsageError, JSON.stringify(n));
    }
  });
});

describe('privilege check', function () {
  const status = (eff: string) => `Name:\tnode\nCapEff:\t${eff}\n`;
  it('passes with CAP_NET_ADMIN + CAP_BPF, or CAP_SYS_ADMIN in place of CAP_BPF', function () {
    checkPrivileges(status('000001ffffffffff'));
    checkPrivileges(status((1n << 12n | 1n << 39n).toString(16)));
    checkPrivileges(status((1n << 12n | 1n << 21n).toString(16)));
  });
  it('names what is missing', function () {
    assert.throws(() => checkPrivileges(status('0')), /needs root \(CAP_BPF and CAP_NET_ADMIN\): missing CAP_NET_ADMIN and CAP_BPF/);
    assert.throws(() => checkPrivileges(status((1n << 39n).toString(16))), /missing CAP_NET_ADMIN$/);
  });
});

describe('pin root', function () {
  it('flag, then NEUV_BPF_PIN_ROOT, then /sys/fs/bpf/neuv; absolute only', function () {
    assert.equal(pinRootFrom(undefined, {}), '/sys/fs/bpf/neuv');
    assert.equal(pinRootFrom(undefined, { NEUV_BPF_PIN_ROOT: '/sys/fs/bpf/x/' }), '/sys/fs/bpf/x');
    assert.equal(pinRootFrom('/sys/fs/bpf/y', { NEUV_BPF_PIN_ROOT: '/sys/fs/bpf/x' }), '/sys/fs/bpf/y');
    assert.throws(() => pinRootFrom('relative/dir', {}), /must be an absolute path/);
  });
});

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
