/**
 * The build's own checks: tools/check-imports.js (imports run downhill, no
 * cycle, every module in a layer of docs/architecture.md) on this tree and on
 * small trees made to break it, and the timing reporter's table
 * (test/timing-reporter.ts) after a real mocha run, and the suites' own
 * conventions (leakChecks in every kernel suite, pins opened through
 * src/pins.ts).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CHECK = path.join(ROOT, 'tools', 'check-imports.js');

function checkImports(root?: string): { status: number | null; out: string; err: string } {
  const r = spawnSync(process.execPath, [CHECK, ...(root ? ['--root', root] : [])], { encoding: 'utf8', cwd: ROOT });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** A tree with the given layers (lowest first) and files (path under src/ -> source). */
function tree(layers: string[], files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-imports-'));
  fs.mkdirSync(path.join(dir, 'docs'));
  const md = ['# Architecture', '', '<!-- layers: read by tools/check-imports.js -->', '```text', ...layers, '```', ''].join('\n');
  fs.writeFileSync(path.join(dir, 'docs', 'architecture.md'), md);
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(dir, 'src', f)), { recursive: true });
    fs.writeFileSync(path.join(dir, 'src', f), text);
  }
  return dir;
}

describe('tools/check-imports.js', function () {
  const made: string[] = [];
  after(function () {
    for (const d of made) fs.rmSync(d, { recursive: true, force: true });
  });
  const run = (layers: string[], files: Record<string, string>) => {
    const d = tree(layers, files);
    made.push(d);
    return checkImports(d);
  };
  const LAYERS = ['errors.ts         the ground', 'bpf/ lock.ts      peers', 'pairs/', 'cli.ts'];
  const CLEAN = {
    'errors.ts': 'export const E = 1;\n',
    'bpf/index.ts': "export * from './map';\nimport { E } from '../errors';\n",
    'bpf/map.ts': 'export const M = 1;\n',
    'lock.ts': "import { E } from './errors';\nexport const L = E;\n",
    'pairs/index.ts': "import type { M } from '../bpf';\nimport { L } from '../lock';\nexport const P = () => import('./spec');\n",
    'pairs/spec.ts': "const e = require('../errors');\n",
    'cli.ts': "import { P } from './pairs';\nimport * as fs from 'node:fs';\nimport { Command } from 'commander';\n",
  };

  it("passes on this repository's src/ and harness/", function () {
    const r = checkImports();
    assert.equal(r.status, 0, r.err);
    assert.match(r.out, /every import downhill, no cycle/);
  });

  it('passes a tree whose imports run downhill (import, export from, import type, import(), require)', function () {
    const r = run(LAYERS, CLEAN);
    assert.equal(r.status, 0, r.err);
  });

  it('fails on a back-edge, naming the file, line and layers, whatever the form of the import', function () {
    for (const [form, line] of [
      ['import', "import { P } from '../pairs';"],
      ['export from', "export { P } from '../pairs';"],
      ['import type', "export type T = import('../pairs').X;"],
      ['import()', "const p = import('../pairs/spec');"],
      ['require', "const p = require('../pairs');"],
    ]) {
      const r = run(LAYERS, { ...CLEAN, 'bpf/map.ts': `export const M = 1;\n${line}\n` });
      assert.equal(r.status, 1, form);
      assert.match(r.err, /src\/bpf\/map\.ts:2: imports src\/pairs\/(index|spec)\.ts: back-edge, layer "bpf\/ lock\.ts" imports "pairs\/" above it/, form);
    }
  });

  it('fails when a unit imports a peer of its layer', function () {
    const r = run(LAYERS, { ...CLEAN, 'lock.ts': "import { M } from './bpf/map';\n" });
    assert.equal(r.status, 1);
    assert.match(r.err, /src\/lock\.ts:1: imports src\/bpf\/map\.ts: src\/lock\.ts and src\/bpf\/ share a layer and are independent/);
  });

  it('fails on a cycle inside a folder, naming it', function () {
    const r = run(LAYERS, { ...CLEAN, 'pairs/spec.ts': "import { P } from './index';\n" });
    assert.equal(r.status, 1);
    assert.match(r.err, /import cycle: src\/pairs\/index\.ts -> src\/pairs\/spec\.ts -> src\/pairs\/index\.ts/);
  });

  it('fails on a module of no layer, an import out of src/ and one that resolves to nothing', function () {
    const r = run(LAYERS, { ...CLEAN, 'stray.ts': "import { x } from '../test/helpers';\nimport { y } from './nowhere';\n" });
    assert.equal(r.status, 1);
    assert.match(r.err, /src\/stray\.ts: src\/stray\.ts is in no layer/);
    assert.match(r.err, /src\/stray\.ts:1: '\.\.\/test\/helpers' resolves to no \.ts file/);
    assert.match(r.err, /src\/stray\.ts:2: '\.\/nowhere' resolves to no \.ts file/);
    const d = tree(LAYERS, { ...CLEAN, 'cli.ts': "import { x } from '../test/helpers';\n" });
    made.push(d);
    fs.mkdirSync(path.join(d, 'test'));
    fs.writeFileSync(path.join(d, 'test', 'helpers.ts'), 'export const x = 1;\n');
    const out = checkImports(d);
    assert.equal(out.status, 1);
    assert.match(out.err, /src\/cli\.ts:1: imports test\/helpers\.ts, outside src\//);
  });

  it('checks a folder beside src/ named in the layers (../harness/) as one unit, and bench/ importing test/', function () {
    const layers = [...LAYERS.slice(0, 3), '../harness/      beside src/', 'cli.ts'];
    const d = tree(layers, { ...CLEAN, 'cli.ts': "import { H } from '../harness/demo';\n" });
    made.push(d);
    const put = (f: string, text: string) => {
      fs.mkdirSync(path.dirname(path.join(d, f)), { recursive: true });
      fs.writeFileSync(path.join(d, f), text);
    };
    put('harness/demo.ts', "import { P } from '../src/pairs';\nexport const H = P;\n");
    put('test/helpers.ts', 'export const x = 1;\n');
    put('bench/run.ts', "import { H } from '../harness/demo';\n");
    const ok = checkImports(d);
    assert.equal(ok.status, 0, ok.err);
    assert.match(ok.out, /8 modules of src\/ and the folders beside it/);
    put('harness/demo.ts', "import { P } from '../src/cli';\nimport { x } from '../test/helpers';\nexport const H = P;\n");
    put('bench/run.ts', "import { H } from '../harness/demo';\nimport { x } from '../test/helpers';\n");
    const r = checkImports(d);
    assert.equal(r.status, 1);
    assert.match(r.err, /harness\/demo\.ts:1: imports src\/cli\.ts: back-edge, layer "\.\.\/harness\/" imports "cli\.ts" above it/);
    assert.match(r.err, /harness\/demo\.ts:2: imports test\/helpers\.ts, outside src\/ and harness\//);
    assert.match(r.err, /bench\/run\.ts:2: imports test\/helpers\.ts: bench\/ imports no file of test\//);
    assert.match(r.err, /import cycle: harness\/demo\.ts -> src\/cli\.ts -> harness\/demo\.ts/);
  });

  it('exits 2 without a layers block', function () {
    const d = tree([], { 'cli.ts': '' });
    made.push(d);
    fs.writeFileSync(path.join(d, 'docs', 'architecture.md'), '# nothing\n');
    const r = checkImports(d);
    assert.equal(r.status, 2);
    assert.match(r.err, /no "<!-- layers: read by tools\/check-imports\.js -->" block/);
  });
});

describe('test/timing-reporter.ts', function () {
  it("prints each suite file's time, longest first, after mocha's summary", function () {
    this.timeout(60000);
    const files = ['dist/test/mac.test.js', 'dist/test/model.test.js'];
    const r = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', '.bin', 'mocha'), '--reporter', 'dist/test/timing-reporter.js', ...files], {
      cwd: ROOT,
      encoding: 'utf8',
      env: { ...process.env, NEUV_BPF_UNIT_ONLY: '1' },
    });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n');
    const passing = lines.findIndex((l) => /^\s+\d+ passing/.test(l));
    const title = lines.indexOf('Suite times, longest first (wall, CPU):');
    assert.ok(passing >= 0 && title > passing, r.stdout);
    const rows = lines.slice(title + 1, title + 4);
    const secs = rows.map((l) => Number(/^\s+([\d.]+) s /.exec(l)?.[1]));
    assert.match(rows[0], /^\s+[\d.]+ s +[\d.]+ s {2}(mac|model)\.test\.js {2}\(\d+ passed\)$/);
    assert.match(rows[1], /^\s+[\d.]+ s +[\d.]+ s {2}(mac|model)\.test\.js {2}\(\d+ passed\)$/);
    assert.match(rows[2], /^\s+[\d.]+ s +[\d.]+ s {2}total, 2 files$/);
    assert.ok(secs[0] >= secs[1], 'longest first');
  });
});

describe("the suites' conventions (lint)", function () {
  const TEST = path.join(ROOT, 'test');
  const files = (dir: string): string[] =>
    fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : []));
  const sources = files(TEST).map((f) => ({ f: path.relative(ROOT, f), text: fs.readFileSync(f, 'utf8') }));

  it('every kernel suite (requireKernel) ends with leakChecks', function () {
    const missing = sources.filter((s) => s.f.endsWith('.test.ts') && /\brequireKernel\(/.test(s.text) && !/\bleakChecks\(/.test(s.text)).map((s) => s.f);
    assert.deepEqual(missing, []);
  });

  it("tests open a datapath's pins through src/pins.ts (Pins, mapPinPath, isLoaded, openProg), not by a path of their own", function () {
    // helpers.ts's kernelState reads every pin of a root, whatever its name.
    const byPath = /\b(?:MapFd|ProgFd)\.fromPin\(|path\.join\([^)]*'(?:neuv_(?:ports|ids|stats|global|config|trace|flows|flow_stats|home)|prog_(?:vin|vex|vbr))'\)/;
    const found = sources.filter((s) => s.f !== path.join('test', 'helpers.ts')).flatMap((s) => s.text.split('\n').map((l, i) => ({ l, at: `${s.f}:${i + 1}` })).filter((x) => byPath.test(x.l)).map((x) => `${x.at}: ${x.l.trim()}`));
    assert.deepEqual(found, []);
  });
});
