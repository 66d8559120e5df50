/**
 * Kernel suite for operator mistakes (issue 24), each done for real through
 * the CLI on a topology with an intercepted container carrying traffic: a
 * command in the wrong netns (the host's) or in this one with --netns
 * forgotten, a second load with another pin root, unload with a container
 * intercepted. Each is refused with one line and its exit code, and after it
 * the container still answers and its pair is intact. unload --force
 * releases the container first: it answers through its original port.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { ExitCode } from '../src/errors';
import { netnsCookie } from '../src/bpf';
import { nameNetns } from '../src/home';
import { inNetnsAt, netnsPath } from '../src/netns';
import { Datapath } from '../src/pairs';
import { HOST_IP4, ping, startServer } from '../harness/topology';
import { InterceptResult } from '../src/intercept';
import { bpftoolJson, cli, kernelState, leakChecks, makeNetns, makePinRoot, oneErrorLine, requireKernel } from './helpers';
import { containerState, linkNames, makeTopology, StubDp, workloadPid, TestTopology } from './topology';
import { veth } from '../harness/net';
import { mapPinPath } from '../src/pins';

interface Shown {
  pairs: Array<{ id: number; mode: string; vin: { name: string; ifindex: number } | null; vex: { name: string; ifindex: number } | null; problems: string[] }>;
}

describe('safe to operate: operator mistakes on a live node (kernel)', function () {
  this.timeout(300000); // 11 commands twice over, each a CLI run: 2+ minutes at a load average of 20
  let tt: TestTopology;
  let res: InterceptResult;
  let stateBefore: Record<string, unknown>;
  let pairBefore: string;

  const c1 = () => tt.c[0]!;
  /** The pairs as show has them, without what changes on its own: counters, and program ids (a reload swaps them). */
  const pairsNow = (s: Shown) => JSON.stringify(s.pairs.map((p) => ({
    ...p, counters: undefined, vin: p.vin && { ...p.vin, progId: undefined }, vex: p.vex && { ...p.vex, progId: undefined },
  })));
  const show = (): Shown => {
    const r = tt.run(['show', '--json']);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as Shown;
  };
  /** The container answers (both ways, through the datapath) and its pair is as it was, hooks and all. */
  const intact = (what: string) => {
    assert.equal(ping(tt.t, c1().ns, HOST_IP4, 3), 3, `${what}: the container reaches the host`);
    assert.equal(ping(tt.t, tt.t.host, c1().ip4, 3), 3, `${what}: the host reaches the container`);
    const s = show();
    assert.equal(pairsNow(s), pairBefore, `${what}: the pair is unchanged`);
    const chk = tt.run(['show', '--check']);
    assert.equal(chk.code, 0, `${what}: show --check: ${chk.stdout}${chk.stderr}`);
    assert.deepEqual(containerState(tt.t, c1()), stateBefore, `${what}: the container's port`);
  };
  const refused = (r: { code: number; stderr: string; stdout: string }, code: number, re: RegExp, what: string) => {
    assert.equal(r.code, code, `${what}: exit code (stdout ${r.stdout}, stderr ${r.stderr})`);
    const line = oneErrorLine(r);
    assert.match(line, re, `${what}: ${line}`);
  };

  /** A fresh topology per test (cleanups run after each): c1 intercepted, its pair in fwd through the stub DP. */
  async function setup(): Promise<void> {
    tt = makeTopology({ containers: 2 });
    await StubDp.start(tt.t.enforcer, { dropPorts: [9999] });
    await startServer(tt.t, tt.c[1]!.ns);
    stateBefore = containerState(tt.t, c1());
    const pid = workloadPid(tt.t, c1());
    const r = tt.run(['intercept', '--pid', String(pid), '--json']);
    assert.equal(r.code, 0, r.stderr);
    res = JSON.parse(r.stdout) as InterceptResult;
    // Through the DP (fwd), so a broken hook or pair would cut it off.
    assert.equal(tt.run(['pair', 'mode', '--in', res.vin, 'fwd']).code, 0);
    pairBefore = pairsNow(show());
    intact('after intercept');
  }

  before(function () {
    requireKernel(this);
  });
  leakChecks();

  const everyCommand = (): string[][] => [
    ['repair'],
    ['show'],
    ['stats'],
    ['unload'],
    ['unload', '--force'],
    ['load'],
    ['pair', 'add', '--in', res.vin, '--ex', res.vex, '--mac', res.mac],
    ['pair', 'mode', '--in', res.vin, 'bypass'],
    ['pair', 'del', '--in', res.vin],
    ['release', '--container-netns', c1().ns],
    ['flow', 'list'],
  ];

  it('every command in another netns (the host netns) is refused: exit 7, one line naming the enforcer netns', async function () {
    await setup();
    const enf = tt.t.enforcer;
    for (const args of everyCommand()) {
      const r = cli(['--netns', tt.t.host, '--bpffs', tt.pins, ...args]);
      refused(r, ExitCode.WRONG_NETNS, new RegExp(`belongs to netns ${enf} \\(/var/run/netns/${enf}\\), not to netns ${tt.t.host} .*--netns ${enf}$`), args.join(' '));
    }
    intact('after the wrong netns');
  });

  it('every command with --netns forgotten (in the test runner netns) is refused: exit 7, --netns forgotten?', async function () {
    await setup();
    for (const args of everyCommand()) {
      const r = cli(['--bpffs', tt.pins, ...args]);
      refused(r, ExitCode.WRONG_NETNS, new RegExp(`belongs to netns ${tt.t.enforcer} .*\\(--netns forgotten\\?\\): run it there: --netns ${tt.t.enforcer}$`), args.join(' '));
    }
    intact('after --netns forgotten');
  });

  it('the Datapath API refuses outside the enforcer netns too (an embedder is protected)', async function () {
    await setup();
    assert.throws(() => Datapath.open(tt.pins), (e: Error & { code?: number }) => e.code === ExitCode.WRONG_NETNS && /belongs to netns/.test(e.message));
    assert.throws(() => Datapath.open(tt.pins, { netns: tt.t.host }), (e: Error & { code?: number }) => e.code === ExitCode.WRONG_NETNS);
    const dp = Datapath.open(tt.pins, { netns: tt.t.enforcer });
    dp.close();
  });

  it('a second load with another pin root in the same netns is refused: exit 5, naming the owner', async function () {
    await setup();
    const other = makePinRoot();
    const r = cli(['--netns', tt.t.enforcer, '--bpffs', other, 'load']);
    refused(r, ExitCode.CONFLICT, new RegExp(`vbr-neuv in this netns already runs neuv_vbr \\(program id \\d+\\) of pin root ${tt.pins}: one datapath per enforcer netns`), 'second load');
    // Nothing of it was made; the first one's pairs keep working.
    assert.equal(cli(['--netns', tt.t.enforcer, '--bpffs', other, 'show']).code, ExitCode.NOT_FOUND);
    intact('after a second load');
    // Reloading the right one in its own netns still works (in place).
    const again = tt.run(['load']);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /replaced programs in place/);
    intact('after a reload');
  });

  it('a pin root of an older version (no neuv_home): accepted only where vbr-neuv runs its program; the next load records it', function () {
    const a = makeNetns();
    const b = makeNetns();
    const pins = makePinRoot();
    const inA = (args: string[]) => cli(['--netns', a.name, '--bpffs', pins, ...args]);
    assert.equal(inA(['load']).code, 0);
    fs.rmSync(mapPinPath(pins, 'home')); // as a version before it pinned one
    for (const r of [cli(['--netns', b.name, '--bpffs', pins, 'show']), cli(['--bpffs', pins, 'repair'])]) {
      refused(r, ExitCode.WRONG_NETNS, /has no record of its netns \(loaded by an older neuv-bpf\) and vbr-neuv here .* does not run its program: run this in the netns it was loaded in \(--netns\); a load there records it$/, 'no record');
    }
    assert.equal(inA(['show']).code, 0, 'its own netns');
    assert.equal(inA(['load']).code, 0, 'reload where it lives');
    const home = bpftoolJson(['map', 'dump', 'pinned', mapPinPath(pins, 'home')]) as Array<{ formatted: { value: { netns_ino: number } } }>;
    assert.equal(home[0]!.formatted.value.netns_ino, fs.statSync(`/var/run/netns/${a.name}`).ino, 'recorded at the reload');
    refused(cli(['--netns', b.name, '--bpffs', pins, 'show']), ExitCode.WRONG_NETNS, new RegExp(`belongs to netns ${a.name} `), 'recorded');
    assert.equal(inA(['unload']).code, 0);
  });

  it('a pin root whose netns is gone: refused (exit 7) with the way out, unload --force removes its pins and nothing else', function () {
    const a = makeNetns();
    const b = makeNetns();
    const pins = makePinRoot();
    const inB = (args: string[]) => cli(['--netns', b.name, '--bpffs', pins, ...args]);
    assert.equal(cli(['--netns', a.name, '--bpffs', pins, 'load']).code, 0);
    veth({ ns: a, name: 'vinG' }, { ns: a, name: 'wlG' }, { ipv6: false });
    veth({ ns: a, name: 'vexG' }, { ns: a, name: 'hG' }, { ipv6: false });
    assert.equal(cli(['--netns', a.name, '--bpffs', pins, 'pair', 'add', '--in', 'vinG', '--ex', 'vexG', '--mac', '02:00:00:00:00:01']).code, 0);
    // b has interfaces of its own, which the gone netns's ifindexes may name here.
    for (let i = 0; i < 6; i++) veth({ ns: b, name: `bx${i}` }, { ns: b, name: `by${i}` }, { ipv6: false });
    a.del();
    const bBefore = kernelState(b, '/nonexistent');
    for (const args of [['show'], ['repair'], ['unload']]) {
      refused(inB(args), ExitCode.WRONG_NETNS, /belongs to netns inode \d+ \(no name or process holds it: gone\?\), not to .*: if that netns is gone for good \(its ports with it\), neuv-bpf unload --force removes the pins$/, args.join(' '));
    }
    const r = inB(['unload', '--force']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^unloaded: 0 hooks detached, \d+ pins removed$/m);
    // The kernel reuses a freed netns's nsfs inode at once (here, under two suites at a time, it named
    // another test's netns: "the netns of pid N"); the cookie recorded at load tells them apart.
    const st = fs.statSync(netnsPath(b.name), { bigint: true });
    const cookieB = inNetnsAt(netnsPath(b.name), netnsCookie)!.value;
    assert.equal(nameNetns(st.ino, st.dev, true, cookieB).arg, b.name, 'the inode and cookie of b name b');
    assert.equal(nameNetns(st.ino, st.dev, true, cookieB + 1n).gone, true, "b's inode with another cookie: gone");
    assert.equal(fs.existsSync(pins), false, 'the pin root removed');
    assert.equal(kernelState(b, '/nonexistent'), bBefore, 'nothing changed where it ran');
  });

  it('unload with an intercepted container is refused: exit 5, listing its pair and container', async function () {
    await setup();
    const r = tt.run(['unload']);
    refused(r, ExitCode.CONFLICT, new RegExp(`refusing to unload ${tt.pins}: 1 pair and 1 intercepted container: id ${res.pair.id} ${res.vex}/${res.vin} \\(eth0 of pid \\d+\\); .*unload --force`), 'unload');
    intact('after unload');
  });

  it('unload --force releases the container (its original port back, answering), deletes the pair, unloads', async function () {
    await setup();
    const r = tt.run(['unload', '--force']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^released eth0 of pid \\d+; unloaded: \\d+ hooks detached, \\d+ pins removed`));
    assert.equal(ping(tt.t, c1().ns, HOST_IP4, 3), 3, 'the container reaches the host');
    assert.equal(ping(tt.t, tt.t.host, c1().ip4, 3), 3, 'the host reaches the container');
    assert.deepEqual(containerState(tt.t, c1()), stateBefore, "the container's original port, as before intercept");
    assert.deepEqual(linkNames(tt.t, tt.t.enforcer), ['lo'], 'nothing left in the enforcer netns');
    assert.equal(tt.run(['show']).code, ExitCode.NOT_FOUND);
  });
});
