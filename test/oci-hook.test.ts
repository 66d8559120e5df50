/**
 * Kernel suite for `neuv-bpf oci-hook` (src/hook/, docs/containers.md).
 *
 * Without a runtime: the real CLI fed the state a runtime writes, for a
 * workload process in a container netns of the demo's topology: intercept
 * before anything runs (standalone and through the service), release at
 * poststop, and what is left removed once the netns is gone; bad stdin
 * refused with one line; the failure policy (fail-closed, fail-open counted).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { CliResult, cli, leakChecks, makeNet, oneErrorLine, requireKernel, uniqueName } from './helpers';
import { containerState, makeTopology, nsView, TestTopology, waitFor, workloadPid } from './topology';
import { serve } from './service-fixture';
import { veth } from '../harness/net';
import { lockDirFile } from '../src/lock';
import { readFailOpenCount } from '../src/hook';

const ID = 'c0ffee'.padEnd(64, '0');
const state = (o: Record<string, unknown>) => JSON.stringify({ ociVersion: '1.0.2-dev', id: ID, bundle: '/var/lib/x/userdata', annotations: {}, ...o });
const creating = (pid: number, mode?: string, id = ID) => state({ id, status: 'creating', pid, annotations: mode ? { 'io.neuv-bpf.mode': mode } : {} });
const stopped = (id = ID) => state({ id, status: 'stopped' });

describe('oci-hook without a runtime (kernel)', function () {
  this.timeout(300000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  let T: TestTopology;
  function hookRun(input: string, args: string[], env: NodeJS.ProcessEnv): CliResult {
    return cli(['--netns', T.t.enforcer, '--bpffs', T.pins, 'oci-hook', ...args], { input, env });
  }
  const records = () => (fs.existsSync(lockDirFile(T.pins, 'hooks')) ? fs.readdirSync(lockDirFile(T.pins, 'hooks')) : []);
  const pairs = () => (JSON.parse(T.run(['show', '--json']).stdout) as { pairs: Array<{ id: number; mode: string; vex: { name: string } }> }).pairs;

  it('createRuntime: intercepted in the annotation\'s mode before the workload runs, identical inside; poststop: released as before', function () {
    T = makeTopology({ containers: 1 });
    const c = T.c[0]!;
    const pid = workloadPid(T.t, c);
    const before = containerState(T.t, c);
    const r = hookRun(creating(pid, 'drop'), ['--standalone'], {});
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^container ${ID}: intercepted eth0 \\(pid ${pid}\\) in mode drop, pair id \\d+ \\(standalone\\)\\n$`));
    assert.deepEqual(pairs().map((p) => p.mode), ['drop']);
    assert.deepEqual(containerState(T.t, c), before, 'the container sees the same eth0');
    assert.deepEqual(records(), [`${ID}.json`]);
    const s = hookRun(stopped(), ['--standalone'], {});
    assert.equal(s.code, 0, s.stderr);
    assert.match(s.stdout, /released eth0: vex[0-9a-f]+-eth0 is eth0 again \(standalone\)/);
    assert.deepEqual(pairs(), []);
    assert.deepEqual(containerState(T.t, c), before, 'the container after release');
    assert.deepEqual(records(), []);
    // A second poststop, or one of a container the hook never intercepted: nothing to do.
    const again = hookRun(stopped(), [], {});
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /not intercepted by the hook, nothing to release/);
  });

  it('through the service; a mode of none and the default mode; poststop after the netns is gone removes what is left', async function () {
    T = makeTopology({ containers: 1 });
    const s = await serve(T.t.enforcer, T.pins);
    const args = ['--socket', s.socket, '--default-mode', 'tap'];
    const c = T.c[0]!;
    const pid = workloadPid(T.t, c);
    const none = hookRun(creating(pid, 'none'), args, {});
    assert.equal(none.code, 0, none.stderr);
    assert.match(none.stdout, /mode none, not intercepted/);
    assert.deepEqual(pairs(), []);
    const r = hookRun(creating(pid), args, {});
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /in mode tap, pair id \d+ \(service\)$/m);
    assert.deepEqual((await s.client.pairs()).pairs.map((p) => p.mode), ['tap']);

    // A container whose netns goes before poststop, as podman's does: its own netns, a veth to the host's bridge.
    const net = makeNet();
    const gone = net.ns(uniqueName('nbt'));
    veth({ ns: nsView(T.t.host), name: uniqueName('h').slice(0, 15) }, { ns: gone, name: 'eth0' });
    gone.ip('addr', 'add', '10.77.0.50/24', 'dev', 'eth0');
    const workload = net.spawnIn(gone.name, 'sleep', ['600']);
    const gpid = workload.pid!;
    await waitFor('the workload in its netns', () => fs.readlinkSync(`/proc/${gpid}/ns/net`) !== fs.readlinkSync('/proc/self/ns/net'));
    const id2 = 'b'.repeat(64);
    const r2 = hookRun(creating(gpid, 'fwd', id2), args, {});
    assert.equal(r2.code, 0, r2.stderr);
    const vex = pairs().find((p) => p.mode === 'fwd')!.vex.name;
    const exited = new Promise((res) => workload.once('exit', res));
    net.destroy(); // the workload killed, its netns deleted: eth0 and vin go with it, vex stays
    await exited;
    const s2 = hookRun(stopped(id2), args, {});
    assert.equal(s2.code, 0, s2.stderr);
    assert.match(s2.stdout, new RegExp(`the container is gone; removed pair id \\d+, ${vex} \\(service\\)`));
    assert.ok(!T.t.ip(T.t.enforcer, 'link', 'show').includes(vex), `${vex} removed`);
    assert.equal(T.run(['show', '--check']).code, 0, 'show --check clean');
    assert.deepEqual(records(), [`${ID}.json`]);
    const s1 = hookRun(stopped(), args, {});
    assert.equal(s1.code, 0, s1.stderr);
    assert.deepEqual(pairs(), []);
  });

  it('bad stdin: one line and the exit code of its class, nothing changed; a stage where the workload runs is refused', function () {
    T = makeTopology({ containers: 1 });
    const pid = workloadPid(T.t, T.c[0]!);
    const cases: Array<[string, number, RegExp]> = [
      ['', 2, /^neuv-bpf: the OCI state on stdin is empty/],
      ['x'.repeat((1 << 20) + 1), 2, /the OCI state on stdin is larger than 1 MiB/],
      [state({ id: '../x', status: 'creating', pid }), 2, /id "\.\.\/x" is not a container id/],
      [state({ status: 'creating', pid: 4194303 }), 4, /no process with pid 4194303/],
      [creating(pid, 'warp'), 2, /annotation io\.neuv-bpf\.mode="warp" of container c0ffee0+: expected fwd, tap, bypass, drop, none/],
      [state({ status: 'creating', pid, annotations: { 'io.neuv-bpf.port': 'a/b' } }), 2, /annotation io\.neuv-bpf\.port "a\/b" contains/],
    ];
    for (const [input, code, re] of cases) {
      const r = hookRun(input, [], {});
      assert.equal(r.code, code, `${input.slice(0, 60)}: ${r.stderr}`);
      assert.match(oneErrorLine(r), re);
    }
    assert.deepEqual(pairs(), []);
    assert.deepEqual(records(), []);
  });

  it('a failing intercept: fail-closed exits with its code, rolled back; fail-open exits 0, counted, the container untouched', function () {
    T = makeTopology({ containers: 1 });
    const c = T.c[0]!;
    const pid = workloadPid(T.t, c);
    const before = containerState(T.t, c);
    const fail = { NEUV_BPF_FAULT: 'fail@intercept:before-pair' };
    const closed = hookRun(creating(pid, 'fwd'), [], fail);
    assert.equal(closed.code, 1, closed.stderr);
    assert.match(closed.stderr, /^neuv-bpf: injected failure at intercept:before-pair \(NEUV_BPF_FAULT\)\n$/m);
    assert.deepEqual(containerState(T.t, c), before);
    assert.deepEqual(pairs(), []);
    assert.deepEqual(records(), []);
    assert.equal(readFailOpenCount(T.pins).count, 0);

    const open = hookRun(creating(pid, 'fwd'), ['--on-failure', 'open'], fail);
    assert.equal(open.code, 0, open.stderr);
    assert.match(open.stderr, new RegExp(`^neuv-bpf: oci-hook: container ${ID}: NOT intercepted \\(fail-open, 1 so far\\): injected failure at intercept:before-pair `, 'm'));
    assert.deepEqual(containerState(T.t, c), before);
    assert.deepEqual(pairs(), []);
    // The set-up failing (no such enforcer netns) and an unreadable state are the same to fail-open.
    const nons = cli(['--netns', 'nbt-no-such-netns', '--bpffs', T.pins, 'oci-hook', '--on-failure', 'open'], { input: creating(pid, 'fwd') });
    assert.equal(nons.code, 0, nons.stderr);
    assert.match(nons.stderr, /NOT intercepted \(fail-open, 2 so far\): network namespace nbt-no-such-netns not found/);
    const garbage = hookRun('garbage', ['--on-failure', 'open'], {});
    assert.equal(garbage.code, 0, garbage.stderr);
    assert.match(garbage.stderr, /container \(unreadable state\): NOT intercepted \(fail-open, 3 so far\): the OCI state on stdin is not JSON/);
    const count = readFailOpenCount(T.pins);
    assert.equal(count.count, 3);
    assert.equal(count.last?.id, '(unreadable state)');
    assert.deepEqual(containerState(T.t, c), before);
  });
});
