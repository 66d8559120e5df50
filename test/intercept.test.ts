/**
 * Kernel suite for `intercept` / `release` (pullContainerPort and its
 * reverse), driving the real CLI against a private topology: a container
 * with IPv4 + IPv6 addresses, default routes and a static neighbour keeps
 * its connectivity before, during (every mode) and after, and comes back
 * identical; every step that fails is rolled back.
 */
import assert from 'node:assert/strict';
import { cli, requireKernel, leakChecks, TIME_SCALE } from './helpers';
import { containerState, linkNames, makeTopology, StubDp, workloadPid, TestTopology } from './topology';
import { HOST_IP4, HOST_IP6, ping, runProbes, startServer } from '../harness/topology';
import { makeNetns, nsView, veth } from '../harness/net';
import { netnsPath } from '../src/netns';
import type { AddrJson } from '../src/intercept';
import {
  INTERCEPT_STEPS, RELEASE_STEPS, InterceptResult, NsRunner, inodeTag, neighArgs, portNames, routeArgs, tempMac,
} from '../src/intercept';
import { targetFrom } from '../src/cli/intercept';

/** Enforcer netns links when nothing is intercepted. */
const IDLE_ENFORCER = ['lo', 'vbr-neuv', 'vth-neuv'];

function pairsShown(tt: TestTopology): Array<{ id: number; mode: string; vin: { name: string } | null }> {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: Array<{ id: number; mode: string; vin: { name: string } | null }> }).pairs;
}

/** IPv4 and IPv6 to the host bridge and to the other container. */
function connectivity(tt: TestTopology, what: string): void {
  const [c1, c2] = tt.c;
  assert.equal(ping(tt.t, c1!.ns, HOST_IP4, 2), 2, `${what}: ping c1 -> host`);
  assert.equal(ping(tt.t, c1!.ns, HOST_IP6, 2), 2, `${what}: ping6 c1 -> host`);
  assert.equal(ping(tt.t, c1!.ns, c2!.ip4, 2), 2, `${what}: ping c1 -> c2`);
}

describe('intercept: names and iproute2 arguments (unit)', function () {
  it('names: vex/vin<tag>-<port>, 15 bytes at most; netns tags never look like a pid', function () {
    assert.deepEqual(portNames((4242).toString(16), 'eth0'), { vex: 'vex1092-eth0', vin: 'vin1092-eth0' });
    assert.deepEqual(portNames('3fffff', 'eth1'), { vex: 'vex3fffff-eth1', vin: 'vin3fffff-eth1' });
    assert.equal(portNames('3fffff', 'eth10').vex, 'vex3fffff-eth10');
    assert.throws(() => portNames('3fffff', 'eth100'), /too long/);
    assert.equal(inodeTag(0xf00001d4), 'n1d4');
    assert.match(inodeTag(0xeffffff9), /^n[0-9a-f]+$/);
  });

  it('temporary MACs are locally administered unicast', function () {
    for (let i = 0; i < 50; i++) {
      const b0 = parseInt(tempMac().slice(0, 2), 16);
      assert.equal(b0 & 0x03, 0x02);
    }
  });

  it('--pid xor --container-netns', function () {
    assert.deepEqual(targetFrom({ pid: '42' }), { pid: 42 });
    assert.deepEqual(targetFrom({ containerNetns: 'x' }), { netns: 'x' });
    assert.throws(() => targetFrom({}), /exactly one/);
    assert.throws(() => targetFrom({ pid: '1', containerNetns: 'x' }), /exactly one/);
    assert.throws(() => targetFrom({ pid: '-3' }), /--pid "-3" is out of range \(expected 1\.\.4194304\)/);
  });

  it('routes: type, table, proto, scope, metric, src, pref, metrics, onlink, multipath; the port renamed', function () {
    assert.deepEqual(routeArgs(4, { dst: 'default', gateway: '10.0.0.1', dev: 'eth0', flags: ['onlink'] }, 'eth0', 'eth0'),
      ['-4', 'route', 'replace', 'default', 'via', '10.0.0.1', 'dev', 'eth0', 'onlink']);
    assert.deepEqual(routeArgs(4, { dst: '10.5.0.0/16', gateway: '10.0.0.1', dev: 'eth0', table: '100', protocol: 'static', metric: 5, prefsrc: '10.0.0.2', metrics: [{ mtu: 1400 }] }, 'new0', 'eth0'),
      ['-4', 'route', 'replace', '10.5.0.0/16', 'table', '100', 'proto', 'static', 'metric', '5', 'src', '10.0.0.2', 'mtu', '1400', 'via', '10.0.0.1', 'dev', 'new0']);
    assert.deepEqual(routeArgs(6, { dst: 'default', gateway: 'fd00::1', dev: 'eth0', metric: 1024, pref: 'medium' }, 'eth0', 'eth0'),
      ['-6', 'route', 'replace', 'default', 'metric', '1024', 'pref', 'medium', 'via', 'fd00::1', 'dev', 'eth0']);
    assert.deepEqual(routeArgs(4, { type: 'blackhole', dst: '10.9.0.0/16', dev: 'eth0' }, 'eth0', 'eth0'),
      ['-4', 'route', 'replace', 'blackhole', '10.9.0.0/16', 'dev', 'eth0']);
    assert.deepEqual(routeArgs(4, { dst: '10.6.0.0/16', nexthops: [{ gateway: '10.0.0.1', dev: 'eth0', weight: 1 }, { gateway: '10.1.0.1', dev: 'eth1', weight: 2 }] }, 'eth0', 'eth0'),
      ['-4', 'route', 'replace', '10.6.0.0/16', 'nexthop', 'via', '10.0.0.1', 'dev', 'eth0', 'weight', '1', 'nexthop', 'via', '10.1.0.1', 'dev', 'eth1', 'weight', '2']);
    assert.deepEqual(routeArgs(4, { dst: '10.7.0.0/16', via: { family: 'inet6', host: 'fe80::1' }, dev: 'eth0' }, 'eth0', 'eth0'),
      ['-4', 'route', 'replace', '10.7.0.0/16', 'via', 'inet6', 'fe80::1', 'dev', 'eth0']);
  });

  it('neighbours: static entries as they were, learnt ones as STALE', function () {
    assert.deepEqual(neighArgs({ dst: '10.0.0.9', lladdr: '02:00:00:00:00:09', state: ['PERMANENT'] }, 'eth0'),
      ['neigh', 'replace', '10.0.0.9', 'lladdr', '02:00:00:00:00:09', 'nud', 'permanent', 'dev', 'eth0']);
    assert.deepEqual(neighArgs({ dst: 'fe80::1', lladdr: '02:00:00:00:00:01', state: ['REACHABLE'], router: true }, 'eth0'),
      ['neigh', 'replace', 'fe80::1', 'lladdr', '02:00:00:00:00:01', 'nud', 'stale', 'router', 'dev', 'eth0']);
    assert.equal(neighArgs({ dst: '10.0.0.8', lladdr: '02:00:00:00:00:08', state: ['NOARP'] }, 'eth0')[6], 'noarp');
  });
});

describe('intercept / release (kernel)', function () {
  this.timeout(120000);
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('in-process netlink (NsRunner): a link read as `ip -d -j link` shows it; addresses with peer, broadcast, label, lifetimes and flags written and read as iproute2 does', async function () {
    const ns = makeNetns('nbtnl');
    const r = new NsRunner(netnsPath(ns.name), `netns ${ns.name}`);
    await r.addVeth({ name: 'nbta', mac: '02:00:00:00:aa:01', mtu: 1400, txqlen: 500, numTxQueues: 2, numRxQueues: 2 }, { name: 'nbtb', mtu: 1400 });
    await r.set('nbta', { alias: 'a b', addrGenMode: 'none', up: true });
    const want = JSON.parse(ns.ip('-d', '-j', 'link', 'show', 'dev', 'nbta'))[0] as Record<string, unknown>;
    const l = (await r.link('nbta'))!;
    // link_index only for a peer in another netns, as ip shows it (release tells an intercepting veth by it).
    for (const k of ['ifindex', 'ifname', 'mtu', 'address', 'txqlen', 'ifalias', 'link_index', 'inet6_addr_gen_mode', 'num_tx_queues', 'num_rx_queues'] as const) {
      assert.deepEqual(l[k], want[k], k);
    }
    assert.equal(l.link_index, undefined);
    assert.deepEqual((await r.links()).find((x) => x.ifname === 'nbta')?.link_index, undefined);
    assert.equal(l.linkinfo?.info_kind, 'veth');
    assert.ok(l.flags?.includes('UP'));
    assert.equal(await r.link('nbtnone'), undefined);
    const xs: AddrJson[] = [
      { family: 'inet', local: '10.0.0.2', prefixlen: 24, broadcast: '10.0.0.255', scope: 'global', label: 'nbta:1' },
      { family: 'inet', local: '10.1.0.2', address: '10.1.0.1', prefixlen: 32, scope: 'global' },
      { family: 'inet6', local: 'fd00::2', prefixlen: 64, scope: 'global', noprefixroute: true, valid_life_time: 300, preferred_life_time: 100 },
      { family: 'inet6', local: 'fe80::1:2', prefixlen: 64, scope: 'link' },
    ];
    await r.addAddrs('nbta', xs);
    const shown = (JSON.parse(ns.ip('-j', 'addr', 'show', 'dev', 'nbta'))[0] as { addr_info: AddrJson[] }).addr_info;
    const mine = await r.addrs('nbta');
    const key = (a: AddrJson) => `${a.local}/${a.prefixlen}`;
    assert.deepEqual(mine.map(key).sort(), shown.map(key).sort());
    for (const a of shown) {
      const m = mine.find((x) => key(x) === key(a))!;
      for (const k of ['family', 'address', 'broadcast', 'scope', 'label', 'noprefixroute', 'nodad', 'secondary', 'temporary'] as const) assert.deepEqual(m[k], a[k], `${key(a)} ${k}`);
      if (a.valid_life_time !== 4294967295) assert.ok(Math.abs(m.valid_life_time! - a.valid_life_time!) <= 2, `${key(a)} lifetime`);
    }
    for (const x of xs) assert.ok(shown.some((a) => key(a) === key(x) && (x.address === undefined || a.address === x.address)), key(x));
    await r.flush('nbta');
    assert.deepEqual(await r.addrs('nbta'), []);
    await r.set('nbta', { name: 'nbtc', mac: '02:00:00:00:aa:02', up: false });
    assert.equal((await r.link('nbtc'))?.address, '02:00:00:00:aa:02');
    await r.del('nbtc');
    assert.equal(await r.link('nbtb'), undefined, 'its peer went with it');
    await assert.rejects(r.set('nbtc', { up: true }), /cannot find device "nbtc"/);
  });

  it('by --pid: connectivity before, during every mode and after; the container comes back identical', async function () {
    const tt = makeTopology();
    const [c1, c2] = tt.c as [NonNullable<(typeof tt.c)[0]>, NonNullable<(typeof tt.c)[0]>];
    await StubDp.start(tt.t.enforcer, { dropPorts: [9999] });
    await startServer(tt.t, c2.ns);
    const before = containerState(tt.t, c1);
    connectivity(tt, 'before');

    const pid = workloadPid(tt.t, c1);
    const r = tt.run(['intercept', '--pid', String(pid), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;
    const tag = pid.toString(16);
    assert.equal(res.vex, `vex${tag}-eth0`);
    assert.equal(res.vin, `vin${tag}-eth0`);
    assert.equal(res.mac, c1.mac);
    assert.equal(res.pair.mode, 'bypass');
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), [...IDLE_ENFORCER, res.vex, res.vin].sort());
    // From inside, the new eth0 is the old one: same ifindex, MAC, MTU, addresses, routes, neighbours.
    assert.deepEqual(containerState(tt.t, c1), before, 'container state while intercepted');
    const offload = tt.t.exec(c1.ns, 'ethtool', ['-k', 'eth0']);
    assert.match(offload, /tx-checksumming: off/);

    for (const mode of ['bypass', 'tap', 'fwd', 'bypass']) {
      const m = tt.run(['pair', 'mode', '--in', res.vin, mode]);
      assert.equal(m.code, 0, m.stderr);
      connectivity(tt, mode);
      const [udp, tcp6] = await runProbes(c1.ns, [
        { t: 'udp', host: c2.ip4, port: 8080, count: 5 },
        { t: 'tcp', host: c2.ip6, port: 8080 },
      ]);
      assert.equal(udp!.received, 5, `${mode}: udp c1 -> c2`);
      assert.equal(udp!.duplicates, 0, `${mode}: no duplicates`);
      assert.ok(tcp6!.ok, `${mode}: tcp6 c1 -> c2`);
    }
    const [p] = pairsShown(tt);
    assert.equal(p?.vin?.name, res.vin);

    const rel = tt.run(['release', '--pid', String(pid)]);
    assert.equal(rel.code, 0, rel.stderr);
    assert.match(rel.stdout, new RegExp(`released eth0 of pid ${pid}: ${res.vex} is eth0 again`));
    assert.deepEqual(containerState(tt.t, c1), before, 'container state after release');
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER);
    assert.deepEqual(pairsShown(tt), []);
    connectivity(tt, 'after');
  });

  it('fwd with nothing reading vth-neuv (no DP) warns on stderr and goes on (exit 0); with a DP bound to it, no warning', async function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const warning = /^neuv-bpf: warning: nothing reads vth-neuv \(no packet socket bound to it: no DP runs\); a pair in fwd gets none of its workload's IPv4 unicast through until one does$/;
    const r = tt.run(['intercept', '--container-netns', c1.path, '--mode', 'fwd', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr.trim(), warning);
    const vin = (JSON.parse(r.stdout) as InterceptResult).vin;
    const mode = (m: string) => tt.run(['pair', 'mode', '--in', vin, m]);
    const b = mode('bypass');
    assert.deepEqual([b.code, b.stderr], [0, ''], 'bypass: no warning');
    const f = mode('fwd');
    assert.equal(f.code, 0, f.stderr);
    assert.match(f.stderr.trim(), warning);
    assert.match(f.stdout, /bypass -> fwd/);
    await StubDp.start(tt.t.enforcer, { dropPorts: [9999] });
    const g = mode('fwd');
    assert.deepEqual([g.code, g.stderr], [0, ''], 'a DP on vth-neuv: no warning');
    assert.equal(tt.run(['release', '--container-netns', c1.path]).code, 0);
  });

  it('by --container-netns (tag from the netns inode); release finds it by --pid through the veth peer', async function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const r = tt.run(['intercept', '--container-netns', c1.path, '--mode', 'tap', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;
    assert.match(res.vex, /^vexn[0-9a-f]+-eth0$/);
    assert.equal(res.pair.mode, 'tap');
    assert.deepEqual(containerState(tt.t, c1), before);
    connectivity(tt, 'tap, no DP');
    // A second intercept of the same container, under another name for it and in another mode, is refused.
    const pid = workloadPid(tt.t, c1);
    const again = tt.run(['intercept', '--pid', String(pid)]);
    assert.equal(again.code, 5, again.stderr);
    assert.match(again.stderr, /already intercepted|already exists/);
    const rel = tt.run(['release', '--pid', String(pid), '--json']);
    assert.equal(rel.code, 0, rel.stderr);
    assert.equal((JSON.parse(rel.stdout) as { vex: string }).vex, res.vex);
    assert.deepEqual(containerState(tt.t, c1), before);
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER);
    const rel2 = tt.run(['release', '--pid', String(pid)]);
    assert.equal(rel2.code, 4);
    assert.match(rel2.stderr, /is not intercepted/);
  });

  it('a rerun after an intercept killed at its commit point, or after one that completed, succeeds when asked the same; asked otherwise it is refused', function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const args = ['intercept', '--container-netns', c1.path, '--mode', 'tap'];
    const k = tt.run(args, { NEUV_BPF_FAULT: 'crash@intercept:before-commit' });
    assert.equal(k.code, -1, `not killed: ${k.stderr}`);
    assert.match(k.stderr, /crash point intercept:before-commit reached/);
    // The journal completes it; the rerun reports it intercepted, as a successful intercept does.
    const r = tt.run([...args, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;
    assert.match(res.recovered ?? '', /the killed intercept had completed/);
    assert.equal(res.pair.mode, 'tap');
    assert.equal(res.pair.created, false);
    assert.deepEqual(containerState(tt.t, c1), before);
    connectivity(tt, 'tap after the completed intercept');
    // Again: the same line as the first success, without the recovery.
    const again = tt.run(args);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, new RegExp(`^intercepted eth0 of netns ${c1.path}: ${res.vex} \\(original port\\) / ${res.vin}, MAC ${res.mac}, id ${res.pair.id} .*mode tap;`));
    assert.equal(again.stdout.trim().split('\n').length, 1, again.stdout);
    // Asked otherwise: one line, exit 5, nothing changed.
    for (const [extra, why] of [[['--mode', 'fwd'], /mode tap, not fwd/], [['--mode', 'tap', '--ipv6-to-dp'], /IPv6 not to the DP/]] as const) {
      const other = tt.run(['intercept', '--container-netns', c1.path, ...extra]);
      assert.equal(other.code, 5, other.stderr);
      assert.match(other.stderr, /already intercepted/);
      assert.match(other.stderr, why);
      assert.equal(other.stderr.trim().split('\n').length, 1, other.stderr);
    }
    assert.deepEqual(pairsShown(tt).map((p) => [p.id, p.mode]), [[res.pair.id, 'tap']]);
    const rel = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(rel.code, 0, rel.stderr);
    assert.deepEqual(containerState(tt.t, c1), before);
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER);
  });

  it('refuses bad requests with one line and a distinct exit code, changing nothing', function () {
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    const pid = workloadPid(tt.t, c1);
    // A name intercept needs is taken in the enforcer netns.
    const enf = nsView(tt.t.enforcer);
    veth({ ns: enf, name: `vin${pid.toString(16)}-eth0` }, { ns: enf, name: 'nbtpeer' }, { up: false });
    const cases: Array<[string[], number, RegExp, NodeJS.ProcessEnv?]> = [
      [['intercept', '--pid', String(pid)], 5, /vin[0-9a-f]+-eth0 already exists/],
      [['intercept', '--pid', '4194303'], 4, /no process with pid 4194303/],
      [['intercept', '--pid', '2147483646'], 2, /--pid "2147483646" is out of range \(expected 1\.\.4194304\)/],
      [['intercept', '--container-netns', 'nbt-no-such-ns'], 4, /network namespace of .* not found/],
      [['intercept', '--container-netns', c1.path, '--port', 'eth9'], 4, /interface eth9 not found/],
      [['intercept', '--container-netns', c1.path, '--port', 'averylongname'], 2, /too long/],
      [['intercept', '--container-netns', `/var/run/netns/${tt.t.enforcer}`], 2, /enforcer's own network namespace/],
      [['intercept'], 2, /exactly one of --pid PID or --container-netns/],
      [['intercept', '--pid', String(pid), '--container-netns', c1.path], 2, /exactly one of/],
      [['intercept', '--container-netns', c1.path, '--mode', 'sideways'], 2, /mode/],
      [['release', '--container-netns', c1.path], 4, /is not intercepted/],
    ];
    for (const [args, code, re] of cases) {
      const r = tt.run(args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
    }
    // The enforcer netns does not exist; the datapath is not loaded in it.
    const gone = cli(['--netns', 'nbt-gone-enf', '--bpffs', tt.pins, 'intercept', '--container-netns', c1.path]);
    assert.equal(gone.code, 4, gone.stderr);
    assert.match(gone.stderr, /network namespace nbt-gone-enf not found/);
    const r1 = makeTopology({ load: false });
    const nl = r1.run(['intercept', '--container-netns', r1.c[0]!.path]);
    assert.equal(nl.code, 4, nl.stderr);
    assert.match(nl.stderr, /not loaded/);
    assert.deepEqual(containerState(tt.t, c1), before);
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), [...IDLE_ENFORCER, 'nbtpeer', `vin${pid.toString(16)}-eth0`].sort());
    assert.deepEqual(pairsShown(tt), []);
  });

  it('rolls back every step of intercept (NEUV_BPF_FAULT=fail@intercept:before-<step>)', function () {
    // 16 failed intercepts, each checked: ~50 s on a quiet host, past the default 120 s x 4 under the VM's emulation.
    this.timeout(300000 * TIME_SCALE);
    const tt = makeTopology();
    const c1 = tt.c[0]!;
    const before = containerState(tt.t, c1);
    for (const step of INTERCEPT_STEPS) {
      const r = tt.run(['intercept', '--container-netns', c1.path, '--mode', 'fwd'], { NEUV_BPF_FAULT: `fail@intercept:before-${step}` });
      assert.equal(r.code, 1, `${step}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`injected failure at intercept:before-${step} `));
      assert.deepEqual(containerState(tt.t, c1), before, `container after a failure at ${step}`);
      assert.deepEqual(linkNames(tt.t, tt.t.enforcer), IDLE_ENFORCER, `enforcer after a failure at ${step}`);
      assert.deepEqual(pairsShown(tt), [], `pairs after a failure at ${step}`);
    }
    connectivity(tt, 'after every rollback');
  });

  it('rolls back every step of release (NEUV_BPF_FAULT=fail@release:before-<step>)', async function () {
    // 12 failed releases, each checked with traffic: past the default 120 s at a load of 19 (as intercept's above).
    this.timeout(300000 * TIME_SCALE);
    const tt = makeTopology();
    const [c1, c2] = tt.c as [NonNullable<(typeof tt.c)[0]>, NonNullable<(typeof tt.c)[0]>];
    await StubDp.start(tt.t.enforcer, { dropPorts: [9999] });
    await startServer(tt.t, c2.ns);
    const before = containerState(tt.t, c1);
    const r = tt.run(['intercept', '--container-netns', c1.path, '--mode', 'fwd', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const res = JSON.parse(r.stdout) as InterceptResult;
    const during = containerState(tt.t, c1);
    for (const step of RELEASE_STEPS) {
      const f = tt.run(['release', '--container-netns', c1.path], { NEUV_BPF_FAULT: `fail@release:before-${step}` });
      assert.equal(f.code, 1, `${step}: ${f.stderr}`);
      assert.match(f.stderr, new RegExp(`injected failure at release:before-${step} `));
      assert.deepEqual(containerState(tt.t, c1), during, `container after a failed release at ${step}`);
      assert.deepEqual(linkNames(tt.t, tt.t.enforcer), [...IDLE_ENFORCER, res.vex, res.vin].sort(), `enforcer after ${step}`);
      const ps = pairsShown(tt);
      assert.equal(ps.length, 1, `pair after ${step}`);
      assert.equal(ps[0]!.id, res.pair.id);
      assert.equal(ps[0]!.mode, 'fwd');
      // Still intercepted and working, through the DP.
      const [udp] = await runProbes(c1.ns, [{ t: 'udp', host: c2.ip4, port: 8080, count: 2 }]);
      assert.equal(udp!.received, 2, `traffic after a failed release at ${step}`);
    }
    const ok = tt.run(['release', '--container-netns', c1.path]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.deepEqual(containerState(tt.t, c1), before);
  });
});
