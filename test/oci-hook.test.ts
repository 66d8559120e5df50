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
import * as os from 'node:os';
import * as path from 'node:path';
import { CliResult, cli, leakChecks, makeNet, makePinRoot, oneErrorLine, onCleanup, requireKernel, uniqueName } from './helpers';
import { containerState, makeTopology, nsView, StubDp, TestTopology, waitFor, workloadPid } from './topology';
import { serve } from './service-fixture';
import { Podman, burstPeer, hookTimes, hooksDir, noHooks, podmanForSuite } from './podman';
import { Net, veth } from '../harness/net';
import { lockDirFile } from '../src/lock';
import { journalDir } from '../src/intercept/journal';
import { readFailOpenCount } from '../src/hook';
import { ServiceError } from '../src/service/client';

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
    assert.match(again.stdout, /not intercepted by the hook or the watcher, nothing to release/);
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

// ================================================================ with podman

const PEER_PORT = 9999; // the stub DP denies it; below any ephemeral port, so its kind is udp/9999

describe('oci-hook with podman: intercepted before the first packet (kernel)', function () {
  this.timeout(1800000);
  let pm: Podman | undefined;
  let gw = '';

  before(function () {
    requireKernel(this);
    pm = podmanForSuite(this, 'oci-hook podman suite');
    // A first container brings the network's bridge up with the gateway address the peer binds.
    pm.start(uniqueName('nbpc'));
    gw = `${pm.subnet4}.1`;
  });
  // Each test's cleanups run after it (leakChecks); podman's things once all ran.
  after(() => pm?.tearDown());
  leakChecks();

  interface Node {
    net: Net;
    enf: string;
    pins: string;
    c: (args: string[]) => CliResult;
  }

  /** An enforcer netns with the datapath loaded, and the stub DP denying PEER_PORT. */
  async function node(): Promise<Node & { stub: StubDp }> {
    const net = makeNet();
    const enf = net.ns(uniqueName('nbt')).name;
    const pins = makePinRoot();
    const c = (args: string[]) => cli(['--netns', enf, '--bpffs', pins, ...args]);
    const l = c(['load']);
    assert.equal(l.code, 0, l.stderr);
    const stub = await StubDp.start(enf, { dropPorts: [PEER_PORT] });
    return { net, enf, pins, c, stub };
  }

  /** podman run --rm of udp-burst to the peer. */
  function job(name: string, o: { hooks: string; mode?: string; count: number; intervalUs: number }) {
    return pm!.burst(name, { ...o, dst: gw, port: PEER_PORT });
  }

  /** Nothing of the containers is left on the node: no pair, port, hook or journal record; show --check clean. */
  function nothingLeft(n: Node): void {
    assert.deepEqual((JSON.parse(n.c(['show', '--json']).stdout) as { pairs: unknown[] }).pairs, [], 'no pair');
    assert.deepEqual(nsView(n.enf).ip('-br', 'link', 'show').split('\n').filter(Boolean).map((l) => l.split(/[ @]/)[0]).sort(), ['lo', 'vbr-neuv', 'vth-neuv']);
    for (const d of [lockDirFile(n.pins, 'hooks'), journalDir(n.pins)]) assert.deepEqual(fs.existsSync(d) ? fs.readdirSync(d) : [], [], d);
    const chk = n.c(['show', '--check']);
    assert.equal(chk.code, 0, chk.stdout + chk.stderr);
  }

  it('a container sending UDP from its first instruction to a port the DP denies: with the hook none reaches the peer, the DP saw every one from packet 1 (fwd); in drop none leaves; released, nothing left', async function () {
    const n = await node();
    const p = await burstPeer(gw, PEER_PORT);
    const hooks = hooksDir(n, ['--default-mode', 'bypass']);
    const drops0 = (JSON.parse(n.c(['stats', '--json']).stdout) as { global: Record<string, number> }).global.drop_mode ?? 0;
    for (const mode of ['fwd', 'drop']) {
      const r = await job(uniqueName('nbpc'), { hooks, mode, count: 50, intervalUs: 1000 });
      assert.equal(r.code, 0, `podman run (${mode}): ${r.stderr}`);
      assert.deepEqual(p.got, [], `${mode}: no datagram reached the peer`);
      nothingLeft(n);
    }
    const udp = StubDp.frames(await n.stub.counts(), `udp/${PEER_PORT}`);
    assert.deepEqual(udp, { frames: 50, dropped: 50 }, 'fwd: the DP saw the 50 datagrams, the first included, and denied them');
    const drops = (JSON.parse(n.c(['stats', '--json']).stdout) as { global: Record<string, number> }).global.drop_mode ?? 0;
    // In drop even the ARP request for the gateway is dropped: the datagrams never leave the container's stack.
    assert.ok(drops - drops0 >= 1, `drop: the datapath dropped its first frames, the ARP requests (drop_mode +${drops - drops0})`);
  });

  it('event-driven interception for comparison (podman events, then intercept through the service, NeuVector\'s way): the first packets get through', async function () {
    const n = await node();
    const p = await burstPeer(gw, PEER_PORT);
    const s = await serve(n.enf, n.pins);
    const empty = noHooks();
    // The watcher: every start event, then the pid (podman inspect), then POST /v1/intercept.
    const ev = pm!.spawn(['events', '--filter', 'event=start', '--format', '{{.Name}}']);
    onCleanup(() => ev.kill('SIGKILL'));
    const seen = new Map<string, number>();
    const done = new Map<string, Promise<{ at: number; ino?: number; error?: string }>>();
    let buf = '';
    ev.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const name = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        seen.set(name, Date.now());
        done.set(name, (async () => {
          const r = await pm!.runAsync(['inspect', '--format', '{{.State.Pid}}', name]);
          const pid = Number(r.stdout.trim());
          let ino: number | undefined;
          try {
            ino = fs.statSync(`/proc/${pid}/ns/net`).ino;
            await s.client.intercept({ pid }, { mode: 'fwd' });
            return { at: Date.now(), ino };
          } catch (e) {
            // Too late (the job is gone): its netns may have vanished mid-intercept; the release below cleans up.
            return { at: Date.now(), ino, error: (e as Error).message };
          }
        })());
      }
    });
    // The watcher is ready once it sees a container start.
    const probe = uniqueName('nbpc');
    const pr = await job(probe, { hooks: empty, count: 1, intervalUs: 0 });
    assert.equal(pr.code, 0, pr.stderr);
    await waitFor('podman events to report a start', () => seen.has(probe) && done.has(probe), 60000);
    const release = async (ino: number | undefined) => {
      if (ino) await s.client.release({ netnsInode: ino }).catch((e: ServiceError) => assert.equal(e.status, 404, e.message));
    };
    await release((await done.get(probe)!).ino);
    p.got.length = 0;

    const figures: string[] = [];
    for (const [count, what] of [[50, 'a 50 ms job'], [2000, 'a 2 s job']] as const) {
      const name = uniqueName('nbpc');
      const r = await job(name, { hooks: empty, count, intervalUs: 1000 });
      assert.equal(r.code, 0, r.stderr);
      await waitFor('the watcher to have acted', () => done.has(name), 60000);
      const d = await done.get(name)!;
      const got = p.got.splice(0);
      assert.ok(got.length >= 1, `${what}: the first datagrams reach the peer before the interception`);
      const t0 = Number(got[0]!.t0) / 1e6;
      const last = Number(got.reduce((m, g) => (g.t > m ? g.t : m), 0n)) / 1e6;
      figures.push(`${what}: ${got.length} of ${count} reached the peer, for ${(last - t0).toFixed(0)} ms (first ${got[0]!.seq}); start event +${(seen.get(name)! - t0).toFixed(0)} ms, ` +
        (d.error ? `intercept failed (${d.error.slice(0, 60)})` : `intercepted +${(d.at - t0).toFixed(0)} ms`));
      await release(d.ino);
    }
    // eslint-disable-next-line no-console
    console.log(figures.map((f) => `      events: ${f}`).join('\n'));
    nothingLeft(n);
  });

  const JOBS = process.env.NEUV_BPF_SOAK === '1' ? 100 : 20;
  it(`${JOBS} short-lived jobs started side by side with the hook (through the service): each intercepted before its first packet, released, nothing left`, async function () {
    const n = await node();
    const p = await burstPeer(gw, PEER_PORT);
    await serve(n.enf, n.pins);
    const times = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-times-')), 'hooks.jsonl');
    onCleanup(() => fs.rmSync(path.dirname(times), { recursive: true, force: true }));
    const hooks = hooksDir(n, ['--default-mode', 'fwd'], [], { times });
    const load = os.loadavg()[0]!;
    const t0 = Date.now();
    const rs = await Promise.all(Array.from({ length: JOBS }, () => job(uniqueName('nbpc'), { hooks, count: 20, intervalUs: 1000 })));
    const wall = Date.now() - t0;
    const ht = hookTimes(times);
    const fmt = (stage: string) => {
      const h = ht[stage];
      return h ? `p50 ${(h.p50 / 1000).toFixed(1)} s, p99 ${(h.p99 / 1000).toFixed(1)} s, max ${(h.max / 1000).toFixed(1)} s (${h.n} hooks, ${h.failed} failed)` : 'none ran';
    };
    const failed = rs.flatMap((r, i) => (r.code === 0 ? [] : [`job ${i}: ${r.stderr.trim().split('\n').at(-1)}`]));
    // eslint-disable-next-line no-console
    console.log(`      ${JOBS} jobs with the hook: ${(wall / 1000).toFixed(1)} s wall, load average ${load.toFixed(1)} to ${os.loadavg()[0]!.toFixed(1)}, ${failed.length} failed; ` +
      `each hook (Node.js start-up included): createRuntime ${fmt('createRuntime')}; poststop ${fmt('poststop')}`);
    assert.deepEqual(failed, [], 'every job exits 0');
    assert.deepEqual(p.got, [], 'no datagram of any job reached the peer');
    assert.deepEqual(StubDp.frames(await n.stub.counts(), `udp/${PEER_PORT}`), { frames: JOBS * 20, dropped: JOBS * 20 }, 'the DP saw every datagram of every job');
    nothingLeft(n);
    for (const stage of ['createRuntime', 'poststop']) {
      assert.equal(ht[stage]?.n, JOBS, `${stage}: one hook per job`);
      assert.equal(ht[stage]?.failed, 0, `${stage}: every hook exited 0`);
    }
  });

  it('a failing hook: fail-closed, the container does not start; fail-open, it starts unintercepted and is counted', async function () {
    const n = await node();
    const p = await burstPeer(gw, PEER_PORT);
    const fail = ['NEUV_BPF_FAULT=fail@intercept:before-pair'];
    const closed = await job(uniqueName('nbpc'), { hooks: hooksDir(n, ['--on-failure', 'closed'], fail), mode: 'fwd', count: 20, intervalUs: 1000 });
    assert.notEqual(closed.code, 0, 'podman run fails');
    assert.match(closed.stderr, /hook/i, closed.stderr);
    assert.deepEqual(p.got, [], 'the container never ran');
    nothingLeft(n);
    assert.equal(readFailOpenCount(n.pins).count, 0);

    const open = await job(uniqueName('nbpc'), { hooks: hooksDir(n, ['--on-failure', 'open'], fail), mode: 'fwd', count: 20, intervalUs: 1000 });
    assert.equal(open.code, 0, open.stderr);
    assert.equal(p.got.length, 20, 'it ran, unintercepted: every datagram reached the peer');
    const count = readFailOpenCount(n.pins);
    assert.equal(count.count, 1);
    assert.match(count.last!.error, /injected failure at intercept:before-pair/);
    nothingLeft(n);
  });
});
