/**
 * Logging (issue 7): --log-level and NEUV_BPF_LOG_LEVEL (the flag wins) reach
 * every module and libbpf's own messages; a verifier refusal prints the end
 * of the verifier log after the one error line, at any level.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { verifierTail } from '../src/cli';
import { resolveLevel } from '../src/log';
import { ROOT, cli, makeNetns, makePinRoot, requireKernel, leakChecks } from './helpers';

const REJECT = path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o');

interface LogLine {
  level: number;
  mod?: string;
  msg: string;
}

/** The JSON log records in a stderr (the CLI logs JSON lines when stderr is not a terminal). */
function logLines(stderr: string): LogLine[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as LogLine);
}
const DEBUG = 20;

describe('log level (unit)', function () {
  it('flag beats environment beats the default (warn); unknown levels are refused', function () {
    assert.equal(resolveLevel(undefined, {}), 'warn');
    assert.equal(resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'debug' }), 'debug');
    assert.equal(resolveLevel('warn', { NEUV_BPF_LOG_LEVEL: 'debug' }), 'warn');
    assert.equal(resolveLevel('trace', { NEUV_BPF_LOG_LEVEL: 'error' }), 'trace');
    assert.equal(resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'DEBUG' }), 'debug');
    assert.throws(() => resolveLevel(undefined, { NEUV_BPF_LOG_LEVEL: 'loud' }), /unknown log level 'loud'/);
  });
});

describe('verifier log tail (unit)', function () {
  const log = [
    "libbpf: map 'neuv_config': created successfully, fd=21",
    "libbpf: prog 'neuv_vbr': BPF program load failed: Permission denied",
    "libbpf: prog 'neuv_vbr': -- BEGIN PROG LOAD LOG --",
    ...Array.from({ length: 30 }, (_, i) => `${i}: (b7) r${i % 10} = 0`),
    '30: (71) r1 = *(u8 *)(r1 +20)',
    'invalid access to packet, off=20 size=1, R1(id=0,off=20,r=0)',
    'R1 offset is outside of the packet',
    'processed 31 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0',
    '-- END PROG LOAD LOG --',
    "libbpf: prog 'neuv_vbr': failed to load: -13",
  ].join('\n');

  it('the last 20 lines of the refused program, the failing instruction marked', function () {
    const t = verifierTail(log);
    assert.equal(t.length, 21);
    assert.equal(t[0], 'verifier log of neuv_vbr (last 20 of 34 lines; --log-level debug for all of it):');
    const marked = t.filter((l) => l.startsWith('>> '));
    assert.deepEqual(marked, ['>> 30: (71) r1 = *(u8 *)(r1 +20)']);
    assert.equal(t[t.length - 1], '   processed 31 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0');
    assert.ok(!t.some((l) => l.includes('libbpf:')), 'only the verifier log, not libbpf around it');
  });

  it('a short log is shown whole; no log, no tail', function () {
    const t = verifierTail("libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n0: (95) exit\nR0 !read_ok\n-- END PROG LOAD LOG --");
    assert.deepEqual(t, ['verifier log of x:', '>> 0: (95) exit', '   R0 !read_ok']);
    assert.deepEqual(verifierTail('libbpf: failed to open object: No such file'), []);
  });
});

describe('log level (CLI)', function () {
  // `version` runs without root and logs at debug (start, kernel features).
  const debugLines = (env: Record<string, string | undefined>, args: string[] = []) => {
    const r = cli([...args, 'version'], { env });
    assert.equal(r.code, 0, r.stderr);
    return logLines(r.stderr).filter((l) => l.level <= DEBUG);
  };

  it('--log-level debug', function () {
    const d = debugLines({ NEUV_BPF_LOG_LEVEL: undefined }, ['--log-level', 'debug']);
    assert.ok(d.some((l) => l.mod === 'cli' && l.msg === 'start'), JSON.stringify(d));
  });

  it('NEUV_BPF_LOG_LEVEL=debug', function () {
    assert.ok(debugLines({ NEUV_BPF_LOG_LEVEL: 'debug' }).some((l) => l.mod === 'cli'));
    assert.deepEqual(debugLines({ NEUV_BPF_LOG_LEVEL: 'info' }), []);
  });

  it('the flag beats the environment, both ways', function () {
    assert.deepEqual(debugLines({ NEUV_BPF_LOG_LEVEL: 'debug' }, ['--log-level', 'warn']), []);
    assert.ok(debugLines({ NEUV_BPF_LOG_LEVEL: 'error' }, ['--log-level', 'debug']).length > 0);
  });

  it('an unknown level is one error line', function () {
    const r = cli(['version'], { env: { NEUV_BPF_LOG_LEVEL: 'loud' } });
    assert.equal(r.code, 2, 'a usage error, like the flag');
    assert.match(r.stderr.trim(), /^neuv-bpf: unknown log level 'loud' \(expected one of trace, debug, info, warn, error\)$/);
    const f = cli(['--log-level', 'loud', 'version']);
    assert.equal(f.code, 2);
    assert.equal(f.stderr.trim(), r.stderr.trim(), 'the same line for the flag');
  });

  it('the flag takes the spellings the variable takes (any case)', function () {
    for (const level of ['DEBUG', 'Debug', 'debug']) {
      assert.ok(debugLines({ NEUV_BPF_LOG_LEVEL: level }).length > 0, `NEUV_BPF_LOG_LEVEL=${level}`);
      assert.ok(debugLines({ NEUV_BPF_LOG_LEVEL: undefined }, ['--log-level', level]).length > 0, `--log-level ${level}`);
    }
    assert.deepEqual(debugLines({ NEUV_BPF_LOG_LEVEL: 'debug' }, ['--log-level', 'WARN']), []);
  });
});

describe('log level reaches libbpf; verifier log at any level (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  const load = (level: { flag?: string; env?: string }, extra: string[] = []) => {
    const ns = makeNetns();
    const pins = makePinRoot();
    const args = ['--netns', ns.name, '--bpffs', pins, ...(level.flag ? ['--log-level', level.flag] : []), 'load', ...extra];
    const r = cli(args, { env: { NEUV_BPF_LOG_LEVEL: level.env } });
    cli(['--netns', ns.name, '--bpffs', pins, 'unload']);
    return r;
  };

  it('--log-level debug load shows libbpf lines and every module; info shows none of them', function () {
    const d = load({ flag: 'debug' });
    assert.equal(d.code, 0, d.stderr);
    const lines = logLines(d.stderr);
    const libbpf = lines.filter((l) => l.mod === 'libbpf');
    assert.ok(libbpf.length > 10, `libbpf lines at debug: ${libbpf.length}`);
    assert.ok(libbpf.some((l) => /libbpf: (loading object|map 'neuv_ports')/.test(l.msg)), JSON.stringify(libbpf.slice(0, 5)));
    const mods = new Set(lines.filter((l) => l.level <= DEBUG).map((l) => l.mod));
    for (const m of ['cli', 'features', 'libbpf', 'exec']) assert.ok(mods.has(m), `module ${m} logs at debug (got ${[...mods].join(', ')})`);

    const i = load({ flag: 'info' });
    assert.equal(i.code, 0, i.stderr);
    assert.deepEqual(logLines(i.stderr).filter((l) => l.mod === 'libbpf' || l.level <= DEBUG), []);
  });

  it('NEUV_BPF_LOG_LEVEL=debug reaches libbpf too; --log-level info beats it', function () {
    const d = load({ env: 'debug' });
    assert.equal(d.code, 0, d.stderr);
    assert.ok(logLines(d.stderr).some((l) => l.mod === 'libbpf'));
    const i = load({ flag: 'info', env: 'debug' });
    assert.equal(i.code, 0, i.stderr);
    assert.equal(logLines(i.stderr).filter((l) => l.mod === 'libbpf').length, 0);
  });

  it('a refusal at the default level: the error line first, then the verifier log tail with the failing instruction marked', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', REJECT], { env: { NEUV_BPF_LOG_LEVEL: undefined } });
    cli(['--netns', ns.name, '--bpffs', pins, 'unload']);
    assert.equal(r.code, 6, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.match(lines[0]!, /^neuv-bpf: load BPF object .*reject\.bpf\.o: Permission denied \(EACCES\): the verifier refused a program$/);
    assert.equal(lines[1], 'verifier log of neuv_vbr:');
    const body = lines.slice(2).filter((l) => !l.startsWith('{'));
    assert.ok(body.length > 0 && body.length <= 20, `tail of ${body.length} lines`);
    const marked = body.findIndex((l) => l.startsWith('>> '));
    assert.ok(marked >= 0, r.stderr);
    assert.match(body[marked]!, /^>> \d+: \(71\) r1 = \*\(u8 \*\)\(r1 \+20\)/);
    assert.match(body[marked + 1]!, /invalid access to packet/);
    assert.equal(body.filter((l) => l.startsWith('>> ')).length, 1);
    assert.ok(body.every((l) => l.startsWith('>> ') || l.startsWith('   ')));
  });

  it('the tail is there at error level too, and the whole libbpf output at debug', function () {
    const e = load({ flag: 'error' }, ['--obj', REJECT]);
    assert.equal(e.code, 6);
    const lines = e.stderr.trimEnd().split('\n');
    assert.match(lines[0]!, /^neuv-bpf: load BPF object .*verifier refused a program$/);
    assert.ok(lines.some((l) => l.startsWith('>> ')), e.stderr);
    assert.equal(logLines(e.stderr).length, 0, 'no log records at error level');
    const d = load({ flag: 'debug' }, ['--obj', REJECT]);
    assert.equal(d.code, 6);
    assert.ok(logLines(d.stderr).some((l) => l.mod === 'loader' && l.msg === 'libbpf output of the failed load'));
  });
});
