/**
 * Kernel suite: SIGINT and SIGTERM during the commands that change the
 * kernel in steps (src/signals.ts). The real CLI is a child process; the
 * signal goes at a spread of delays across the command's own duration,
 * measured in a first uninterrupted run, to the process or to its whole
 * process group (a Ctrl-C at a terminal). After each: exit 130/143 with one
 * stderr line saying whether the command finished or rolled back (or exit 0:
 * it was done before the signal), the container as it was before (or as a
 * completed command leaves it), answering ping through its eth0, and
 * `show --check` clean.
 *
 * Delays count from the moment the CLI holds signals (SIGHUP's bit in SigCgt
 * of /proc/PID/status: node itself catches SIGINT and SIGTERM from its start,
 * only to die of them; bin/neuv-bpf's first line adds SIGHUP with them).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CLI, cli, leakChecks, makePinRoot, onCleanup, requireKernel, TIME_SCALE, uniqueName } from './helpers';
import { collectOutput } from '../harness/proc';
import { buildNvNode, nvLeft } from './nvfixture';
import { containerState, linkNames, makeTopology, TestTopology } from './topology';
import { HOST_IP4, ping } from '../harness/topology';
import { nsView, veth } from '../harness/net';
import { Datapath } from '../src/pairs';
import { isLoaded } from '../src/pins';

/** Tries per command: delays 0, D/(N-1), ..., D. */
const TRIES = 8;
const IDLE_ENFORCER = ['lo', 'vbr-neuv', 'vth-neuv'];

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** From the signal handler's installation to the exit. */
  ms: number;
  /** The signal reached a running CLI (it had not exited yet). */
  sent: boolean;
}

/** Whether pid runs the CLI (exec done: not the fork of this process) and has a handler for sig (its bit in SigCgt). */
function catches(pid: number, sig: NodeJS.Signals): boolean {
  try {
    if (!fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(CLI)) return false;
    const m = /^SigCgt:\s*([0-9a-f]+)$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m !== null && ((BigInt(`0x${m[1]}`) >> BigInt(os.constants.signals[sig] - 1)) & 1n) === 1n;
  } catch {
    return false;
  }
}

/**
 * The CLI (its own process group) with --netns/--bpffs of tt; `sig` goes
 * `delayMs` after it catches signals, to it or (group) to its process group.
 */
function runCli(tt: { t: { enforcer: string }; pins: string }, args: string[], o: { sig?: NodeJS.Signals; delayMs?: number; group?: boolean } = {}): Promise<Run> {
  const child = spawn(process.execPath, [CLI, '--netns', tt.t.enforcer, '--bpffs', tt.pins, ...args], {
    env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' },
    detached: true,
  });
  const pid = child.pid!;
  const out = collectOutput(child);
  let armed = 0;
  let sent = false;
  const done = out.done.then((r): Run => ({ ...r, ms: armed ? Date.now() - armed : 0, sent }));
  const watchStart = async () => {
    while (!out.exited && !catches(pid, 'SIGHUP')) await new Promise((r) => setTimeout(r, 1));
    armed = Date.now();
    if (!o.sig || out.exited) return;
    await new Promise((r) => setTimeout(r, o.delayMs ?? 0));
    if (out.exited) return;
    try {
      process.kill(o.group ? -pid : pid, o.sig);
      sent = true;
    } catch {
      /* exited meanwhile */
    }
  };
  void watchStart();
  return done;
}

/** What an interrupted run did: 'finished' (0, or the line says so) or 'rolled back'; asserts the contract. */
function outcome(r: Run, sig: NodeJS.Signals, what: RegExp, doneOut: RegExp, why: string): 'finished' | 'rolled back' {
  const lines = r.stderr.split('\n').filter((l) => l.length > 0);
  if (r.code === 0) {
    assert.deepEqual(lines, [], `exit 0 and stderr: ${r.stderr}`);
    assert.match(r.stdout, doneOut);
    return 'finished';
  }
  assert.equal(r.signal, null, `${why}: killed by ${r.signal} after ${r.ms} ms: ${r.stdout}${r.stderr}`);
  assert.equal(r.code, 128 + os.constants.signals[sig], `exit code after ${sig}: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line on stderr, got:\n${r.stderr}`);
  // After a Ctrl-C to the group, a step's child caught in its fork can die of it too: the line names that failure.
  const m = new RegExp(`^neuv-bpf: interrupted by ${sig}: (finished|rolled back) ${what.source}(?: \\(after: .*\\))?$`).exec(lines[0]!);
  assert.ok(m, `the line: ${lines[0]}`);
  if (m[1] === 'finished') assert.match(r.stdout, doneOut);
  else assert.equal(r.stdout, '');
  return m[1] as 'finished' | 'rolled back';
}

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');

/** The delays of the tries: evenly from 0 to the measured duration. */
const delays = (ms: number) => Array.from({ length: TRIES }, (_, k) => Math.round((k * ms) / (TRIES - 1)));
/** Alternately SIGINT and SIGTERM, to the process or its group. */
const how = (k: number) => ({ sig: (k % 2 ? 'SIGTERM' : 'SIGINT') as NodeJS.Signals, group: k % 4 >= 2 });

function checkClean(tt: Pick<TestTopology, 'run'>, what: string): void {
  const chk = tt.run(['show', '--check']);
  assert.equal(chk.code, 0, `${what}: show --check: ${chk.stdout}${chk.stderr}`);
}

function pairCount(tt: Pick<TestTopology, 'run'>): number {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: unknown[] }).pairs.length;
}

describe('signals: SIGINT/SIGTERM during a command finish or roll it back (kernel)', function () {
  this.timeout(600000 * TIME_SCALE);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('intercept and release: at every delay the container keeps a working eth0, one line says finished or rolled back', async function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const icp = ['intercept', '--container-netns', c1.path];
    const rel = ['release', '--container-netns', c1.path];
    const what = (op: string) => new RegExp(`${op} of eth0 of netns ${esc(c1.path)}`);
    const answers = (why: string) => assert.equal(ping(tt.t, c1.ns, HOST_IP4, 2), 2, `${why}: ping c1 -> host`);
    const isIntercepted = () => linkNames(tt.t, tt.t.enforcer).some((n) => n.startsWith('vex'));
    const expectState = (intercepted: boolean, why: string) => {
      assert.deepEqual(containerState(tt.t, c1), before, `${why}: the container's eth0, addresses, routes, neighbours`);
      assert.equal(isIntercepted(), intercepted, `${why}: intercepted`);
      if (!intercepted) assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER, `${why}: enforcer links`);
      assert.equal(pairCount(tt), intercepted ? 1 : 0, `${why}: pairs`);
      answers(why);
      checkClean(tt, why);
    };

    // The durations, measured.
    const mi = await runCli(tt, icp);
    assert.equal(mi.code, 0, mi.stderr);
    const mr = await runCli(tt, rel);
    assert.equal(mr.code, 0, mr.stderr);
    expectState(false, 'after the measured runs');

    const seen: Record<string, number> = {};
    for (const [op, args, ms] of [['intercept', icp, mi.ms], ['release', rel, mr.ms]] as const) {
      for (const [k, delayMs] of delays(ms).entries()) {
        if (op === 'release') assert.equal(tt.run(icp).code, 0, 'intercept before the release');
        const { sig, group } = how(k);
        const why = `${op}, ${sig} to the ${group ? 'group' : 'process'} after ${delayMs} of ${ms} ms`;
        const r = await runCli(tt, args, { sig, delayMs, group });
        const o = outcome(r, sig, what(op), op === 'intercept' ? /^intercepted eth0/ : /^released eth0/, why);
        const key = `${op} ${r.code === 0 ? 'done before the signal' : o}`;
        seen[key] = (seen[key] ?? 0) + 1;
        // Done: intercept leaves it intercepted, release not; rolled back: the opposite.
        expectState((op === 'intercept') === (o === 'finished'), why);
        if (isIntercepted()) assert.equal(tt.run(rel).code, 0, `${why}: release afterwards`);
      }
    }
    // eslint-disable-next-line no-console
    console.log(`      intercept ${mi.ms} ms, release ${mr.ms} ms; ${JSON.stringify(seen)}`);
    expectState(false, 'at the end');
  });

  it('load: vbr-neuv/vth-neuv up and show --check clean, or nothing loaded', async function () {
    const tt = makeTopology({ load: false });
    const enf = nsView(tt.t.enforcer);
    const up = (dev: string) => (JSON.parse(enf.ip('-j', 'link', 'show', 'dev', dev)) as Array<{ flags: string[] }>)[0]!.flags.includes('UP');
    const unload = () => assert.equal(tt.run(['unload']).code, 0, 'unload');
    const m = await runCli(tt, ['load']);
    assert.equal(m.code, 0, m.stderr);
    unload();
    const seen: Record<string, number> = {};
    for (const [k, delayMs] of delays(m.ms).entries()) {
      const { sig, group } = how(k);
      const why = `load, ${sig} to the ${group ? 'group' : 'process'} after ${delayMs} of ${m.ms} ms`;
      const r = await runCli(tt, ['load'], { sig, delayMs, group });
      const o = outcome(r, sig, /load/, /^loaded: /, why);
      seen[r.code === 0 ? 'done before the signal' : o] = (seen[r.code === 0 ? 'done before the signal' : o] ?? 0) + 1;
      if (o === 'finished') {
        assert.ok(up('vbr-neuv') && up('vth-neuv'), `${why}: vbr-neuv/vth-neuv up`);
        checkClean(tt, why);
        unload();
      } else {
        assert.deepEqual(linkNames(tt.t, tt.t.enforcer), ['lo'], `${why}: nothing created`);
        assert.ok(!fs.existsSync(tt.pins) || fs.readdirSync(tt.pins).length === 0, `${why}: nothing pinned`);
      }
    }
    // eslint-disable-next-line no-console
    console.log(`      load ${m.ms} ms; ${JSON.stringify(seen)}`);
  });

  it('pair add --file: every pair added (hooks and entries, show --check clean) or none', async function () {
    const tt = makeTopology();
    const enf = nsView(tt.t.enforcer);
    const n = 16;
    const lines: string[] = [];
    for (let i = 0; i < n; i++) {
      const vin = `nbi${i}`;
      const vex = `nbx${i}`;
      veth({ ns: enf, name: vin }, { ns: enf, name: `nbip${i}` }, { ipv6: false });
      veth({ ns: enf, name: vex }, { ns: enf, name: `nbxp${i}` }, { ipv6: false });
      lines.push(JSON.stringify({ in: vin, ex: vex, mac: `02:00:00:00:01:${i.toString(16).padStart(2, '0')}` }));
    }
    const file = path.join(os.tmpdir(), `${uniqueName('nbt')}.jsonl`);
    fs.writeFileSync(file, lines.join('\n') + '\n');
    onCleanup(() => fs.rmSync(file, { force: true }));
    const delAll = async () => {
      const dp = Datapath.open(tt.pins, { netns: tt.t.enforcer });
      try {
        for (let i = 0; i < n; i++) await dp.delPair({ in: `nbi${i}` });
      } finally {
        dp.close();
      }
    };
    const args = ['pair', 'add', '--file', file];
    const m = await runCli(tt, args);
    assert.equal(m.code, 0, m.stderr);
    await delAll();
    const seen: Record<string, number> = {};
    for (const [k, delayMs] of delays(m.ms).entries()) {
      const { sig, group } = how(k);
      const why = `pair add --file, ${sig} after ${delayMs} of ${m.ms} ms`;
      const r = await runCli(tt, args, { sig, delayMs, group });
      const o = outcome(r, sig, new RegExp(`pair add --file ${esc(file)}`), new RegExp(`^${n} pairs: ${n} added`, 'm'), why);
      seen[r.code === 0 ? 'done before the signal' : o] = (seen[r.code === 0 ? 'done before the signal' : o] ?? 0) + 1;
      assert.equal(pairCount(tt), o === 'finished' ? n : 0, `${why}: pairs`);
      checkClean(tt, why);
      if (o === 'finished') await delAll();
    }
    // eslint-disable-next-line no-console
    console.log(`      pair add --file (${n} pairs) ${m.ms} ms; ${JSON.stringify(seen)}`);
  });

  it("adopt and handback: NeuVector's rules or ours, whole, at 4 delays each", async function () {
    const node = buildNvNode([{ tag: 'sg1', mode: 'tap' }]); // TAP: a FWD pair cannot be handed back without act_pedit
    const p = node.pairs[0]!;
    const pins = makePinRoot();
    const tt = { t: { enforcer: node.enforcer.name }, pins, run: (args: string[]) => cli(['--netns', node.enforcer.name, '--bpffs', pins, ...args]) };
    const loaded = () => isLoaded(tt.pins);
    /** On NeuVector's rules (nothing of ours: handback unloads) or on ours (its filters gone, our pair, show --check clean). */
    const expectOn = (ours: boolean, why: string) => {
      assert.equal(nvLeft(node, p).length === 0, ours, `${why}: NeuVector's filters ${ours ? 'gone' : 'there'}: ${nvLeft(node, p).join(', ')}`);
      assert.equal(loaded() ? pairCount(tt) : 0, ours ? 1 : 0, `${why}: our pairs`);
      if (loaded()) checkClean(tt, why);
    };
    const ma = await runCli(tt, ['adopt']);
    assert.equal(ma.code, 0, ma.stderr);
    const mh = await runCli(tt, ['handback']);
    assert.equal(mh.code, 0, mh.stderr);
    expectOn(false, 'after the measured runs');
    const seen: Record<string, number> = {};
    for (const [op, ms, done] of [['adopt', ma.ms, /^adopted 1 of 1 pair/m], ['handback', mh.ms, /^handed back 1 pair/]] as const) {
      for (const [k, delayMs] of Array.from({ length: 4 }, (_, k) => Math.round((k * ms) / 3)).entries()) {
        if (op === 'handback') assert.equal(tt.run(['adopt']).code, 0, 'adopt before the handback');
        const { sig, group } = how(k);
        const why = `${op}, ${sig} to the ${group ? 'group' : 'process'} after ${delayMs} of ${ms} ms`;
        const o = outcome(await runCli(tt, [op], { sig, delayMs, group }), sig, new RegExp(op), done, why);
        seen[`${op} ${o}`] = (seen[`${op} ${o}`] ?? 0) + 1;
        // Finished: adopt leaves the pair on ours, handback on NeuVector's; rolled back (before it began): the opposite.
        expectOn((op === 'adopt') === (o === 'finished'), why);
        if (op === 'adopt' && o === 'finished') assert.equal(tt.run(['handback']).code, 0, `${why}: handback afterwards`);
      }
    }
    // eslint-disable-next-line no-console
    console.log(`      adopt ${ma.ms} ms, handback ${mh.ms} ms; ${JSON.stringify(seen)}`);
  });
});
