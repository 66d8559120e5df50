/**
 * Kernel suite with real containers (docs/containers.md): rootful podman
 * (test/podman.ts: private storage, an image imported offline from
 * build/containers/rootfs.tar, its own IPv4 + IPv6 bridge network),
 * containers running a TCP/UDP echo server, intercepted by the pid podman
 * reports, traffic over IPv4 and IPv6 in every mode, released; then
 * podman stop/start/rm behave as without us. A container stopped while
 * intercepted: what show --check says, and repair cleaning up. Ten
 * containers intercepted and released concurrently.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { CliResult, cli, cliSpawn, makeNetns, makePinRoot, onCleanup, requireKernel, sh, uniqueName, leakChecks } from './helpers';
import { ContainerNs, StubDp, Topology, containerState, linkNames } from './topology';
import { runProbes } from '../harness/topology';
import { InterceptResult } from '../src/intercept';
import { Podman, iptArgs, podmanForSuite } from './podman';

const IDLE_ENFORCER = ['lo', 'vbr-neuv', 'vth-neuv'];

/** The Topology calls the shared helpers use (ip -n, exec, spawn in a netns), for podman's namespaces. */
function topologyOf(enforcer: string): Topology {
  return {
    enforcer,
    ip: (ns: string, ...args: string[]) => sh('ip', ['-n', ns, ...args]),
    exec: (ns: string, cmd: string, args: string[], opts?: { allowFail?: boolean }) => sh('ip', ['netns', 'exec', ns, cmd, ...args], opts),
    spawnIn: (ns: string, cmd: string, args: string[]) => {
      const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      c.on('error', () => undefined);
      onCleanup(() => c.kill('SIGKILL'));
      return c;
    },
  } as unknown as Topology;
}

interface Ctr {
  name: string;
  pid: number;
  /** podman's netns name under /run/netns. */
  ns: string;
  ip4: string;
  ip6: string;
}

function cliAsync(args: string[]): Promise<CliResult> {
  const child = cliSpawn(args);
  onCleanup(() => child.kill('SIGKILL'));
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr })));
}

/** ping from this (the host's) netns: the bridge is here. */
function hostPing(to: string): boolean {
  return spawnSync('ping', ['-c', '1', '-W', '2', to], { encoding: 'utf8' }).status === 0;
}

describe('podman test helpers (unit)', function () {
  it('iptables -S lines split into arguments, quoted comments kept whole', function () {
    assert.deepEqual(iptArgs('-A FORWARD -m comment --comment "netavark firewall plugin rules" -j NETAVARK_FORWARD'),
      ['-A', 'FORWARD', '-m', 'comment', '--comment', 'netavark firewall plugin rules', '-j', 'NETAVARK_FORWARD']);
    assert.deepEqual(iptArgs('-N NETAVARK-HOSTPORT-DNAT'), ['-N', 'NETAVARK-HOSTPORT-DNAT']);
  });
});

describe('real containers: podman (kernel)', function () {
  this.timeout(1800000); // a busy 2-core machine runs these 5x slower than a quiet one
  let pm: Podman | undefined;

  before(function () {
    requireKernel(this);
    pm = podmanForSuite(this, 'container suite');
  });
  // Each test's cleanups run after it (leakChecks); the image and network once all ran.
  after(() => pm?.tearDown());
  leakChecks();

  function setup(): { enf: string; t: Topology; c: (args: string[]) => CliResult; pins: string } {
    const enf = makeNetns().name;
    const pins = makePinRoot();
    const c = (args: string[]) => cli(['--netns', enf, '--bpffs', pins, ...args]);
    const l = c(['load']);
    assert.equal(l.code, 0, l.stderr);
    return { enf, t: topologyOf(enf), c, pins };
  }

  function run(name: string): Ctr {
    pm!.start(name);
    onCleanup(() => pm!.run(['rm', '-f', '-t', '0', name], { allowFail: true }));
    const i = pm!.inspect(name);
    assert.ok(i.ip4 && i.ip6, `${name} has IPv4 and IPv6 addresses: ${JSON.stringify(i)}`);
    return { name, pid: i.pid, ns: path.basename(i.sandbox), ip4: i.ip4, ip6: i.ip6 };
  }

  function refresh(x: Ctr): Ctr {
    const i = pm!.inspect(x.name);
    return { ...x, pid: i.pid, ns: path.basename(i.sandbox), ip4: i.ip4, ip6: i.ip6 };
  }

  const state = (t: Topology, x: Ctr) => containerState(t, { ns: x.ns } as ContainerNs);

  /** TCP and UDP echo over IPv4 and IPv6 from one container to another, and ping from the host. */
  async function traffic(from: Ctr, to: Ctr, what: string): Promise<void> {
    const [t4, u4, t6, u6] = await runProbes(from.ns, [
      { t: 'tcp', host: to.ip4, port: 8080, timeoutMs: 3000 },
      { t: 'udp', host: to.ip4, port: 8080, count: 5, timeoutMs: 2000 },
      { t: 'tcp', host: to.ip6, port: 8080, timeoutMs: 3000 },
      { t: 'udp', host: to.ip6, port: 8080, count: 5, timeoutMs: 2000 },
    ]);
    assert.ok(t4!.ok, `${what}: tcp ${from.name} -> ${to.name} ${to.ip4}: ${t4!.error}`);
    assert.equal(u4!.received, 5, `${what}: udp ${from.name} -> ${to.name} ${to.ip4}`);
    assert.equal(u4!.duplicates, 0, `${what}: udp duplicates`);
    assert.ok(t6!.ok, `${what}: tcp6 ${from.name} -> ${to.name} ${to.ip6}: ${t6!.error}`);
    assert.equal(u6!.received, 5, `${what}: udp6 ${from.name} -> ${to.name}`);
    assert.ok(hostPing(to.ip4), `${what}: ping host -> ${to.ip4}`);
    assert.ok(hostPing(to.ip6), `${what}: ping host -> ${to.ip6}`);
  }

  it('intercept --pid of a podman container: identical inside, traffic in every mode, release; stop/start/rm as without us', async function () {
    const { t, c } = setup();
    const a = run(uniqueName('nbpc'));
    const b = run(uniqueName('nbpc'));
    const before = state(t, a);
    await traffic(b, a, 'before');

    const r = c(['intercept', '--pid', String(a.pid), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;
    assert.equal(res.vex, `vex${a.pid.toString(16)}-eth0`);
    assert.equal(res.ifindexKept, true);
    assert.equal(res.routes, 2, 'the IPv4 and IPv6 default routes podman set (proto static)');
    assert.deepEqual(state(t, a), before, 'the container while intercepted');

    const stub: StubDp = await StubDp.start(t.enforcer, { dropPorts: [9999] });
    for (const mode of ['bypass', 'tap', 'fwd', 'bypass']) {
      const m = c(['pair', 'mode', '--in', res.vin, mode]);
      assert.equal(m.code, 0, m.stderr);
      await traffic(b, a, mode);
      if (mode === 'fwd') {
        const n = StubDp.frames(await stub.counts(), 'tcp/8080', res.pair.ucmac);
        assert.ok(n.frames > 0, 'FWD: the echo traffic went through the DP');
      }
    }
    const rel = c(['release', '--pid', String(a.pid)]);
    assert.equal(rel.code, 0, rel.stderr);
    assert.deepEqual(state(t, a), before, 'the container after release');
    assert.deepEqual(linkNames(t, t.enforcer), IDLE_ENFORCER);
    assert.equal(c(['show', '--check']).code, 0);

    // podman stops, starts (a new netns) and removes it as if we had never been there.
    const stop = pm!.run(['stop', '-t', '0', a.name]);
    assert.doesNotMatch(stop.stderr, /error/i, 'podman stop');
    const start = pm!.run(['start', a.name]);
    assert.doesNotMatch(start.stderr, /error/i, 'podman start');
    const a2 = refresh(a);
    assert.notEqual(a2.pid, a.pid);
    await traffic(b, a2, 'after a restart');
    const rm = pm!.run(['rm', '-f', '-t', '0', a.name]);
    assert.doesNotMatch(rm.stderr, /error/i, 'podman rm');
  });

  it('a container stopped while intercepted: show --check names the stale pair and the original port left behind; it starts as usual; repair cleans up', async function () {
    const { t, c } = setup();
    const a = run(uniqueName('nbpc'));
    const b = run(uniqueName('nbpc'));
    const r = c(['intercept', '--pid', String(a.pid), '--mode', 'tap', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;

    const stop = pm!.run(['stop', '-t', '0', a.name], { allowFail: true });
    assert.equal(stop.code, 0, `podman stop of an intercepted container: ${stop.stderr}`);
    assert.doesNotMatch(stop.stderr, /error/i, 'podman stop');
    // The netns went, with the intercepting eth0 and its peer vin; the original port (vex) stays here.
    for (let t0 = Date.now(); linkNames(t, t.enforcer).includes(res.vin) && Date.now() - t0 < 10000; ) sh('sleep', ['0.1']);
    assert.deepEqual(linkNames(t, t.enforcer), [...IDLE_ENFORCER, res.vex].sort());
    const chk = c(['show', '--check', '--json']);
    assert.equal(chk.code, 1);
    const j = JSON.parse(chk.stdout) as { problems: string[]; pairs: Array<{ id: number; problems: string[] }> };
    assert.ok(j.pairs.some((p) => p.id === res.pair.id && p.problems.some((x) => /vanished/.test(x))), JSON.stringify(j.pairs));
    assert.ok(j.problems.some((x) => x.includes(`${res.vin} is gone (the container is gone); ${res.vex} is left`)), JSON.stringify(j.problems));

    const start = pm!.run(['start', a.name], { allowFail: true });
    assert.equal(start.code, 0, `podman start after an intercepted stop: ${start.stderr}`);
    const a2 = refresh(a);
    await traffic(b, a2, 'restarted, not intercepted');

    // The original port's peer is still a port of podman's bridge (podman stop said nothing): a stale one.
    const bridgePorts = () => (JSON.parse(sh('ip', ['-j', 'link', 'show', 'master', pm!.bridge])) as unknown[]).length;
    assert.equal(bridgePorts(), 3, 'the other container, the restarted one, and the stale peer of the original port');
    const rep = c(['repair']);
    assert.equal(rep.code, 0, rep.stderr + rep.stdout);
    assert.equal(bridgePorts(), 2, 'repair deleted the original port, and its peer on the bridge with it');
    assert.match(rep.stdout, new RegExp(`eth0 of pid ${a.pid}: the container (is gone|has a new network namespace); removed pair id ${res.pair.id}, ${res.vex}`));
    assert.deepEqual(linkNames(t, t.enforcer), IDLE_ENFORCER);
    assert.equal(c(['show', '--check']).code, 0);

    // The restarted container is intercepted and released like any other.
    const before = state(t, a2);
    const r2 = c(['intercept', '--pid', String(a2.pid), '--mode', 'tap']);
    assert.equal(r2.code, 0, r2.stderr);
    await traffic(b, a2, 'restarted, intercepted');
    assert.equal(c(['release', '--pid', String(a2.pid)]).code, 0);
    assert.deepEqual(state(t, a2), before);
  });

  it('ten containers intercepted concurrently, traffic to each, released concurrently', async function () {
    const { t, c, pins } = setup();
    const enfArgs = ['--netns', t.enforcer, '--bpffs', pins];
    const ctrs = Array.from({ length: 10 }, () => run(uniqueName('nbpc')));
    const probe = run(uniqueName('nbpc'));
    const befores = ctrs.map((x) => state(t, x));
    await StubDp.start(t.enforcer, { dropPorts: [9999] });
    const modes = ['bypass', 'tap', 'fwd'];
    const rs = await Promise.all(ctrs.map((x, i) => cliAsync([...enfArgs, 'intercept', '--pid', String(x.pid), '--mode', modes[i % 3]!])));
    rs.forEach((r, i) => assert.equal(r.code, 0, `intercept of ${ctrs[i]!.name}: ${r.stderr}`));
    const show = JSON.parse(c(['show', '--check', '--json']).stdout) as { consistent: boolean; pairs: unknown[] };
    assert.equal(show.consistent, true);
    assert.equal(show.pairs.length, 10);
    for (const [i, x] of ctrs.entries()) {
      assert.deepEqual(state(t, x), befores[i], `${x.name} while intercepted`);
      await traffic(probe, x, `${x.name} (${modes[i % 3]})`);
    }
    const rel = await Promise.all(ctrs.map((x) => cliAsync([...enfArgs, 'release', '--pid', String(x.pid)])));
    rel.forEach((r, i) => assert.equal(r.code, 0, `release of ${ctrs[i]!.name}: ${r.stderr}`));
    for (const [i, x] of ctrs.entries()) assert.deepEqual(state(t, x), befores[i], `${x.name} after release`);
    assert.deepEqual(linkNames(t, t.enforcer), IDLE_ENFORCER);
    assert.equal(c(['show', '--check']).code, 0);
    await traffic(probe, ctrs[0]!, 'after release');
  });
});
