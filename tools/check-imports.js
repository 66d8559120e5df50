#!/usr/bin/env node
/**
 * Imports run downhill: builds the import graph of src/ and of the folders
 * beside it that the layers name (every import, export ... from, import
 * type, import() and require() of a relative path, read with TypeScript's
 * own parser) and fails on
 *  - a back-edge: a module importing a module of a higher layer, or of
 *    another unit of its own layer (units of one layer are independent);
 *  - an import cycle, inside a unit too;
 *  - a module of no layer (a new file or folder: give it one), an import
 *    out of src/ and the layered folders beside it, an import that resolves
 *    to no file;
 *  - a file of bench/ importing one of test/ (the harness both share is
 *    ../harness/).
 * The layers are the "Layers" block of docs/architecture.md, lowest first: one
 * line per layer, its units (a file `x.ts` or a folder `x/`, relative to src/,
 * or `../x/`: a folder beside src/, checked as one unit, such as ../harness/),
 * then words that are not units (what the layer is). A folder's modules may
 * import each other (cycles excepted); outside its unit a module imports
 * lower layers only.
 *
 * node tools/check-imports.js [--graph] [--root DIR]: exit 0 when clean, 1
 * with one line per problem (2 when the layers cannot be read); --graph
 * prints each module's imports as well; --root checks another tree.
 */
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

let ROOT = path.resolve(__dirname, '..');
let SRC = path.join(ROOT, 'src');
let DOC = path.join(ROOT, 'docs', 'architecture.md');
const MARK = '<!-- layers: read by tools/check-imports.js -->';

/** The layers from the doc: [{ line, units: ['errors.ts', 'bpf/', ...] }], lowest first. */
function readLayers() {
  const md = fs.readFileSync(DOC, 'utf8');
  const at = md.indexOf(MARK);
  if (at < 0) throw new Error(`${rel(DOC)}: no "${MARK}" block`);
  const block = /```[a-z]*\n([\s\S]*?)```/.exec(md.slice(at));
  if (!block) throw new Error(`${rel(DOC)}: no fenced block after "${MARK}"`);
  const layers = [];
  for (const line of block[1].split('\n')) {
    const units = [];
    for (const w of line.trim().split(/\s+/)) {
      if (!/^([\w.-]+(\/|\.ts)|\.\.\/[\w.-]+\/)$/.test(w)) break;
      units.push(w);
    }
    if (units.length) layers.push({ line: line.trim(), units });
  }
  return layers;
}

function rel(p) {
  return path.relative(ROOT, p);
}

function walk(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : /\.ts$/.test(e.name) && !/\.d\.ts$/.test(e.name) ? [path.join(dir, e.name)] : []))
    .sort();
}

/** Every module specifier a file names, with its line. */
function specifiers(file) {
  const src = ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const out = [];
  const add = (lit) => {
    if (lit && ts.isStringLiteralLike(lit)) out.push({ spec: lit.text, line: src.getLineAndCharacterOfPosition(lit.getStart()).line + 1 });
  };
  const visit = (n) => {
    if (ts.isImportDeclaration(n) || ts.isExportDeclaration(n)) add(n.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference)) add(n.moduleReference.expression);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) add(n.argument.literal);
    else if (ts.isCallExpression(n) && (n.expression.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(n.expression) && n.expression.text === 'require'))) add(n.arguments[0]);
    ts.forEachChild(n, visit);
  };
  visit(src);
  return out;
}

function resolve(from, spec) {
  const base = path.resolve(path.dirname(from), spec);
  for (const c of [`${base}.ts`, path.join(base, 'index.ts'), base]) if (c.endsWith('.ts') && fs.existsSync(c)) return c;
  return undefined;
}

/** Checks the tree at root (default: this checkout). */
function check(root = ROOT) {
  ROOT = path.resolve(root);
  SRC = path.join(ROOT, 'src');
  DOC = path.join(ROOT, 'docs', 'architecture.md');
  const layers = readLayers();
  const unitOf = new Map(); // unit -> layer index
  for (const [i, l] of layers.entries()) for (const u of l.units) unitOf.set(u, i);
  // The folders beside src/ that are units of their own (../harness/), walked with it.
  const beside = [...unitOf.keys()].filter((u) => u.startsWith('../')).map((u) => path.resolve(SRC, u));
  const inside = (dir, file) => !path.relative(dir, file).startsWith('..');
  /** The unit of a module: its top folder under src/, or the file; a folder beside src/ whole. */
  const unit = (file) => {
    const b = beside.find((d) => inside(d, file));
    if (b) return `${path.relative(SRC, b)}/`;
    const r = path.relative(SRC, file).split(path.sep);
    return r.length > 1 ? `${r[0]}/` : r[0];
  };
  /** A unit as a path from the repository's root (src/pairs/, harness/). */
  const shown = (u) => path.relative(ROOT, path.join(SRC, u)) + (u.endsWith('/') ? '/' : '');
  const problems = [];
  const files = [SRC, ...beside.filter((d) => fs.existsSync(d))].flatMap(walk);
  const graph = new Map();
  for (const f of files) {
    const deps = [];
    const fu = unit(f);
    if (!unitOf.has(fu)) problems.push(`${rel(f)}: ${shown(fu)} is in no layer of ${rel(DOC)} (add it where its imports put it)`);
    for (const { spec, line } of specifiers(f)) {
      if (!spec.startsWith('.')) continue; // a package or node: builtin
      const to = resolve(f, spec);
      const where = `${rel(f)}:${line}`;
      if (!to) {
        problems.push(`${where}: '${spec}' resolves to no .ts file`);
        continue;
      }
      if (!inside(SRC, to) && !beside.some((d) => inside(d, to))) {
        problems.push(`${where}: imports ${rel(to)}, outside src/${beside.map((d) => ` and ${rel(d)}/`).join('')}`);
        continue;
      }
      deps.push(to);
      const tu = unit(to);
      if (tu === fu || !unitOf.has(fu) || !unitOf.has(tu)) continue;
      const lf = unitOf.get(fu);
      const lt = unitOf.get(tu);
      if (lt > lf) problems.push(`${where}: imports ${rel(to)}: back-edge, layer "${layers[lf].units.join(' ')}" imports "${layers[lt].units.join(' ')}" above it`);
      else if (lt === lf) problems.push(`${where}: imports ${rel(to)}: ${shown(fu)} and ${shown(tu)} share a layer and are independent`);
    }
    graph.set(f, [...new Set(deps)]);
  }
  for (const cycle of cycles(graph)) problems.push(`import cycle: ${[...cycle, cycle[0]].map(rel).join(' -> ')}`);
  // The benchmarks share the harness with the tests, never a test file.
  const bench = path.join(ROOT, 'bench');
  const test = path.join(ROOT, 'test');
  for (const f of fs.existsSync(bench) ? walk(bench) : []) {
    for (const { spec, line } of specifiers(f)) {
      const to = spec.startsWith('.') ? resolve(f, spec) ?? path.resolve(path.dirname(f), spec) : undefined;
      if (to && inside(test, to)) problems.push(`${rel(f)}:${line}: imports ${rel(to)}: bench/ imports no file of test/ (what both need is in the harness)`);
    }
  }
  return { problems, graph };
}

/** Each strongly connected component of more than one module (or a module importing itself), as a path through it. */
function cycles(graph) {
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const stack = [];
  const on = new Set();
  const out = [];
  const strong = (v) => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        strong(w);
        low.set(v, Math.min(low.get(v), low.get(w)));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v), idx.get(w)));
    }
    if (low.get(v) === idx.get(v)) {
      const comp = [];
      let w;
      do {
        w = stack.pop();
        on.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(cyclePath(graph, new Set(comp), comp.sort()[0]));
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) strong(v);
  return out;
}

/** A shortest cycle through start inside the component (breadth first). */
function cyclePath(graph, comp, start) {
  const prev = new Map([[start, null]]);
  const queue = [start];
  while (queue.length) {
    const v = queue.shift();
    for (const w of graph.get(v) ?? []) {
      if (w === start) {
        const p = [];
        for (let x = v; x !== null; x = prev.get(x)) p.unshift(x);
        return p;
      }
      if (comp.has(w) && !prev.has(w)) {
        prev.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start];
}

if (require.main === module) {
  let result;
  try {
    const r = process.argv.indexOf('--root');
    result = check(r > 0 ? process.argv[r + 1] : undefined);
  } catch (e) {
    console.error(`check-imports: ${e.message}`);
    process.exit(2);
  }
  if (process.argv.includes('--graph')) {
    for (const [f, deps] of result.graph) console.log(`${path.relative(SRC, f)} -> ${deps.map((d) => path.relative(SRC, d)).join(' ')}`);
  }
  for (const p of result.problems) console.error(`check-imports: ${p}`);
  if (result.problems.length) process.exit(1);
  console.log(`check-imports: ${result.graph.size} modules of src/ and the folders beside it, every import downhill, no cycle; bench/ imports no test/`);
}

module.exports = { check, readLayers, cycles };
