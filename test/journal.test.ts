/**
 * Kernel suite: intercept and release are crash-safe (src/intercept/journal.ts).
 * `intercept` and `release` are SIGKILLed before each of their steps (the
 * crash points, NEUV_BPF_FAULT=crash@<point>); then `repair` alone must leave the
 * container exactly as before intercept (its `ip -j` link, address, route and
 * neighbour snapshot), or, killed at the commit point, intercepted and well;
 * no pair, port or journal record left over, `show --check` clean. The next
 * intercept or release of the container does the same recovery first. And
 * an interception whose container went away (its netns deleted) is cleaned
 * up by repair: the pair and the original port left in the enforcer netns.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { requireKernel, sh, leakChecks } from './helpers';
import { containerState, linkNames, makeTopology, TestTopology } from './topology';
import { HOST_IP4, HOST_IP6, ping } from '../harness/topology';
import { INTERCEPT_STEPS, RELEASE_STEPS } from '../src/intercept';
import { JournalRecord, findRecord, journalDir, listRecords, recordProblem, removeRecord, writeRecord } from '../src/intercept/journal';
import { uniqueName } from './helpers';

const IDLE_ENFORCER = ['lo', 'vbr-neuv', 'vth-neuv'];

describe('journal records (unit, root: they live under /run/neuv-bpf)', function () {
  before(function () {
    if (process.getuid?.() !== 0) this.skip();
  });

  const rec = (pinRoot: string, over: Partial<JournalRecord> = {}): JournalRecord => ({
    version: 1, op: 'intercept', step: 'down', port: 'eth0', vex: 'vex2a-eth0', vin: 'vin2a-eth0', time: '',
    target: { desc: 'pid 42', pid: 42, path: '/proc/42/ns/net', ino: 4026530000, dev: 4 },
    enforcer: { path: null, ino: 4026531840, dev: 4 },
    snap: { name: 'eth0', ifindex: 2, kind: 'veth', mac: '02:00:00:00:00:01', mtu: 1500, txqlen: 1000, alias: undefined, up: true, addrGenMode: 'eui64', numTxQueues: 1, numRxQueues: 1, peerIfindex: 9, addrs: [], routes: [], neighbours: [] },
    ...over,
  });

  it('written atomically, found by netns inode and port, listed, removed with their directory', function () {
    const pinRoot = `/sys/fs/bpf/${uniqueName('nbt')}`;
    const dir = journalDir(pinRoot);
    try {
      assert.equal(findRecord(pinRoot, 4026530000, 'eth0'), undefined);
      writeRecord(pinRoot, rec(pinRoot));
      writeRecord(pinRoot, rec(pinRoot, { step: 'rename' }));
      assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
      assert.equal(fs.statSync(`${dir}/4026530000-eth0.json`).mode & 0o777, 0o600);
      assert.equal(findRecord(pinRoot, 4026530000, 'eth0')?.step, 'rename');
      // A killed write's temporary and an unreadable record are skipped.
      fs.writeFileSync(`${dir}/4026530000-eth1.json.tmp123`, '{');
      fs.writeFileSync(`${dir}/4026530001-eth0.json`, 'not json');
      assert.deepEqual(listRecords(pinRoot).map((r) => r.step), ['rename']);
      fs.rmSync(`${dir}/4026530000-eth1.json.tmp123`);
      fs.rmSync(`${dir}/4026530001-eth0.json`);
      removeRecord(pinRoot, rec(pinRoot));
      assert.equal(fs.existsSync(dir), false, 'the last record takes its directory with it');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('show --check lines: half-done intercept and release, an intercept killed at its commit point', function () {
    const pinRoot = '/sys/fs/bpf/nbt-never-made';
    assert.equal(recordProblem(rec(pinRoot, { step: 'move-vin' })), "a half-done intercept of eth0 of pid 42 (killed before its step 'move-vin'): neuv-bpf repair rolls it back");
    assert.equal(recordProblem(rec(pinRoot, { op: 'release', step: 'park' })), "a half-done release of eth0 of pid 42 (killed before its step 'park'): neuv-bpf repair finishes it");
    assert.match(recordProblem(rec(pinRoot, { step: 'commit' }))!, /killed at its commit point, every step done: neuv-bpf repair checks it and keeps it/);
  });
});

function pairs(tt: TestTopology): Array<{ id: number; mode: string; vin: { name: string } | null }> {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: Array<{ id: number; mode: string; vin: { name: string } | null }> }).pairs;
}

function records(tt: TestTopology): string[] {
  const d = journalDir(tt.pins);
  return fs.existsSync(d) ? fs.readdirSync(d) : [];
}

function checkClean(tt: TestTopology, what: string): void {
  const r = tt.run(['show', '--check']);
  assert.equal(r.code, 0, `${what}: show --check: ${r.stderr}${r.stdout}`);
}

function reachable(tt: TestTopology, ns: string, what: string): void {
  assert.equal(ping(tt.t, ns, HOST_IP4, 1), 1, `${what}: ping`);
  assert.equal(ping(tt.t, ns, HOST_IP6, 1), 1, `${what}: ping6`);
}

describe('intercept / release survive SIGKILL at every step (kernel)', function () {
  this.timeout(1800000); // a busy 2-core machine runs these 5x slower than a quiet one
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('intercept killed before each step: show --check names the half-done intercept; repair rolls it back (or, at commit, keeps it)', function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const args = ['intercept', '--container-netns', c1.path, '--mode', 'tap'];
    for (const s of INTERCEPT_STEPS) {
      const point = `intercept:before-${s}`;
      const k = tt.run(args, { NEUV_BPF_FAULT: `crash@${point}` });
      assert.equal(k.code, -1, `${point}: not killed: ${k.stderr}`);
      assert.match(k.stderr, new RegExp(`crash point ${point} reached`));
      assert.equal(records(tt).length, 1, `${point}: one journal record`);
      const chk = tt.run(['show', '--check']);
      assert.equal(chk.code, 1, `${point}: show --check passes with a half-done intercept`);
      if (s !== 'commit') assert.match(chk.stdout + chk.stderr, new RegExp(`half-done intercept of eth0 of netns ${c1.path} \\(killed before its step '${s}'\\)`));
      const rep = tt.run(['repair']);
      assert.equal(rep.code, 0, `${point}: repair: ${rep.stderr}${rep.stdout}`);
      assert.deepEqual(containerState(tt.t, c1), before, `${point}: the container after repair`);
      if (s === 'commit') {
        // Every step had run: the intercept was complete, and stays.
        assert.match(rep.stdout, /the killed intercept had completed|nothing to repair/);
        assert.equal(pairs(tt).length, 1, `${point}: the pair stays`);
        reachable(tt, c1.ns, point);
        const rel = tt.run(['release', '--container-netns', c1.path]);
        assert.equal(rel.code, 0, rel.stderr);
        assert.deepEqual(containerState(tt.t, c1), before);
      } else {
        assert.match(rep.stdout, new RegExp(`fixed: rolled back the intercept of eth0 of netns ${c1.path} killed before its step '${s}'`));
        assert.deepEqual(pairs(tt), [], `${point}: no pair after repair`);
      }
      assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER, `${point}: the enforcer netns after repair`);
      assert.deepEqual(records(tt), [], `${point}: no journal record left`);
      checkClean(tt, point);
    }
    reachable(tt, c1.ns, 'after every intercept crash point');
  });

  it('release killed before each step: repair finishes it', function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    for (const s of RELEASE_STEPS) {
      const point = `release:before-${s}`;
      const i = tt.run(['intercept', '--container-netns', c1.path, '--mode', 'tap']);
      assert.equal(i.code, 0, i.stderr);
      const k = tt.run(['release', '--container-netns', c1.path], { NEUV_BPF_FAULT: `crash@${point}` });
      assert.equal(k.code, -1, `${point}: not killed: ${k.stderr}`);
      assert.match(k.stderr, new RegExp(`crash point ${point} reached`));
      const chk = tt.run(['show', '--check']);
      assert.equal(chk.code, 1, `${point}: show --check passes with a half-done release`);
      const rep = tt.run(['repair']);
      assert.equal(rep.code, 0, `${point}: repair: ${rep.stderr}${rep.stdout}`);
      assert.match(rep.stdout, new RegExp(`fixed: finished the release of eth0 of netns ${c1.path} killed before its step '${s}'`));
      assert.deepEqual(containerState(tt.t, c1), before, `${point}: the container after repair`);
      assert.deepEqual(pairs(tt), [], `${point}: no pair after repair`);
      assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER, `${point}: the enforcer netns after repair`);
      assert.deepEqual(records(tt), [], `${point}: no journal record left`);
      checkClean(tt, point);
    }
    reachable(tt, c1.ns, 'after every release crash point');
  });

  it('the next intercept or release of the container recovers first; repair cleans up after a container that is gone', function () {
    const tt = makeTopology({ containers: 3 });
    const [c1, , c3] = tt.c as [NonNullable<(typeof tt.c)[0]>, unknown, NonNullable<(typeof tt.c)[0]>];
    const before = containerState(tt.t, c1);
    const args = ['intercept', '--container-netns', c1.path, '--mode', 'tap'];

    // Killed mid-intercept, then intercept again: rolled back, then intercepted.
    assert.equal(tt.run(args, { NEUV_BPF_FAULT: 'crash@intercept:before-move-vin' }).code, -1);
    const again = tt.run(args);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^first: rolled back the intercept of eth0 .* killed before its step 'move-vin'/);
    assert.match(again.stdout, /\nintercepted eth0 of netns/);
    assert.deepEqual(containerState(tt.t, c1), before);
    assert.equal(pairs(tt).length, 1);
    reachable(tt, c1.ns, 'intercepted after a rolled-back intercept');

    // Killed mid-release, then release again: finished.
    assert.equal(tt.run(['release', '--container-netns', c1.path], { NEUV_BPF_FAULT: 'crash@release:before-move-vex' }).code, -1);
    const rel = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(rel.code, 0, rel.stderr);
    assert.match(rel.stdout, /released eth0 of .*: finished the release of eth0 .* killed before its step 'move-vex'/);
    assert.deepEqual(containerState(tt.t, c1), before);

    // Killed mid-intercept, then release: the rollback is the release.
    assert.equal(tt.run(args, { NEUV_BPF_FAULT: 'crash@intercept:before-addresses' }).code, -1);
    const rel2 = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(rel2.code, 0, rel2.stderr);
    assert.match(rel2.stdout, /rolled back the intercept of eth0 .* killed before its step 'addresses'/);
    assert.deepEqual(containerState(tt.t, c1), before);
    assert.deepEqual(pairs(tt), []);
    assert.deepEqual(records(tt), []);

    // A container intercepted, then gone (its netns deleted, as a runtime does on stop).
    const i3 = tt.run(['intercept', '--container-netns', c3.path, '--mode', 'tap', '--json']);
    assert.equal(i3.code, 0, i3.stderr);
    const { vex, vin } = JSON.parse(i3.stdout) as { vex: string; vin: string };
    sh('ip', ['netns', 'del', c3.ns]);
    for (let t0 = Date.now(); linkNames(tt.t, tt.t.enforcer).includes(vin) && Date.now() - t0 < 10000; ) sh('sleep', ['0.1']);
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), [...IDLE_ENFORCER, vex].sort(), 'vin went with the container; vex (the original port) stays');
    const chk = tt.run(['show', '--check', '--json']);
    assert.equal(chk.code, 1);
    const problems = (JSON.parse(chk.stdout) as { problems: string[]; pairs: Array<{ problems: string[] }> });
    assert.ok(problems.problems.some((p) => p.includes(`${vin} is gone (the container is gone); ${vex} is left`)), JSON.stringify(problems.problems));
    assert.ok(problems.pairs[0]!.problems.some((p) => /vanished/.test(p)), JSON.stringify(problems.pairs));
    const rep = tt.run(['repair']);
    assert.equal(rep.code, 0, rep.stderr + rep.stdout);
    assert.match(rep.stdout, new RegExp(`eth0 of netns ${c3.path}: the container is gone; removed pair id \\d+, ${vex}`));
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER);
    assert.deepEqual(pairs(tt), []);
    assert.deepEqual(records(tt), []);
    checkClean(tt, 'after the gone container');
  });
});
