/**
 * The documentation cannot rot silently: docs/cli.md is what `--help` prints
 * (scripts/gen-cli-docs.js, `make docs`), and every relative link in
 * README.md and docs/*.md reaches a file of the repository, and a heading
 * there when it names one. No root needed: --help never touches the kernel.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The repository: the nearest directory above this file with a package.json. */
function repoRoot(): string {
  for (let d = __dirname; ; d = path.dirname(d)) {
    if (fs.existsSync(path.join(d, 'package.json'))) return d;
    if (path.dirname(d) === d) throw new Error(`no package.json above ${__dirname}`);
  }
}
const ROOT = repoRoot();
const GEN = path.join(ROOT, 'scripts', 'gen-cli-docs.js');

/**
 * Files linked before they exist, because another branch of the same change
 * writes them. Each must be missing: once it exists, the test says to remove
 * it from here, so the list cannot outlive its reason.
 */
const PENDING = new Set<string>([]);

/** The Markdown files whose links must hold. */
function docFiles(): string[] {
  const docs = path.join(ROOT, 'docs');
  return ['README.md', ...fs.readdirSync(docs).filter((f) => f.endsWith('.md')).sort().map((f) => path.join('docs', f))];
}

/** Markdown without fenced code blocks and inline code (neither holds links or headings). */
function prose(md: string): string {
  return md
    .replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '')
    .replace(/`[^`\n]*`/g, 'code');
}

/** GitHub's anchors for the headings of a Markdown text: lower case, punctuation dropped, spaces as '-', repeats numbered. */
export function anchors(md: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  const text = md.replace(/^(```|~~~)[^\n]*\n[\s\S]*?^\1[^\n]*$/gm, '');
  for (const m of text.matchAll(/^#{1,6}[ \t]+(.+?)[ \t#]*$/gm)) {
    const base = m[1]!
      .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '')
      .replace(/\s/g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

/** Every inline link target of a Markdown text, outside code. */
export function links(md: string): string[] {
  return [...prose(md).matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)].map((m) => m[1]!);
}

/** What is wrong with the relative links of the file `rel` (repository-relative), one line each. */
export function brokenLinks(root: string, rel: string, md: string, pending: Set<string> = new Set()): string[] {
  const problems: string[] = [];
  for (const target of links(md)) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // https:, mailto:
    const [file, frag] = target.split('#', 2) as [string, string | undefined];
    if (!file) {
      if (frag !== undefined && !anchors(md).has(frag)) problems.push(`${rel}: link ${target}: no heading #${frag} in ${rel}`);
      continue;
    }
    const abs = path.resolve(root, path.dirname(rel), decodeURI(file));
    const inRepo = path.relative(root, abs);
    if (inRepo.startsWith('..') || path.isAbsolute(inRepo)) {
      problems.push(`${rel}: link ${target} points outside the repository`);
      continue;
    }
    if (!fs.existsSync(abs)) {
      if (!pending.has(inRepo)) problems.push(`${rel}: link ${target}: ${inRepo} does not exist`);
      continue;
    }
    if (frag !== undefined && abs.endsWith('.md') && !anchors(fs.readFileSync(abs, 'utf8')).has(frag)) {
      problems.push(`${rel}: link ${target}: no heading #${frag} in ${inRepo}`);
    }
  }
  return problems;
}

/** scripts/gen-cli-docs.js, in process (it is plain JavaScript). */
interface CliDocEntry { cmd: string[]; text: string }
const gen = require(GEN) as {
  render(entries: CliDocEntry[]): string;
  staleCommands(have: string, entries: CliDocEntry[]): string[];
  subcommands(text: string): string[];
};

/**
 * Paths of the repository a Markdown text names, links or not (`src/x.ts`,
 * test/y.test.ts, bpf/): the source folders only (build/ and dist/ are made
 * by the build), without globs and placeholders (`tools/*.c`, `link_<ifindex>`).
 */
export function namedPaths(md: string): string[] {
  const re = /(?<![\w./-])((?:src|test|bench|bpf|tools|examples|scripts|vagrant|\.ci)\/[\w.*<>-]*(?:\/[\w.*<>-]+)*)/g;
  return [...md.matchAll(re)].map((m) => m[1]!.replace(/[.,:]+$/, '')).filter((p) => !/[*<>]/.test(p));
}

function runGen(args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [GEN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 290000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

describe('docs', function () {
  // 24 CLI start-ups: 10 s on a quiet machine, a minute seen on a busy one, more in an emulated VM.
  this.timeout(300000);

  it('docs/cli.md is what `neuv-bpf <command> --help` prints (else: make docs)', function () {
    const r = runGen(['--check']);
    assert.equal(r.status, 0, r.out);
  });

  it('a help text that changed, or a new command, is named as stale', function () {
    const entries = [
      { cmd: [], text: 'Usage: neuv-bpf [options] [command]\n' },
      { cmd: ['pair', 'mode'], text: 'Usage: neuv-bpf pair mode [options] <mode>\n' },
      { cmd: ['flow', 'list'], text: 'Usage: neuv-bpf flow list [options]\n' },
    ];
    const md = gen.render(entries);
    assert.deepEqual(gen.staleCommands(md, entries), []);
    const changed = md.replace('pair mode [options] <mode>', 'pair mode [options]');
    assert.deepEqual(gen.staleCommands(changed, entries), ['neuv-bpf pair mode']);
    assert.deepEqual(gen.staleCommands(gen.render(entries.slice(0, 2)), entries), ['neuv-bpf flow list']);
  });

  it('commands are read from the "Commands:" section of a help text, without help', function () {
    const text = [
      'Usage: neuv-bpf pair [options] [command]', '', 'Options:', '  -h, --help             display help for command', '',
      'Commands:', '  add [options]          attach the programs', '                         to a pair',
      '  mode [options] <mode>  switch a pair', '  help [command]         display help for command',
    ].join('\n');
    assert.deepEqual(gen.subcommands(text), ['add', 'mode']);
    assert.deepEqual(gen.subcommands('Usage: neuv-bpf load [options]\n\nOptions:\n  --jumbo  MTU 9000\n'), []);
  });

  it('every relative link in README.md and docs/*.md reaches a file, and its heading', function () {
    const problems = docFiles().flatMap((rel) => brokenLinks(ROOT, rel, fs.readFileSync(path.join(ROOT, rel), 'utf8'), PENDING));
    assert.deepEqual(problems, []);
  });

  it('every source path README.md and docs/*.md name exists (a moved file is renamed there too)', function () {
    const problems = docFiles().flatMap((rel) =>
      namedPaths(fs.readFileSync(path.join(ROOT, rel), 'utf8'))
        .filter((p) => !fs.existsSync(path.join(ROOT, p)) && !PENDING.has(p))
        .map((p) => `${rel}: names ${p}, which does not exist`),
    );
    assert.deepEqual([...new Set(problems)], []);
  });

  it("BENCHMARKS.md names no path of the machine it was measured on (/work/..., /root/...)", function () {
    const lines = fs.readFileSync(path.join(ROOT, 'BENCHMARKS.md'), 'utf8').split('\n').map((l, i) => `${i + 1}: ${l}`);
    assert.deepEqual(lines.filter((l) => /(^|[\s(`'"])\/(work|root)\//.test(l)), []);
  });

  it("no file of the repository reaches outside it for what it needs (/work/..., ../shared/: a clone has neither)", function () {
    const self = path.join('test', 'docs.test.ts'); // its own patterns
    const walk = (rel: string): string[] => {
      const abs = path.join(ROOT, rel);
      if (!fs.existsSync(abs)) return [];
      if (!fs.statSync(abs).isDirectory()) return [rel];
      return fs.readdirSync(abs).sort().flatMap((f) => walk(path.join(rel, f)));
    };
    const roots = ['README.md', 'BENCHMARKS.md', 'BENCHMARKS.json', 'Makefile', '.ci', 'bench', 'bin', 'bpf', 'deploy', 'docs', 'examples', 'harness', 'scripts', 'src', 'test', 'third_party', 'tools', 'vagrant'];
    const files = roots.flatMap(walk).filter((f) => f !== self && !/\.(gz|o)$/.test(f) && !f.includes('.vagrant'));
    assert.ok(files.includes(path.join('harness', 'nvdp.ts')), 'the walk reads the harness');
    const hits = files.flatMap((f) =>
      fs.readFileSync(path.join(ROOT, f), 'utf8').split('\n').flatMap((l, i) => (/(^|[\s(`'"=<])\/work\/|\.\.\/shared\//.test(l) ? [`${f}:${i + 1}: ${l.trim()}`] : [])),
    );
    assert.deepEqual(hits, []);
  });

  it('files linked ahead of their branch (PENDING) are still missing', function () {
    for (const rel of PENDING) {
      assert.ok(!fs.existsSync(path.join(ROOT, rel)), `${rel} exists now: remove it from PENDING in test/docs.test.ts`);
    }
  });

  it('the checks catch a missing file, a missing heading, a way out of the repository, and read named paths', function () {
    const md = [
      '# Top', '## 6. Command-line contract', '### Seeing the rules run: `make demo`', '## Top',
      '[ok](README.md) [ok](#top-1) [ok](#6-command-line-contract) [ok](#seeing-the-rules-run-make-demo)',
      '[web](https://example.org/x.md) [gone](docs/nope.md) [bad anchor](#nowhere) [out](../shared/x.md)',
      '```sh', '[in code](docs/nope-either.md)', '```', 'and `[inline](docs/nor-this.md)`',
    ].join('\n');
    assert.deepEqual(namedPaths('see `src/index.ts`, test/docs.test.ts, bpf/, dist/src/cli.js and `tools/*.c`.'), [
      'src/index.ts', 'test/docs.test.ts', 'bpf/',
    ]);
    assert.deepEqual(brokenLinks(ROOT, 'X.md', md), [
      'X.md: link docs/nope.md: docs/nope.md does not exist',
      'X.md: link #nowhere: no heading #nowhere in X.md',
      'X.md: link ../shared/x.md points outside the repository',
    ]);
  });
});
