#!/usr/bin/env node
'use strict';
/*
 * make test's runner: each suite file in a mocha process of its own, NEUV_BPF_TEST_JOBS of them side by
 * side (default 2), longest first (test/suite-weights.json: seconds a file took in an earlier run; a file
 * not listed counts as 60 s). The kernel suites mostly wait (traffic at fixed rates, timers, children),
 * so two run side by side in about the time of one; each makes its own netns, interfaces and pin roots
 * with names of its own process (test/helpers.ts uniqueName), so they cannot meet.
 *
 * Each file's output is printed whole when it ends (never interleaved), after a line when it starts.
 * Then mocha's summary for the whole run ("N passing", "N failing", "N pending": what .ci/run reads),
 * the failed files, and one table of every file's time (test/timing-reporter.ts's, merged).
 * Exit status: 0 when every file passed, else 1. SIGINT/SIGTERM/SIGHUP stop the run: the signal goes to
 * every running file's process group (test/helpers.ts then runs the suite's cleanups: its netns, pins,
 * lock files), the runner waits for them up to NEUV_BPF_TEST_STOP_SECONDS (default 30), SIGKILLs what is
 * left, prints what each wrote, and exits 128 + the signal's number. A second signal stops waiting.
 *
 *   node scripts/test-run.js [--jobs N] FILE...     (mocha's options: MOCHA_ARGS, as make passes them)
 */
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..');
const TABLE_TITLE = 'Suite times, longest first (wall, CPU):';

function usage(msg) {
  process.stderr.write(`test-run: ${msg}\nusage: node scripts/test-run.js [--jobs N] FILE...\n`);
  process.exit(2);
}

const args = process.argv.slice(2);
let jobs = Number(process.env.NEUV_BPF_TEST_JOBS || 2);
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--jobs') jobs = Number(args[++i]);
  else files.push(args[i]);
}
if (!Number.isInteger(jobs) || jobs < 1 || jobs > 16) usage(`--jobs (NEUV_BPF_TEST_JOBS) must be an integer 1..16, not ${jobs}`);
if (files.length === 0) usage('no test file given');

let weights = {};
try {
  weights = JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'suite-weights.json'), 'utf8'));
} catch {
  /* every file weighs the same: still correct, only less well balanced */
}
const weight = (f) => (typeof weights[path.basename(f)] === 'number' ? weights[path.basename(f)] : 60);
const queue = [...files].sort((a, b) => weight(b) - weight(a) || a.localeCompare(b));

const mochaBin = path.join(ROOT, 'node_modules', '.bin', 'mocha');
const mochaArgs = (process.env.MOCHA_ARGS || `--timeout 120000 --reporter ${path.join(ROOT, 'dist', 'test', 'timing-reporter.js')}`).split(/\s+/).filter(Boolean);

const t0 = Date.now();
const running = new Map(); // child -> { file, out: string[] }
const results = []; // { file, code, out, ms, passed, failed, pending, cpu }
let stopping = false;

/** The counts and CPU time of one file, from its output (spec reporter summary, timing table row). */
function parse(out) {
  const num = (re) => {
    const m = out.match(re);
    return m ? Number(m[1]) : 0;
  };
  const row = out.split('\n').find((l) => /^\s+[\d.]+ s\s+[\d.]+ s\s+\S+\.test\.js\s/.test(l));
  const cpu = row ? Number(row.trim().split(/\s+/)[2]) : 0;
  return { passed: num(/^\s+(\d+) passing/m), failed: num(/^\s+(\d+) failing/m), pending: num(/^\s+(\d+) pending/m), cpu };
}

/** A file's output without its one-row time table (the merged one comes at the end). */
function withoutTable(out) {
  const lines = out.split('\n');
  const a = lines.indexOf(TABLE_TITLE);
  if (a < 0) return out;
  let b = a + 1;
  while (b < lines.length && !/ total, \d+ files$/.test(lines[b])) b++;
  return [...lines.slice(0, a), ...lines.slice(b + 1)].join('\n');
}

function startNext() {
  if (stopping) return;
  const file = queue.shift();
  if (file === undefined) {
    if (running.size === 0) finish();
    return;
  }
  const out = [];
  const started = Date.now();
  process.stdout.write(`test-run: ${path.basename(file)} started (${running.size + 1} running, ${queue.length} waiting)\n`);
  // A process group of its own: stopping the run stops the file's children (CLI runs, traffic) too.
  const child = spawn(mochaBin, [...mochaArgs, file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: process.env });
  running.set(child, { file, out });
  child.stdout.on('data', (d) => out.push(d.toString()));
  child.stderr.on('data', (d) => out.push(d.toString()));
  child.on('close', (code, signal) => {
    running.delete(child);
    if (stopping) return; // stop() prints what it wrote
    const text = out.join('');
    const r = { file, code: code ?? (signal ? 128 : 1), out: text, ms: Date.now() - started, ...parse(text) };
    results.push(r);
    const verdict = r.code === 0 ? 'passed' : `FAILED (exit ${signal || r.code})`;
    process.stdout.write(`\n==== ${path.basename(file)}: ${verdict}, ${(r.ms / 1000).toFixed(1)} s ====\n${withoutTable(text).trimEnd()}\n\n`);
    startNext();
  });
}

function table() {
  const rows = [...results].sort((a, b) => b.ms - a.ms);
  const secs = (s) => s.toFixed(1).padStart(7);
  const counts = (r) => [`${r.passed} passed`, r.failed ? `${r.failed} failed` : '', r.pending ? `${r.pending} pending` : '', r.code !== 0 && !r.failed ? `exit ${r.code}` : ''].filter(Boolean).join(', ');
  const wall = rows.reduce((s, r) => s + r.ms / 1000, 0);
  const cpu = rows.reduce((s, r) => s + r.cpu, 0);
  return [
    TABLE_TITLE,
    ...rows.map((r) => `  ${secs(r.ms / 1000)} s ${secs(r.cpu)} s  ${path.basename(r.file)}  (${counts(r)})`),
    `  ${secs(wall)} s ${secs(cpu)} s  total, ${rows.length} files`,
  ].join('\n');
}

function finish() {
  const sum = (k) => results.reduce((s, r) => s + r[k], 0);
  const bad = results.filter((r) => r.code !== 0);
  const mins = Math.round((Date.now() - t0) / 60000);
  const lines = ['', `  ${sum('passed')} passing (${mins}m, ${jobs} files at a time)`];
  if (sum('failed')) lines.push(`  ${sum('failed')} failing`);
  if (sum('pending')) lines.push(`  ${sum('pending')} pending`);
  for (const r of bad) lines.push(`  failed: ${path.basename(r.file)} (exit ${r.code})`);
  lines.push('', table(), '');
  process.stdout.write(lines.join('\n'));
  process.exitCode = bad.length ? 1 : 0;
}

const STOP_STATUS = { SIGHUP: 129, SIGINT: 130, SIGTERM: 143 };
const stopSeconds = Number(process.env.NEUV_BPF_TEST_STOP_SECONDS || 30);
if (!(stopSeconds > 0)) usage(`NEUV_BPF_TEST_STOP_SECONDS must be a positive number of seconds, not ${process.env.NEUV_BPF_TEST_STOP_SECONDS}`);

function signalGroup(child, sig) {
  try {
    process.kill(-child.pid, sig);
  } catch {
    /* already gone */
  }
}

/** Each file still running gets `sig` (its cleanups run), then SIGKILL past the bound; then the run ends. */
function stop(sig) {
  if (stopping) {
    process.stdout.write(`\ntest-run: ${sig} again: killing ${running.size} file(s) without waiting\n`);
    for (const child of running.keys()) signalGroup(child, 'SIGKILL');
    process.exit(STOP_STATUS[sig]);
  }
  stopping = true;
  const stopped = [...running];
  process.stdout.write(`\ntest-run: ${sig}: stopping ${stopped.length} running file(s), waiting up to ${stopSeconds} s for their cleanups\n`);
  const ended = stopped.map(([child]) => new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve()))));
  for (const [child] of stopped) signalGroup(child, sig);
  const killer = setTimeout(() => {
    for (const child of running.keys()) {
      process.stdout.write(`test-run: ${path.basename(running.get(child).file)} still running after ${stopSeconds} s: SIGKILL\n`);
      signalGroup(child, 'SIGKILL');
    }
  }, stopSeconds * 1000);
  // 'exit', not 'close': a grandchild of its own still holding the pipes must not keep the run waiting.
  Promise.all(ended).then(() => {
    clearTimeout(killer);
    for (const [, { file, out }] of stopped) process.stdout.write(`\n==== ${path.basename(file)} (stopped) ====\n${out.join('').trimEnd()}\n`);
    process.exit(STOP_STATUS[sig]);
  });
}
for (const sig of Object.keys(STOP_STATUS)) process.on(sig, () => stop(sig));

for (let i = 0; i < Math.min(jobs, queue.length); i++) startNext();
