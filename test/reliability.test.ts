/**
 * Reliability (issue 6): zero frames lost or duplicated on a pair carrying
 * traffic, in BYPASS, TAP and FWD (through the stub DP), while neuv-bpf is
 * SIGKILLed in the middle of `pair add`, `pair mode`, `pair del`, `load` and
 * `intercept` (at named crash points, NEUV_BPF_FAULT=crash@<point>, and at random
 * times), while the programs are replaced 100 times, 100 other pairs come and
 * go and the pair under test switches mode 1,000 times; every killed command
 * converges when rerun. Plus: two processes are serialised by the lock, a
 * SIGKILLed lock holder blocks nobody, and `show --check` / `repair` on
 * state changed behind our back.
 *
 * NEUV_BPF_SOAK=1 (make soak) runs the full counts and every crash point in
 * every mode; CI (make test) runs 1,000 mode switches and 100 churned pairs in
 * every mode but fewer reloads and random kills, and spreads the crash points
 * over the three modes (each point runs once, with traffic).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  cli,
  CliResult,
  cliSpawn,
  leakChecks,
  makeNetns,
  makePinRoot,
  Netns,
  onCleanup,
  requireKernel,
  ROOT,
  sh,
  TIME_SCALE,
} from './helpers';
import { Datapath } from '../src/pairs';
import { withLock } from '../src/lock';
import { INTERCEPT_STEPS } from '../src/intercept';
import { configureLogging } from '../src/log';
import { PairTopology, makePairTopology } from './topology';
import { addAddrs, veth } from '../harness/net';
import { collectOutput, STUB_DP } from '../harness/proc';
import { StubDp } from '../harness/stub-dp';
import {
  TcpTransfer,
  TcpTransferResult,
  UdpStream,
  UdpStreamResult,
  startTcpTransfer,
  startUdpStream,
} from './traffic';
import { mapPinPath, progPinPath } from '../src/pins';

const SOAK = process.env.NEUV_BPF_SOAK === '1';
const COUNTS = SOAK
  ? { reloads: 100, churn: 100, switches: 1000, randomKills: 40 }
  : { reloads: 10, churn: 100, switches: 1000, randomKills: 6 };

type Mode = 'bypass' | 'tap' | 'fwd';

// ---------------------------------------------------------------- crash points

const ADD_POINTS = [
  'pair-add:planned', 'pair-add:after-vin-hook', 'pair-add:after-hooks', 'pair-add:after-stats',
  'pair-add:after-vex-entry', 'pair-add:after-vin-entry', 'pair-add:after-ids',
];
const MODE_POINTS = ['pair-mode:after-vex', 'pair-mode:after-vin'];
const DEL_POINTS = ['pair-del:after-detach', 'pair-del:after-detach#2', 'pair-del:after-ids', 'pair-del:after-port', 'pair-del:after-port#2'];
const LOAD_POINTS = [
  'load:after-dp-pair', 'load:after-obj-load', 'load:after-config', 'load:after-vbr-attach', 'load:after-reattach',
  'load:after-reattach#3', 'load:after-prog-pin-tmp', 'load:after-prog-pin', 'load:after-prog-pin#3', 'load:before-commit',
];
const INTERCEPT_POINTS = [...INTERCEPT_STEPS.map((s) => `intercept:before-${s}`)];
/** In CI: the intercept points run (each builds a container); soak runs all of them. */
const INTERCEPT_CI = ['intercept:before-down', 'intercept:before-rename', 'intercept:before-move-vin', 'intercept:before-pair', 'intercept:before-commit'];

/**
 * Points where rerunning the killed command alone does not converge and
 * `neuv-bpf repair` is needed first (a finding, reported; see docs/reliability.md,
 * Known gaps). None now: pair del removes the counters before the port
 * entries, so the ports left after a kill still name the pair (until
 * session 11, pair-del:after-port#2 left a counters entry no selector reached).
 */
const NEEDS_REPAIR = new Set<string>();

// ---------------------------------------------------------------- helpers

interface PortJson { name: string | null; ifindex: number; attached: boolean; progId: number | null; mode: string | null; qdiscOurs: boolean }
interface PairJson { id: number; mac: string | null; mode: string | null; ipv6ToDp: boolean; vin: PortJson | null; vex: PortJson | null; problems: string[]; counters: Record<'to_wl' | 'from_wl', Record<string, { packets: number }>> | null }
interface ShowJson { consistent: boolean; problems: string[]; pairs: PairJson[] }

/** veth pairs vin<p><i> / vex<p><i> in ns, their peers w<p><i> / h<p><i> there too, all up. */
function addPorts(ns: Netns, prefix: string, n: number): void {
  const lines: string[] = [];
  for (let i = 0; i < n; i++) {
    lines.push(`link add vin${prefix}${i} type veth peer name w${prefix}${i}`, `link add vex${prefix}${i} type veth peer name h${prefix}${i}`);
    for (const d of [`vin${prefix}${i}`, `w${prefix}${i}`, `vex${prefix}${i}`, `h${prefix}${i}`]) lines.push(`link set dev ${d} up`);
  }
  ns.ipBatch(lines);
}

function macOf(prefix: string, i: number): string {
  const p = prefix.charCodeAt(0) & 0xff;
  return `02:aa:${p.toString(16).padStart(2, '0')}:00:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;
}

interface Run extends CliResult {
  signal: NodeJS.Signals | null;
}

/** The CLI, asynchronously (the event loop keeps serving the in-process API and the streams). */
function runAsync(args: string[], env: NodeJS.ProcessEnv = {}, killAfterMs?: number): Promise<Run> {
  const child = cliSpawn(args, env);
  onCleanup(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  return collectOutput(child).done.then((r) => {
    clearTimeout(timer);
    return { ...r, code: r.code ?? -1 };
  });
}

function fmt(r: Run): string {
  return `exit ${r.code}${r.signal ? ` (${r.signal})` : ''}: ${r.stderr.trim() || r.stdout.trim()}`;
}

/** The bytes of a u32 as the little-endian hex bpftool prints. */
function tagBytes(tag: number): string {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(tag >>> 0);
  return [...b].map((x) => `0x${x.toString(16).padStart(2, '0')}`).join(',');
}

/** Runs the functions given to it one at a time, in the order they came. */
function gate(): <T>(fn: () => Promise<T>) => Promise<T> {
  let tail: Promise<unknown> = Promise.resolve();
  return <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };
}

const direct = <T>(fn: () => Promise<T>): Promise<T> => fn();

/** The build tag baked into a program's .rodata (via bpftool), as the sequence of its bytes is found. */
function progHasTag(progId: number, tag: number): boolean {
  const p = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(progId)])) as { map_ids?: number[] };
  for (const m of p.map_ids ?? []) {
    const info = JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'id', String(m)])) as { name: string };
    if (!info.name.endsWith('.rodata')) continue;
    const d = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'id', String(m)])) as Array<{ value: string[] }>;
    const bytes = (d[0]?.value ?? []).join(',');
    return bytes.includes(tagBytes(tag));
  }
  return false;
}

// ---------------------------------------------------------------- the scenario

interface Scenario {
  mode: Mode;
  topo: PairTopology;
  pins: string;
  /** The CLI for the enforcer netns and this pin root. */
  c: (args: string[], env?: NodeJS.ProcessEnv, killAfterMs?: number) => Promise<Run>;
  show(): Promise<ShowJson>;
  dp: Datapath;
  /** The pair under test. */
  pid: number;
  notes: string[];
  repaired: string[];
}

async function check(s: Scenario, what: string): Promise<void> {
  const r = await s.c(['show', '--check', '--json']);
  if (r.code !== 0) {
    const j = JSON.parse(r.stdout || '{}') as ShowJson;
    assert.fail(`${what}: show --check ${fmt(r)}\n${JSON.stringify(j.problems)} ${JSON.stringify(j.pairs?.filter((p) => p.problems.length).map((p) => [p.id, p.problems]))}`);
  }
}

/**
 * Reruns a killed command until the state is the intended one: the rerun
 * alone must do it, except at the NEEDS_REPAIR points where `repair` runs
 * first. Returns how it got there.
 */
async function converge(s: Scenario, label: string, args: string[], accept: (r: Run) => boolean, verify: (j: ShowJson) => string | undefined, env: NodeJS.ProcessEnv = {}): Promise<'rerun' | 'repair'> {
  const attempt = async (): Promise<string | undefined> => {
    const r = await s.c(args, env);
    if (!accept(r)) return `rerun ${args.join(' ')}: ${fmt(r)}`;
    const chk = await s.c(['show', '--check', '--json']);
    const j = JSON.parse(chk.stdout || '{}') as ShowJson;
    if (chk.code !== 0) return `show --check after the rerun: ${fmt(chk)}`;
    return verify(j);
  };
  const first = await attempt();
  if (first === undefined) return 'rerun';
  const rep = await s.c(['repair']);
  assert.equal(rep.code, 0, `${label}: rerun did not converge (${first}); repair: ${fmt(rep)}`);
  const second = await attempt();
  assert.equal(second, undefined, `${label}: after repair: ${second}`);
  s.repaired.push(`${label} (${first.split('\n')[0]})`);
  return 'repair';
}

function pairByVin(j: ShowJson, vin: string): PairJson | undefined {
  return j.pairs.find((p) => p.vin?.name === vin);
}

/** What a killed command must have become after its rerun. */
function expectPair(vin: string, mac: string, mode: string): (j: ShowJson) => string | undefined {
  return (j) => {
    const p = pairByVin(j, vin);
    if (!p) return `no pair with vin ${vin}`;
    if (p.mac !== mac || p.mode !== mode) return `pair ${vin}: mac ${p.mac} mode ${p.mode}, expected ${mac} ${mode}`;
    if (!p.vin?.attached || !p.vex?.attached) return `pair ${vin}: hooks ${p.vin?.attached}/${p.vex?.attached}`;
    return undefined;
  };
}

function expectNoPair(vin: string): (j: ShowJson) => string | undefined {
  return (j) => (pairByVin(j, vin) ? `pair with vin ${vin} still there` : undefined);
}

/** Kills `args` at `point`, checks it died there, reruns until converged. */
async function crashAt(s: Scenario, point: string, args: string[], accept: (r: Run) => boolean, verify: (j: ShowJson) => string | undefined, env: NodeJS.ProcessEnv = {}): Promise<void> {
  const k = await s.c(args, { ...env, NEUV_BPF_FAULT: `crash@${point}` });
  assert.equal(k.signal, 'SIGKILL', `${point}: ${args.join(' ')} was not killed (${fmt(k)})`);
  assert.match(k.stderr, new RegExp(`crash point ${point.replace(/[#]/g, '\\$&')} reached`), `${point} was not reached`);
  const how = await converge(s, point, args, accept, verify, env);
  const expected = NEEDS_REPAIR.has(point) ? 'repair' : 'rerun';
  assert.equal(how, expected, `${point}: converged by ${how}, expected ${expected} (update NEEDS_REPAIR if the owner fixed it)${how === 'repair' ? `: ${s.repaired[s.repaired.length - 1]}` : ''}`);
}

const ok = (r: Run) => r.code === 0;

async function crashPoints(s: Scenario, points: string[], other: { vin: string; mac: string }, buildTag: () => number): Promise<void> {
  let q = 0;
  const nextQ = () => ({ vin: `vinQ${q}`, ex: `vexQ${q}`, mac: macOf('Q', q++) });
  for (const point of points) {
    const cmd = point.split(':')[0];
    if (cmd === 'pair-add') {
      const p = nextQ();
      await crashAt(s, point, ['pair', 'add', '--in', p.vin, '--ex', p.ex, '--mac', p.mac, '--mode', 'tap'], ok, expectPair(p.vin, p.mac, 'tap'));
      const d = await s.c(['pair', 'del', '--in', p.vin]);
      assert.equal(d.code, 0, fmt(d));
      // A clsact the killed run created is not recorded as ours (the rerun found the hook in place): it stays.
      const q2 = sh('ip', ['netns', 'exec', s.topo.enforcer.name, 'tc', 'qdisc', 'show', 'dev', p.vin]) + sh('ip', ['netns', 'exec', s.topo.enforcer.name, 'tc', 'qdisc', 'show', 'dev', p.ex]);
      if (/clsact/.test(q2)) s.notes.push(`${point}: clsact left on ${p.vin}/${p.ex} after pair del (created by the killed run, not recorded as ours)`);
    } else if (cmd === 'pair-mode') {
      // BYPASS/TAP: the pair under test itself flips (both keep forwarding); FWD: the other pair.
      const target = s.mode === 'fwd' ? other.vin : s.topo.vin;
      const cur = pairByVin(await s.show(), target)!.mode;
      const to = cur === 'tap' ? 'bypass' : 'tap';
      await crashAt(s, point, ['pair', 'mode', '--in', target, to], ok, (j) => (pairByVin(j, target)?.mode === to ? undefined : `mode of ${target} is ${pairByVin(j, target)?.mode}, not ${to}`));
    } else if (cmd === 'pair-del') {
      const p = nextQ();
      const a = await s.c(['pair', 'add', '--in', p.vin, '--ex', p.ex, '--mac', p.mac]);
      assert.equal(a.code, 0, fmt(a));
      const gone = (r: Run) => r.code === 0 || (r.code === 4 && /not in any pair|no pair with port id/.test(r.stderr));
      await crashAt(s, point, ['pair', 'del', '--in', p.vin], gone, expectNoPair(p.vin));
    } else if (cmd === 'load') {
      const tag = buildTag();
      await crashAt(s, point, ['load'], ok, () => undefined, { NEUV_BPF_BUILD_TAG: String(tag) });
    } else if (cmd === 'intercept') {
      await interceptCrash(s, point);
    } else throw new Error(`no driver for crash point ${point}`);
  }
}

// ---------------------------------------------------------------- intercept crash points

let ctrSeq = 0;

/**
 * A throwaway container (its eth0 a veth whose peer is in the host netns of
 * the topology), intercepted by a killed `intercept`, then rerun: the rerun
 * must converge (the container intercepted, as it was from inside, and
 * reachable); the datapath must stay consistent (after cleaning up the
 * container) and the pair under test must not notice.
 */
async function interceptCrash(s: Scenario, point: string): Promise<void> {
  const n = ++ctrSeq;
  const ctr = makeNetns('nbtc');
  const host = s.topo.host;
  const hostIf = `hc${n}`;
  const net = `10.66.${n}`;
  veth({ ns: host, name: hostIf }, { ns: ctr, name: 'eth0' });
  addAddrs(host, hostIf, `${net}.1/24`);
  addAddrs(ctr, 'eth0', `${net}.2/24`);
  ctr.ip('route', 'add', '10.67.0.0/16', 'via', `${net}.1`);
  const state = () => {
    const ip = (...a: string[]) => sh('ip', ['-n', ctr.name, ...a], { allowFail: true });
    const l = JSON.parse(ip('-j', 'addr', 'show', 'dev', 'eth0') || '[]') as Array<{ address: string; flags: string[]; addr_info: Array<{ local: string }> }>;
    const r = ip('-4', 'route', 'show', 'dev', 'eth0').trim();
    return l[0] ? JSON.stringify({ mac: l[0].address, up: l[0].flags.includes('UP'), addrs: l[0].addr_info.map((a) => a.local).sort(), routes: r }) : 'no eth0';
  };
  const before = state();
  const args = ['intercept', '--container-netns', ctr.name, '--mode', 'tap'];
  const k = await s.c(args, { NEUV_BPF_FAULT: `crash@${point}` });
  assert.equal(k.signal, 'SIGKILL', `${point}: intercept was not killed (${fmt(k)})`);
  const r = await s.c(args);
  const after = state();
  const reach = sh('ip', ['netns', 'exec', host.name, 'ping', '-c', '1', '-W', '1', `${net}.2`], { allowFail: true });
  const well = after === before && /1 received/.test(reach);
  // Killed at its commit point, the intercept had done every step: the rerun's
  // recovery keeps it (src/intercept/journal.ts) and the rerun, asked the same, reports
  // the container intercepted like a successful intercept (exit 0).
  const completed = point === 'intercept:before-commit' && r.code === 0 && /the killed intercept had completed/.test(r.stdout) && well;
  const outcome = completed
    ? 'completed by the killed run'
    : r.code !== 0
      ? `rerun refused: ${r.stderr.trim().split('\n')[0]}`
      : well ? 'converged' : `rerun succeeded but the container lost state (${after})`;
  s.notes.push(`${point}: ${outcome}`);
  // The rerun rolls the killed intercept back from its journal first (src/intercept/journal.ts), then intercepts.
  assert.ok(outcome === 'converged' || completed, `${point}: the rerun after the kill: ${outcome}`);
  // Clean up whatever is left: release if it is intercepted, then drop stray ports and pairs.
  if (r.code === 0) {
    const rel = await s.c(['release', '--container-netns', ctr.name]);
    assert.equal(rel.code, 0, fmt(rel));
  }
  ctr.del();
  sh('ip', ['-n', host.name, 'link', 'del', hostIf], { allowFail: true });
  for (const l of JSON.parse(s.topo.enforcer.ip('-j', 'link', 'show') || '[]') as Array<{ ifname: string }>) {
    // allowFail: a vin goes by itself with its peer when the container netns is torn down (asynchronously).
    if (/^v(in|ex)n[0-9a-f]+-eth0$/.test(l.ifname)) sh('ip', ['-n', s.topo.enforcer.name, 'link', 'del', l.ifname], { allowFail: true });
  }
  // Wait until the teardown is over (ports of a deleted netns go asynchronously), then repair what is left.
  for (let t = Date.now(); Date.now() - t < 10000; ) {
    const left = (JSON.parse(s.topo.enforcer.ip('-j', 'link', 'show') || '[]') as Array<{ ifname: string }>).filter((l) => /^v(in|ex)n[0-9a-f]+-eth0$/.test(l.ifname));
    if (!left.length) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const j = await s.show();
  if (!j.consistent) {
    const rep = await s.c(['repair']);
    assert.equal(rep.code, 0, `${point}: repair after cleaning up the container: ${fmt(rep)}`);
  }
  await check(s, `${point} (after cleaning up the container)`);
}

// ---------------------------------------------------------------- the suite

describe('reliability (kernel)', function () {
  before(function () {
    requireKernel(this);
    configureLogging('warn', false); // the API waits for the CLI's lock: not news
  });
  leakChecks({ prefixes: ['nbt', 'nbtc'] });

  const modes: Mode[] = ['bypass', 'tap', 'fwd'];
  const allPoints = [...ADD_POINTS, ...MODE_POINTS, ...DEL_POINTS, ...LOAD_POINTS];
  modes.forEach((mode, mi) => {
    // CI: each point once, spread over the modes; soak: every point in every mode.
    const points = SOAK ? [...allPoints, ...INTERCEPT_POINTS] : [...allPoints.filter((_, i) => i % 3 === mi), ...INTERCEPT_CI.filter((_, i) => i % 3 === mi)];
    it(`${mode.toUpperCase()}: no frame lost or duplicated while neuv-bpf is killed at ${points.length} crash points and at random, the programs are replaced ${COUNTS.reloads} times, ${COUNTS.churn} other pairs come and go and modes switch ${COUNTS.switches} times`, async function () {
      this.timeout(SOAK ? 4 * 3600e3 : 400e3);
      if (mode === 'fwd') assert.ok(fs.existsSync(STUB_DP), `${STUB_DP} missing (make build)`);
      const t0 = Date.now();
      const topo = makePairTopology({ subnet: `10.67.${mi}` });
      const pins = makePinRoot();
      const enf = topo.enforcer.name;
      const c = (args: string[], env: NodeJS.ProcessEnv = {}, killAfterMs?: number) => runAsync(['--netns', enf, '--bpffs', pins, ...args], env, killAfterMs);
      const l = await c(['load']);
      assert.equal(l.code, 0, fmt(l));
      // At nice -15, as an enforcer's DP would be favoured: the DP is a stand-in, what is under test is the
      // datapath around it (its counts tell the two apart). Not SCHED_FIFO: busy with frames, it would starve the rest.
      const stub = mode === 'fwd' ? await StubDp.start(enf, { intervalMs: 200, under: ['nice', '-n', '-15'] }) : undefined;
      const dp = Datapath.open(pins, { netns: enf });
      onCleanup(() => dp.close());
      const s: Scenario = {
        mode, topo, pins, c, dp, pid: 0, notes: [], repaired: [],
        show: async () => JSON.parse((await c(['show', '--json'])).stdout) as ShowJson,
      };
      const added = await dp.addPair({ in: topo.vin, ex: topo.vex, mac: topo.wlMac, mode });
      s.pid = added.id;
      // Ports: Q for crash points, C for churn, R for random kills, O the other pair (mode switches in FWD).
      addPorts(topo.enforcer, 'Q', 40);
      addPorts(topo.enforcer, 'C', COUNTS.churn);
      addPorts(topo.enforcer, 'R', COUNTS.randomKills);
      addPorts(topo.enforcer, 'O', 1);
      const other = { vin: 'vinO0', mac: macOf('O', 0) };
      await dp.addPair({ in: 'vinO0', ex: 'vexO0', mac: other.mac, mode: 'bypass' });
      let tagSeq = 0x6b000000 + (mi << 16);
      const buildTag = () => ++tagSeq;

      // Traffic: UDP both ways, TCP towards the workload, until stopped.
      // Under emulation (TIME_SCALE > 1) the senders, receivers and the stub DP get a fraction of a
      // CPU: slower streams there, so what is measured is the datapath, not the starved DP.
      // make test: 1,000 datagrams/s each way (the streams' Node processes were a third of the
      // suite's CPU at 3,000/s, and CI's budget is CPU); soak: 3,000/s.
      const rate = TIME_SCALE > 1 ? 300 : SOAK ? 3000 : 1000;
      const down: UdpStream = await startUdpStream({ senderNs: topo.host.name, receiverNs: topo.workload.name, to: topo.wlAddr, port: 6001, count: 0, rate, untilStopped: true, idleMs: 2000, timeoutMs: 4 * 3600e3 });
      const up: UdpStream = await startUdpStream({ senderNs: topo.workload.name, receiverNs: topo.host.name, to: topo.hostAddr, port: 6002, count: 0, rate, untilStopped: true, idleMs: 2000, timeoutMs: 4 * 3600e3 });
      const tcp: TcpTransfer = await startTcpTransfer({ sender: topo.host, receiver: topo.workload, to: topo.wlAddr, port: 6003, untilStopped: true, rate: TIME_SCALE > 1 ? 1 << 20 : 4 << 20 });
      onCleanup(() => {
        down.kill();
        up.kill();
        tcp.kill();
      });
      await new Promise((r) => setTimeout(r, 300));

      // ---- phase 1: named crash points, one after another
      await crashPoints(s, points, other, buildTag);
      const tPoints = Date.now();

      // ---- phase 2, all at once: mode switches (API), churn (API), reloads (CLI), random kills (CLI)
      let busy = 3;
      let switches = 0;
      const switcher = (async () => {
        // BYPASS/TAP: the pair under test flips between the two lossless modes; FWD: the other pair
        // (a FWD pair leaving FWD drops what the DP still holds: by design, see docs/datapath.md §3).
        const sel = mode === 'fwd' ? { in: other.vin } : { in: topo.vin };
        const flip = mode === 'fwd' ? ['tap', 'bypass'] as const : mode === 'tap' ? ['bypass', 'tap'] as const : ['tap', 'bypass'] as const;
        while (switches < COUNTS.switches || busy > 0) {
          await dp.setMode(sel, flip[switches % 2]!);
          switches++;
          // The first COUNTS.switches back to back; after that, while churn, reloads and kills go
          // on, one every 2 ms (a spinning loop here held a core for the whole phase in make test).
          if (switches < COUNTS.switches || SOAK) await new Promise((r) => setImmediate(r));
          else await new Promise((r) => setTimeout(r, 2));
        }
        if (switches % 2) {
          await dp.setMode(sel, flip[1]);
          switches++;
        }
      })();
      const churn = (async () => {
        try {
          for (let i = 0; i < COUNTS.churn; i++) await dp.addPair({ in: `vinC${i}`, ex: `vexC${i}`, mac: macOf('C', i), mode: i % 2 ? 'tap' : 'fwd' });
          for (let i = 0; i < COUNTS.churn; i++) await dp.delPair({ in: `vinC${i}` });
        } finally {
          busy--;
        }
      })();
      // A `load` from the killer replaces the programs: if it ran between the reloader's load and its
      // tag check, the program checked would be freed under bpftool (CI, stop 22: `map show id` of
      // its .rodata failed). The reloads whose tag is checked and the killer's loads take turns.
      const loads = gate();
      const reloads: number[] = [];
      const reloader = (async () => {
        try {
          for (let i = 0; i < COUNTS.reloads; i++) {
            const checked = i === 0 || i === COUNTS.reloads - 1;
            await (checked ? loads : direct)(async () => {
              const tag = buildTag();
              const r = await c(['load', '--json'], { NEUV_BPF_BUILD_TAG: String(tag) });
              assert.equal(r.code, 0, `reload ${i}: ${fmt(r)}`);
              const j = JSON.parse(r.stdout) as { replaced: boolean; progIds: { vbr: number; vin: number } };
              assert.equal(j.replaced, true);
              if (checked) assert.ok(progHasTag(j.progIds.vbr, tag), `reload ${i}: the new vbr program carries build tag ${tag}`);
              reloads.push(j.progIds.vbr);
            });
          }
        } finally {
          busy--;
        }
      })();
      const kills: string[] = [];
      const killer = (async () => {
        try {
          for (let i = 0; i < COUNTS.randomKills; i++) {
            const delay = 30 + Math.floor(Math.random() * 700);
            const kind = i % 3;
            if (kind === 0) {
              const args = ['pair', 'add', '--in', `vinR${i}`, '--ex', `vexR${i}`, '--mac', macOf('R', i), '--mode', 'tap'];
              const k = await c(args, {}, delay);
              kills.push(`pair add after ${delay} ms: ${k.signal ?? `exit ${k.code}`}`);
              await converge(s, `random kill of pair add after ${delay} ms`, args, ok, expectPair(`vinR${i}`, macOf('R', i), 'tap'));
            } else if (kind === 1) {
              await loads(async () => {
                const tag = buildTag();
                const k = await c(['load'], { NEUV_BPF_BUILD_TAG: String(tag) }, delay);
                kills.push(`load after ${delay} ms: ${k.signal ?? `exit ${k.code}`}`);
                await converge(s, `random kill of load after ${delay} ms`, ['load'], ok, () => undefined, { NEUV_BPF_BUILD_TAG: String(buildTag()) });
              });
            } else {
              const p = `vinR${i - 2}`;
              const args = ['pair', 'del', '--in', p];
              const k = await c(args, {}, delay);
              kills.push(`pair del after ${delay} ms: ${k.signal ?? `exit ${k.code}`}`);
              const gone = (r: Run) => r.code === 0 || (r.code === 4 && /not in any pair/.test(r.stderr));
              await converge(s, `random kill of pair del after ${delay} ms`, args, gone, expectNoPair(p));
            }
          }
        } finally {
          busy--;
        }
      })();
      await Promise.all([churn, reloader, killer, switcher]);
      const tPhase2 = Date.now();

      // ---- the end: everything consistent, the pair under test as it was, then the traffic verdict
      await check(s, 'after phase 2');
      const j = await s.show();
      const p = j.pairs.find((x) => x.id === s.pid)!;
      assert.equal(p.mode, mode, 'the pair under test is back in its mode');
      assert.equal(j.pairs.filter((x) => /^vinC/.test(x.vin?.name ?? '')).length, 0, 'the churned pairs are gone');
      await new Promise((r) => setTimeout(r, 300));
      down.stop();
      up.stop();
      tcp.stop();
      const [rd, ru, rt] = await Promise.all([down.result, up.result, tcp.result]) as [UdpStreamResult, UdpStreamResult, TcpTransferResult];
      const stats = (await s.show()).pairs.find((x) => x.id === s.pid)!.counters!;
      const drops = stats.to_wl.drop!.packets + stats.from_wl.drop!.packets;
      let dpLine = '';
      if (stub) {
        const sc = await stub.counts(5000);
        const toDp = stats.to_wl.to_dp!.packets + stats.from_wl.to_dp!.packets;
        const fromDp = stats.to_wl.from_dp!.packets + stats.from_wl.from_dp!.packets;
        // More come back than went: vbr-neuv has tx offload off, so a TCP super-frame sent to the DP is segmented on the way.
        dpLine = `; to the DP ${toDp} frames, back from it ${fromDp} segments (stub DP read ${sc.rx}, wrote ${sc.sent}, send errors ${sc.send_errors})`;
        assert.equal(sc.send_errors, 0, 'the stub DP wrote every frame back');
      }
      const sock = (r: UdpStreamResult) => (r.socketDrops ? ` (${r.socketDrops} of them by the receiving socket's full buffer)` : '');
      const line = `${mode.toUpperCase()}: UDP down sent ${rd.sent} lost ${rd.lost}${sock(rd)} dup ${rd.duplicated} reordered ${rd.reordered} longest pause ${rd.maxGapMs} ms; ` +
        `UDP up sent ${ru.sent} lost ${ru.lost}${sock(ru)} dup ${ru.duplicated} reordered ${ru.reordered} longest pause ${ru.maxGapMs} ms; ` +
        `TCP ${rt.sentBytes} bytes ${rt.intact ? 'intact' : 'CORRUPT'} (lost ${rt.lost}, retransmitted ${rt.retransmitted}, reordered ${rt.reordered}, duplicated ${rt.duplicated}); ` +
        `pair drops ${drops}${dpLine}; ${points.length} crash points (${((tPoints - t0) / 1000).toFixed(0)} s), ${reloads.length} reloads, ${COUNTS.churn} pairs churned, ` +
        `${switches} mode switches, ${kills.length} random kills (${((tPhase2 - tPoints) / 1000).toFixed(0)} s)`;
      // eslint-disable-next-line no-console
      console.log(`      ${line}`);
      for (const n of [...s.notes, ...s.repaired.map((x) => `needed repair: ${x}`), ...kills.map((k) => `random kill: ${k}`)]) {
        // eslint-disable-next-line no-console
        console.log(`        - ${n}`);
      }
      for (const [what, r] of [['down', rd], ['up', ru]] as const) {
        assert.ok(r.sent > 1000, `${what}: only ${r.sent} datagrams sent`);
        // A receiver starved of CPU (a busy CI machine) overflows its socket buffer: lost after delivery, counted apart.
        assert.equal(r.lost - r.socketDrops, 0, `${what}: lost on the path (${r.lost} lost, ${r.socketDrops} dropped by the receiving socket)`);
        assert.equal(r.duplicated, 0, `${what}: duplicated`);
        assert.equal(r.foreign, 0, `${what}: foreign datagrams`);
      }
      assert.ok(rt.intact, 'TCP stream arrived byte for byte');
      assert.ok(rt.sentBytes > 1 << 20, `TCP: only ${rt.sentBytes} bytes`);
      // TCP: no segment lost. A late one (an ACK held up longer than the RTO on a busy
      // machine) is sent again and arrives twice: counted, not a loss (UDP above checks duplicates).
      assert.equal(rt.lost, 0, `TCP: no segment lost (${rt.retransmitted} retransmitted, ${rt.duplicated} of them late, not lost)`);
      assert.ok(rt.duplicated <= rt.retransmitted, 'TCP: every duplicate is a retransmission');
      assert.equal(drops, 0, 'the datapath dropped nothing of the pair');
      for (const d of ['to_wl', 'from_wl'] as const) {
        if (mode === 'fwd') assert.ok(stats[d].to_dp!.packets > 0 && stats[d].from_dp!.packets > 0, `${d}: FWD frames went through the DP`);
        if (mode === 'tap') assert.ok(stats[d].copy!.packets > 0, `${d}: TAP copied frames to the DP`);
      }
    });
  });

  // ---------------------------------------------------------------- the lock

  describe('concurrency', function () {
    let ns: Netns;
    let pins: string;
    const c = (args: string[], env: NodeJS.ProcessEnv = {}) => runAsync(['--netns', ns.name, '--bpffs', pins, ...args], env);
    beforeEach(async function () {
      ns = makeNetns();
      pins = makePinRoot();
      const l = await c(['load']);
      assert.equal(l.code, 0, fmt(l));
      addPorts(ns, 'K', 40);
    });

    it('processes changing state at the same time are serialised and never corrupt the maps', async function () {
      this.timeout(120000);
      // 4 batches of 10 pairs, the same pair twice, the same pinned id for two pairs, a reload and mode switches: all at once.
      const batch = (from: number) => Array.from({ length: 10 }, (_, i) => JSON.stringify({ in: `vinK${from + i}`, ex: `vexK${from + i}`, mac: macOf('K', from + i), mode: 'tap' })).join('\n');
      const runs = await Promise.all([
        ...[0, 10, 20].map((f) => runAsync(['--netns', ns.name, '--bpffs', pins, 'pair', 'add', '--file', path.join(writeTmp(batch(f)))])),
        c(['pair', 'add', '--in', 'vinK30', '--ex', 'vexK30', '--mac', macOf('K', 30)]),
        c(['pair', 'add', '--in', 'vinK30', '--ex', 'vexK30', '--mac', macOf('K', 30)]),
        c(['pair', 'add', '--in', 'vinK31', '--ex', 'vexK31', '--mac', macOf('K', 31), '--id', '777']),
        c(['pair', 'add', '--in', 'vinK32', '--ex', 'vexK32', '--mac', macOf('K', 32), '--id', '777']),
        c(['load']),
        c(['pair', 'add', '--in', 'vinK33', '--ex', 'vexK33', '--mac', macOf('K', 33), '--mode', 'fwd']),
      ]);
      for (const r of runs.slice(0, 5)) assert.equal(r.code, 0, fmt(r));
      const dupId = runs.slice(5, 7);
      assert.deepEqual(dupId.map((r) => r.code).sort(), [0, 5], `one of two pairs pinning id 777 wins: ${dupId.map(fmt).join(' | ')}`);
      assert.match(dupId.find((r) => r.code === 5)!.stderr, /port id 777 is already used/);
      assert.equal(runs[7]!.code, 0, fmt(runs[7]!));
      assert.equal(runs[8]!.code, 0, fmt(runs[8]!));
      const same = runs.slice(3, 5).map((r) => r.stdout.trim().split(' ')[0]).sort();
      assert.deepEqual(same, ['added', 'exists'], 'the same pair twice: one adds, the other finds it');
      // Mode switches of every pair from several processes at once.
      const sw = await Promise.all(Array.from({ length: 6 }, (_, i) => c(['pair', 'mode', '--in', `vinK${i}`, i % 2 ? 'fwd' : 'bypass'])));
      for (const r of sw) assert.equal(r.code, 0, fmt(r));
      const chk = await c(['show', '--check', '--json']);
      assert.equal(chk.code, 0, fmt(chk));
      const j = JSON.parse(chk.stdout) as ShowJson;
      assert.equal(j.pairs.length, 33);
      assert.equal(new Set(j.pairs.map((p) => p.id)).size, 33, 'ids unique');
      for (let i = 0; i < 6; i++) assert.equal(pairByVin(j, `vinK${i}`)!.mode, i % 2 ? 'fwd' : 'bypass');
      for (const p of j.pairs) assert.equal(p.mac, macOf('K', Number(p.vin!.name!.slice(4))), 'every entry has its own MAC');
    });

    it('a command waits while another holds the lock; a SIGKILLed holder blocks nobody (flock)', async function () {
      this.timeout(60000);
      // A holder that never lets go, until it is killed.
      const holder = spawn(process.execPath, ['-e', `require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'lock.js'))}).withLock(${JSON.stringify(pins)}, () => { process.stdout.write('locked\\n'); setInterval(() => {}, 1 << 30); return new Promise(() => {}); })`], { stdio: ['ignore', 'pipe', 'inherit'] });
      onCleanup(() => holder.kill('SIGKILL'));
      await new Promise<void>((r) => holder.stdout!.once('data', () => r()));
      const t0 = Date.now();
      let doneAt = 0;
      let early: Run | undefined;
      const waiting = c(['--log-level', 'info', 'pair', 'add', '--in', 'vinK0', '--ex', 'vexK0', '--mac', macOf('K', 0)]).then((r) => {
        doneAt = Date.now();
        early = r;
        return r;
      });
      await new Promise((r) => setTimeout(r, 2000));
      assert.equal(doneAt, 0, `pair add must wait for the lock, but ended: ${early ? fmt(early) : ''}`);
      const killedAt = Date.now();
      holder.kill('SIGKILL');
      const r = await waiting;
      assert.equal(r.code, 0, fmt(r));
      assert.match(r.stderr, /another neuv-bpf holds the lock \(or waits for it\); waiting/, 'it said it was waiting');
      assert.ok(doneAt - killedAt < 5000, `pair add finished ${doneAt - killedAt} ms after the holder died`);
      assert.ok(killedAt - t0 >= 2000);

      // A neuv-bpf killed while holding the lock (in the middle of a pair add): the next one goes straight on.
      const k = await c(['pair', 'add', '--in', 'vinK1', '--ex', 'vexK1', '--mac', macOf('K', 1)], { NEUV_BPF_FAULT: 'crash@pair-add:after-hooks' });
      assert.equal(k.signal, 'SIGKILL');
      const t1 = Date.now();
      const again = await c(['pair', 'add', '--in', 'vinK1', '--ex', 'vexK1', '--mac', macOf('K', 1)]);
      assert.equal(again.code, 0, fmt(again));
      assert.ok(Date.now() - t1 < 5000, `the next command took ${Date.now() - t1} ms`);
      const chk = await c(['show', '--check']);
      assert.equal(chk.code, 0, fmt(chk));
    });

    // Seen on 6.1 under emulation: the churn loop of the test above took the lock again within
    // microseconds of each release, and the mode switcher (same process) and the CLI (another),
    // polling for it, waited more than 30 s and failed. A caller now takes a free lock at once only
    // when nobody waits for it.
    it('a caller changing state in a tight loop does not starve the others: another API caller and the CLI get the lock while it loops', async function () {
      this.timeout(120000);
      const dp = Datapath.open(pins, { netns: ns.name });
      onCleanup(() => dp.close());
      for (let i = 1; i < 3; i++) await dp.addPair({ in: `vinK${i}`, ex: `vexK${i}`, mac: macOf('K', i), mode: 'tap' });
      let stop = false;
      let loops = 0;
      // Like the churn above: back to back, the next call starts as soon as the last one released the lock.
      const hog = (async () => {
        while (!stop) {
          await dp.addPair({ in: 'vinK0', ex: 'vexK0', mac: macOf('K', 0), mode: 'tap' });
          await dp.delPair({ in: 'vinK0' });
          loops++;
        }
      })();
      try {
        // Not a speed limit: generous bounds that a starved caller (before: all the time the loop ran) misses.
        const within = (ms: number, what: string) => new Promise((_, rej) => setTimeout(() => rej(new Error(`${what} did not get the lock within ${ms / 1000} s while another caller looped`)), ms).unref());
        const other = (async () => {
          for (let i = 0; i < 20; i++) await dp.setMode({ in: 'vinK1' }, i % 2 ? 'tap' : 'bypass');
        })();
        await Promise.race([other, within(15000, '20 API mode switches in the same process')]);
        const r = (await Promise.race([c(['pair', 'mode', '--in', 'vinK2', 'bypass']), within(25000, 'the CLI')])) as Run;
        assert.equal(r.code, 0, fmt(r));
        assert.ok(loops > 0, 'the looping caller ran too');
      } finally {
        stop = true;
        await hog;
      }
      const j = JSON.parse((await c(['show', '--json'])).stdout) as ShowJson;
      assert.equal(pairByVin(j, 'vinK1')!.mode, 'tap');
      assert.equal(pairByVin(j, 'vinK2')!.mode, 'bypass');
    });
    // The service with a hundred OCI hooks' intercepts at once: each waiter polled the flock every
    // 5-15 ms (ten thousand polls a second), in random order. They now queue in the process.
    it('callers in one process take the lock one at a time in the order they asked (the others queue, not poll)', async function () {
      this.timeout(60000);
      const order: number[] = [];
      let inside = 0;
      let most = 0;
      await Promise.all(Array.from({ length: 30 }, (_, i) => withLock(pins, async () => {
        inside++;
        most = Math.max(most, inside);
        order.push(i);
        await new Promise((r) => setTimeout(r, 10));
        inside--;
      }, 30000, 'test-queue.lock')));
      assert.equal(most, 1, 'one at a time');
      assert.deepEqual(order, Array.from({ length: 30 }, (_, i) => i), 'first come, first served');
    });
  });

  // ---------------------------------------------------------------- show --check / repair

  describe('show --check and repair', function () {
    it('name what disagrees (a vin deleted behind our back, a hook removed with tc qdisc del, lost entries, a cut-short mode switch, a removed vbr-neuv link pin, pin modes) and repair fixes it', async function () {
      this.timeout(120000);
      const ns = makeNetns();
      const pins = makePinRoot();
      const c = (args: string[]) => runAsync(['--netns', ns.name, '--bpffs', pins, ...args]);
      assert.equal((await c(['load'])).code, 0);
      addPorts(ns, 'S', 6);
      for (let i = 0; i < 6; i++) {
        const r = await c(['pair', 'add', '--in', `vinS${i}`, '--ex', `vexS${i}`, '--mac', macOf('S', i), '--mode', i % 2 ? 'tap' : 'bypass']);
        assert.equal(r.code, 0, fmt(r));
      }
      const clean = await c(['show', '--check']);
      assert.equal(clean.code, 0, fmt(clean));
      const j0 = JSON.parse((await c(['show', '--json'])).stdout) as ShowJson;
      const idOf = (vin: string) => pairByVin(j0, vin)!.id;
      const u32 = (n: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return [...b].map(String); };

      // One problem at a time: show --check names it, repair fixes it.
      const cases: Array<[string, () => void, RegExp, RegExp]> = [
        ['vin deleted behind our back', () => ns.ip('link', 'del', 'vinS0'), /the vin \(ifindex \d+\) has no interface in this network namespace \(port vanished\)/, /removed pair id \d+ \(\?\/vexS0\): its vin \(ifindex \d+\) vanished/],
        ['hook removed with tc qdisc del', () => ns.exec('tc', ['qdisc', 'del', 'dev', 'vexS1', 'clsact']), /the vex hook is not attached \(vexS1 ingress\)/, /re-added pair id \d+ \(vinS1\/vexS1, MAC .*\(repaired: vex hook/],
        ['ids entry deleted with bpftool', () => sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(pins, 'ids'), 'key', ...u32(idOf('vinS2'))]), /no neuv_ids entry/, /repaired: ids entry/],
        ['vex entry deleted with bpftool', () => sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(pins, 'ports'), 'key', ...u32(pairByVin(j0, 'vinS3')!.vex!.ifindex)]), /no vex port entry|no neuv_ports entry for the vex/, /repaired: vex entry/],
        ['a mode switch cut short', () => { const k = cli(['--netns', ns.name, '--bpffs', pins, 'pair', 'mode', '--in', 'vinS4', 'fwd'], { env: { NEUV_BPF_FAULT: 'crash@pair-mode:after-vex' } }); assert.equal(k.code, -1); }, /disagree on the mode \(bypass vs fwd\)/, /set pair id \d+ \(vinS4\/vexS4\) to fwd/],
        ['vbr-neuv hook gone', () => {
          if (fs.existsSync(path.join(pins, 'link_10000000'))) fs.rmSync(path.join(pins, 'link_10000000'));
          else ns.exec('tc', ['filter', 'del', 'dev', 'vbr-neuv', 'ingress', 'pref', '1', 'handle', '0x4e56', 'bpf']);
        }, /the vbr-neuv hook is not attached/, /attached the pinned vbr program/],
        ['a pin made world-readable', () => fs.chmodSync(mapPinPath(pins, 'ports'), 0o644), /pin neuv_ports has mode 644, not 600/, /set pin neuv_ports to mode 600/],
        ['stray counters', () => sh('bpftool', ['map', 'update', 'pinned', mapPinPath(pins, 'stats'), 'key', ...u32(4242), 'value', ...Array(160).fill('0')]), /neuv_stats has an entry for id 4242, which has no pair/, /removed the counters of id 4242/],
        ['stray hook (a killed pair add)', () => { veth({ ns, name: 'vinS9' }, { ns, name: 'wlS9' }, { up: false }); veth({ ns, name: 'vexS9' }, { ns, name: 'hS9' }, { up: false }); const k2 = cli(['--netns', ns.name, '--bpffs', pins, 'pair', 'add', '--in', 'vinS9', '--ex', 'vexS9', '--mac', macOf('S', 9)], { env: { NEUV_BPF_FAULT: 'crash@pair-add:after-hooks' } }); assert.equal(k2.code, -1); }, /vinS9 \(ifindex \d+\) runs our neuv_vin program but is in no pair/, /detached neuv_vin from vinS9/],
      ];
      for (const [what, breakIt, problem, fix] of cases) {
        breakIt();
        const chk = await c(['show', '--check']);
        assert.equal(chk.code, 1, `${what}: show --check ${fmt(chk)}`);
        const lines = chk.stderr.trim().split('\n');
        assert.equal(lines.length, 1, `${what}: one error line: ${chk.stderr}`);
        assert.match(lines[0]!, /^neuv-bpf: inconsistent: /);
        assert.match(chk.stdout + chk.stderr, problem, `${what}: names the problem`);
        const dry = await c(['repair', '--dry-run']);
        assert.equal(dry.code, 1, `${what}: repair --dry-run reports: ${fmt(dry)}`);
        assert.match(dry.stdout, /^would fix: /m);
        const rep = await c(['repair']);
        assert.equal(rep.code, 0, `${what}: repair: ${fmt(rep)}`);
        assert.match(rep.stdout, fix, `${what}: repair says what it did: ${rep.stdout}`);
        assert.match(rep.stdout, /consistent now/);
        const after = await c(['show', '--check']);
        assert.equal(after.code, 0, `${what}: after repair: ${fmt(after)}`);
      }
      const j1 = JSON.parse((await c(['show', '--json'])).stdout) as ShowJson;
      assert.equal(pairByVin(j1, 'vinS4')!.mode, 'fwd');
      assert.equal(j1.pairs.length, 5, 'the pair whose vin vanished is gone, the others are back');
      const nothing = await c(['repair']);
      assert.equal(nothing.code, 0);
      assert.match(nothing.stdout, /nothing to repair: consistent/);

      // What needs the object file is left, naming the command that fixes it.
      fs.rmSync(progPinPath(pins, 'vin'));
      const left = await c(['repair']);
      assert.equal(left.code, 1);
      assert.match(left.stderr, /program pin prog_vin missing .*run neuv-bpf load/);
      assert.equal((await c(['load'])).code, 0);
      assert.equal((await c(['show', '--check'])).code, 0);
    });
  });
});

function writeTmp(text: string): string {
  const f = path.join(os.tmpdir(), `nbt-rel-${process.pid}-${Math.random().toString(36).slice(2)}.jsonl`);
  fs.writeFileSync(f, text + '\n');
  onCleanup(() => fs.rmSync(f, { force: true }));
  return f;
}
