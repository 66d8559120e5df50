/**
 * Security (issue 6): the pin directory is 0700 and every pin 0600 (maps,
 * programs, tcx link pins of vbr-neuv and of ports), whatever the umask; a
 * directory there that is not 0700 is refused, not chmodded (issue 25,
 * test/paths.test.ts); every command refuses cleanly without
 * root, and as root without CAP_BPF or CAP_NET_ADMIN, changing nothing; no
 * external program is ever run through a shell (a lint over src/ and the C
 * tools).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { veth } from '../harness/net';
import { CLI, ROOT, cli, kernelState, leafCommands, makeNetns, makePinRoot, Netns, requireKernel, runCleanups, leakChecks } from './helpers';
import { buildProgram, UNPRIVILEGED } from '../src/cli';
import { ExitCode } from '../src/errors';
import { features } from '../src/features';
import { LOCK_DIR, lockPath } from '../src/lock';
import { mapPinPath } from '../src/pins';

const MAC = '02:00:00:00:00:01';

function mode(p: string): string {
  return (fs.statSync(p).mode & 0o777).toString(8);
}

/** Pin root 0700, every pin in it 0600. */
function pinModes(pins: string): string[] {
  const bad: string[] = [];
  if (mode(pins) !== '700') bad.push(`${pins} is ${mode(pins)}`);
  for (const f of fs.readdirSync(pins)) if (mode(path.join(pins, f)) !== '600') bad.push(`${f} is ${mode(path.join(pins, f))}`);
  return bad;
}

describe('security (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  // Each block below runs its own cleanups.
  leakChecks({ perTest: false });

  describe('modes', function () {
    afterEach(runCleanups);
    it('pin directory 0700 and pins 0600 (maps, programs, tcx links of vbr-neuv and of ports), with umask 000; a pre-existing 0755 directory refused, not chmodded; lock directory 0700, lock files 0600', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      fs.mkdirSync(pins, { mode: 0o755 });
      fs.chmodSync(pins, 0o755);
      // umask 000 for the CLI: through a shell here, in the test, on purpose (the CLI itself never uses one).
      const withUmask = (args: string[], env: NodeJS.ProcessEnv = {}) =>
        spawnSync('/bin/sh', ['-c', 'umask 000; exec "$@"', 'sh', process.execPath, CLI, '--netns', ns.name, '--bpffs', pins, ...args], {
          encoding: 'utf8',
          env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn', ...env },
        });
      const pre = withUmask(['load']);
      assert.equal(pre.status, ExitCode.UNSAFE, pre.stderr);
      assert.match(pre.stderr, /pin root \S+ has mode 755, not 700/);
      assert.equal(mode(pins), '755', 'not chmodded');
      fs.rmdirSync(pins);
      const l = withUmask(['load']);
      assert.equal(l.status, 0, l.stderr);
      assert.deepEqual(pinModes(pins), []);
      const files = fs.readdirSync(pins);
      for (const f of ['neuv_ports', 'neuv_ids', 'neuv_stats', 'neuv_global', 'neuv_config', 'prog_vin', 'prog_vex', 'prog_vbr']) assert.ok(files.includes(f), `${f} pinned`);
      if (features().tcx) assert.ok(files.includes('link_10000000'), 'vbr-neuv tcx link pinned');

      // vinN and vexN each with a peer of its own (as peers of each other they are a refused loop).
      for (let i = 1; i <= 2; i++) {
        veth({ ns, name: `vin${i}` }, { ns, name: `wl${i}` }, { up: false });
        veth({ ns, name: `vex${i}` }, { ns, name: `h${i}` }, { up: false });
      }
      const kinds = features().tcx ? ['tcx', 'tc'] : ['tc'];
      kinds.forEach((kind, i) => {
        const a = withUmask(['pair', 'add', '--in', `vin${i + 1}`, '--ex', `vex${i + 1}`, '--mac', MAC], { NEUV_BPF_ATTACH: kind });
        assert.equal(a.status, 0, a.stderr);
      });
      if (features().tcx) {
        const links = fs.readdirSync(pins).filter((f) => /^link_\d+$/.test(f) && f !== 'link_10000000');
        assert.equal(links.length, 2, `tcx link pins of vin1/vex1: ${links.join(' ')}`);
      }
      assert.equal(withUmask(['load']).status, 0, 'a reload keeps the modes');
      assert.deepEqual(pinModes(pins), []);
      // show --check says so too (it checks the modes).
      fs.chmodSync(mapPinPath(pins, 'ids'), 0o644);
      const chk = cli(['--netns', ns.name, '--bpffs', pins, 'show', '--check']);
      assert.equal(chk.code, 1);
      assert.match(chk.stderr, /pin neuv_ids has mode 644, not 600/);
      fs.chmodSync(mapPinPath(pins, 'ids'), 0o600);

      assert.equal(mode(LOCK_DIR), '700', `${LOCK_DIR}`);
      assert.equal(mode(lockPath(pins)), '600', lockPath(pins));
      assert.equal(mode(`${lockPath(pins)}.wait`), '600', `${lockPath(pins)}.wait`);
    });
  });

  describe('without privileges', function () {
    let ns: Netns;
    let pins: string;
    let state0: string;
    let ctr: Netns;
    before(function () {
      ns = makeNetns();
      ctr = makeNetns();
      pins = makePinRoot();
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
      veth({ ns, name: 'vin1' }, { ns, name: 'wl1' }, { up: false });
      veth({ ns, name: 'vex1' }, { ns, name: 'h1' }, { up: false });
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC, '--id', '7']).code, 0);
      state0 = kernelState(ns, pins);
    });
    after(runCleanups);

    /** Plausible arguments per command, so the refusal is about privileges, not usage. */
    const argsFor = (p: string[], cmd: Command): string[] => {
      const known: Record<string, string[]> = {
        'pair add': ['--in', 'vin1', '--ex', 'vex1', '--mac', MAC],
        'pair mode': ['--id', '7', 'tap'],
        'pair del': ['--id', '7'],
        intercept: ['--container-netns', ctr.name],
        release: ['--container-netns', ctr.name],
        trace: ['--count', '1'],
        stats: [],
      };
      const k = known[p.join(' ')];
      if (k) return k;
      // Anything else (a command added later): its required arguments and mandatory options, with dummy values.
      const out: string[] = [];
      for (const o of cmd.options) if (o.mandatory && o.long) out.push(o.long, 'x');
      for (const a of cmd.registeredArguments) if (a.required) out.push('x');
      return out;
    };

    for (const [who, spawnOpts] of [
      ['as uid 65534 (nobody)', { uid: 65534 }],
      ['as root without CAP_BPF and CAP_SYS_ADMIN', { drop: ['bpf', 'sys_admin'] }],
      ['as root without CAP_NET_ADMIN', { drop: ['net_admin'] }],
    ] as const) {
      it(`every command refuses ${who}: exit 3, one line naming what is missing, nothing changed`, function () {
        this.timeout(120000);
        const failures: string[] = [];
        const cmds = leafCommands(buildProgram(() => undefined));
        for (const { path: p, cmd } of cmds) {
          // Entering a netns needs privileges of its own: the commands that run without root get none.
          const unpriv = UNPRIVILEGED.has(p[p.length - 1]!);
          const args = [...(unpriv ? [] : ['--netns', ns.name]), '--bpffs', pins, ...p, ...argsFor(p, cmd)];
          let r: { code: number; stdout: string; stderr: string };
          if ('uid' in spawnOpts) r = cli(args, { uid: spawnOpts.uid });
          else {
            const s = spawnSync('setpriv', ['--inh-caps=-all', `--bounding-set=${spawnOpts.drop.map((c) => `-${c}`).join(',')}`, '--', process.execPath, CLI, ...args], {
              encoding: 'utf8', env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' },
            });
            r = { code: s.status ?? -1, stdout: s.stdout, stderr: s.stderr };
          }
          const lines = r.stderr.trim().split('\n').filter(Boolean);
          const name = p.join(' ');
          if (unpriv) {
            if (r.code !== 0) failures.push(`${name}: runs without privileges, but exit ${r.code}: ${r.stderr.trim()}`);
            continue;
          }
          const want = 'uid' in spawnOpts ? /needs root \(CAP_BPF and CAP_NET_ADMIN\): missing CAP_NET_ADMIN and CAP_BPF/ : (spawnOpts.drop as readonly string[]).includes('net_admin') ? /missing CAP_NET_ADMIN$/ : /missing CAP_BPF$/;
          if (r.code !== 3) failures.push(`${name}: exit ${r.code}, expected 3: ${r.stderr.trim()}`);
          else if (lines.length !== 1 || !want.test(lines[0]!)) failures.push(`${name}: stderr ${JSON.stringify(r.stderr)}`);
          if (r.stdout !== '') failures.push(`${name}: printed ${JSON.stringify(r.stdout.slice(0, 100))}`);
        }
        assert.equal(kernelState(ns, pins), state0, 'nothing changed');
        assert.deepEqual(failures, []);
        // eslint-disable-next-line no-console
        console.log(`      ${cmds.length} commands: ${cmds.map((c) => c.path.join(' ')).join(', ')}`);
      });
    }

    it('--help and version work without privileges', function () {
      const h = cli(['--help'], { uid: 65534 });
      assert.equal(h.code, 0, h.stderr);
      assert.match(h.stdout, /Usage: neuv-bpf/);
      const v = cli(['version', '--json'], { uid: 65534 });
      assert.equal(v.code, 0, v.stderr);
    });
  });
});

// ---------------------------------------------------------------- no shell

describe('no external program through a shell (lint)', function () {
  const srcFiles = (dir: string): string[] =>
    fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? srcFiles(path.join(dir, e.name)) : /\.ts$/.test(e.name) ? [path.join(dir, e.name)] : []));

  /** Forbidden in src/: every way child_process can hand a command line to /bin/sh. */
  const RULES: Array<[string, RegExp]> = [
    ['exec/execSync imported from child_process (they run a command line through /bin/sh)', /import\s*\{[^}]*\bexec(Sync)?\b[^}]*\}\s*from\s*['"](node:)?child_process['"]/],
    ['exec/execSync required from child_process', /\{[^}]*\bexec(Sync)?\b[^}]*\}\s*=\s*require\(\s*['"](node:)?child_process['"]/],
    ['child_process.exec', /\b(child_process|childProcess|cp)\.exec(Sync)?\s*\(|require\(\s*['"](node:)?child_process['"]\s*\)\.exec/],
    ['execSync(', /(^|[^.\w])execSync\s*\(/],
    ['shell: true', /shell\s*:\s*(true|['"`])/],
    ['spawn/execFile of a command line (a string with a space as the program)', /\b(spawn|spawnSync|execFile|execFileSync)\s*\(\s*(['"`])[^'"`]*\s[^'"`]*\2/],
    ['a shell as the program', /\b(spawn|spawnSync|execFile|execFileSync|run)\s*\(\s*['"`](\/bin\/|\/usr\/bin\/)?(sh|bash|dash|zsh|ash)['"`]/],
  ];

  /** The rule hits in a source text, "line: what: code". Comments are skipped. */
  function lint(text: string): string[] {
    const hits: string[] = [];
    // Imports may span lines: join each import statement into one line first.
    const joined = text.replace(/import\s*\{[^}]*\}/g, (m) => m.replace(/\s+/g, ' '));
    joined.split('\n').forEach((l, i) => {
      if (/^\s*(\/\/|\*|\/\*)/.test(l)) return;
      for (const [what, re] of RULES) if (re.test(l)) hits.push(`${i + 1}: ${what}: ${l.trim()}`);
    });
    return hits;
  }

  it('src/ never uses exec, execSync, shell: true, a command line as the program, or a shell as the program', function () {
    const files = srcFiles(path.join(ROOT, 'src'));
    assert.ok(files.length > 10, 'src/ found');
    const hits = files.flatMap((f) => lint(fs.readFileSync(f, 'utf8')).map((h) => `${path.relative(ROOT, f)}:${h}`));
    assert.deepEqual(hits, []);
    // And every external program src/ runs goes through an argument array: execFile/spawn with a variable or a plain name.
    const calls = files.flatMap((f) => [...fs.readFileSync(f, 'utf8').matchAll(/\b(execFile|execFileSync|spawn|spawnSync)\s*\(/g)].map(() => f));
    assert.ok(calls.length > 0, 'src/ runs programs with execFile/spawn');
  });

  it('the lint catches what it must (self-test)', function () {
    const bad = [
      "import { exec } from 'node:child_process';\nexec('ip link show ' + name, cb);",
      "import {\n  execFile,\n  execSync,\n} from 'child_process';",
      "const { exec } = require('child_process');",
      "execSync(`tc qdisc del dev ${dev} clsact`);",
      "spawn('ip', args, { shell: true });",
      "spawn('ip link show', [])",
      "execFile('/bin/sh', ['-c', cmd])",
      "spawn('bash', ['-c', cmd])",
      "child_process.exec(cmd)",
      "require('child_process').exec(cmd)",
    ];
    for (const t of bad) assert.ok(lint(t).length > 0, `not caught: ${t}`);
    const good = [
      "import { execFile, spawn } from 'node:child_process';",
      "execFile(cmd, args, { maxBuffer: 1 }, cb)",
      "spawn('ip', ['netns', 'exec', ns, 'tc'])",
      'const m = re.exec(line);',
      "run('ip', ['link', 'del', 'dev', VBR])",
      "  exec(ns: string, cmd: string, args: string[]): string {",
      "t.exec(ns, 'ping', ['-c', String(count)])",
    ];
    for (const t of good) assert.deepEqual(lint(t), [], `false positive: ${t}`);
  });

  it('the C tools never call system() or popen()', function () {
    for (const f of fs.readdirSync(path.join(ROOT, 'tools')).filter((x) => x.endsWith('.c'))) {
      const text = fs.readFileSync(path.join(ROOT, 'tools', f), 'utf8');
      assert.doesNotMatch(text, /\b(system|popen|execl|execlp|execvp)\s*\(/, f);
    }
  });
});
