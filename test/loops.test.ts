/**
 * Kernel suite: no pair may make a forwarding loop (src/pairs/loops.ts).
 * `pair add` refuses vin/vex that are veth peers of each other, a port whose
 * peer is another pair's port (existing or of the same batch), vbr-neuv or
 * vth-neuv, with one line and its exit code and the kernel left as it was;
 * a frame sent into such a would-be pair is seen once, not millions of
 * times. A pair planted through the one writer of entries (entries.ts, as an
 * older version would have written it, hooks attached) is reported by
 * `show --check` and removed by `repair`.
 */
import assert from 'node:assert/strict';
import { cli as runCli, CliResult, kernelState, leakChecks, makeNetns, makePinRoot, oneErrorLine, requireKernel } from './helpers';
import { ExitCode } from '../src/errors';
import { Netns, linkOf, veth } from '../harness/net';
import { NetnsScope } from '../src/netns';
import { Pins, withProg } from '../src/pins';
import { attach } from '../src/attach';
import { Mode } from '../src/layout';
import { keepQdiscFlag, portEntries, writePairEntries } from '../src/pairs/entries';
import { NV_VBR, nvAttachRules, nvPairRules, nvPref } from '../src/migrate/nvtc';
import { ucmac } from '../src/mac';
import { nvCaps } from './nvfixture';

const MAC = '02:00:00:00:00:01';

interface T {
  ns: Netns;
  pins: string;
  c: (args: string[], input?: string) => CliResult;
}

function setup(): T {
  const ns = makeNetns();
  const pins = makePinRoot();
  const c = (args: string[], input?: string) => runCli(['--netns', ns.name, '--bpffs', pins, ...args], { input, env: { NEUV_BPF_ATTACH: 'tc' } });
  const l = c(['load']);
  assert.equal(l.code, 0, l.stderr);
  return { ns, pins, c };
}

function refused(t: T, args: string[], code: number, line: RegExp, input?: string): void {
  const before = kernelState(t.ns, t.pins);
  const r = t.c(args, input);
  assert.equal(r.code, code, `${args.join(' ')}: exit ${r.code}: ${r.stderr}${r.stdout}`);
  assert.match(oneErrorLine(r), line);
  assert.equal(kernelState(t.ns, t.pins), before, `${args.join(' ')}: the kernel changed`);
}

function rxPackets(ns: Netns, dev: string): number {
  return (JSON.parse(ns.ip('-s', '-j', 'link', 'show', 'dev', dev)) as Array<{ stats64: { rx: { packets: number } } }>)[0]!.stats64.rx.packets;
}

/** Plants a pair's entries as an older version wrote them (entries.ts), hooks attached with tc. */
function plant(t: T, id: number, vin: string, vex: string): void {
  const [i, x] = [linkOf(t.ns, vin).ifindex, linkOf(t.ns, vex).ifindex];
  const scope = new NetnsScope(t.ns.name);
  try {
    const hooked = scope.run(() => ({
      vin: withProg(t.pins, 'vin', (p) => attach(t.pins, i, vin, p.fd, 'tc')),
      vex: withProg(t.pins, 'vex', (p) => attach(t.pins, x, vex, p.fd, 'tc')),
    }));
    const e = portEntries({ id, vin: { ifindex: i, peerElsewhere: false }, vex: { ifindex: x, peerElsewhere: false }, mode: Mode.BYPASS, mac: Buffer.from([2, 0, 0, 0, 0, 9]), ipv6ToDp: false }, false);
    Pins.with(t.pins, ['ports', 'ids', 'stats'], (m) => {
      writePairEntries(m, { id, vinIfindex: i, vexIfindex: x, vin: keepQdiscFlag(e.vin, undefined, hooked.vin.qdiscCreated), vex: keepQdiscFlag(e.vex, undefined, hooked.vex.qdiscCreated) }, { present: { stats: false, ids: false } });
    });
  } finally {
    scope.close();
  }
}

describe('forwarding loops (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  it('pair add refuses veth peers of each other, and a frame into them is seen once', function () {
    const t = setup();
    veth({ ns: t.ns, name: 'la' }, { ns: t.ns, name: 'lb' }, { ipv6: false });
    refused(t, ['pair', 'add', '--in', 'la', '--ex', 'lb', '--mac', MAC], ExitCode.USAGE, /^neuv-bpf: la\/lb: forwarding loop: la and lb are veth peers of each other/);
    refused(t, ['pair', 'add', '--in', 'lb', '--ex', 'la', '--mac', MAC], ExitCode.USAGE, /forwarding loop: lb and la are veth peers of each other/);
    refused(t, ['pair', 'add', '--in', 'la', '--ex', 'la', '--mac', MAC], ExitCode.USAGE, /in and ex are the same interface \(la\)/);
    // Three frames out of lb arrive at la; with the pair added they would go round for ever.
    t.ns.ip('addr', 'add', '10.77.0.1/24', 'dev', 'lb');
    t.ns.ip('neigh', 'replace', '10.77.0.2', 'lladdr', '02:00:00:00:00:02', 'dev', 'lb', 'nud', 'permanent');
    const rx0 = rxPackets(t.ns, 'la');
    t.ns.exec('ping', ['-c', '3', '-i', '0.2', '-W', '1', '-I', 'lb', '10.77.0.2'], { allowFail: true });
    const rx1 = rxPackets(t.ns, 'la');
    t.ns.exec('sleep', ['0.5']);
    assert.ok(rx1 - rx0 >= 3 && rx1 - rx0 < 10, `la received ${rx1 - rx0} frames for 3 sent`);
    assert.equal(rxPackets(t.ns, 'la'), rx1, 'the counter on the peer stays flat');
  });

  it("pair add refuses a port whose peer is another pair's port (existing or in the batch), vbr-neuv or vth-neuv", function () {
    const t = setup();
    for (const n of [1, 2]) {
      veth({ ns: t.ns, name: `vin${n}` }, { ns: t.ns, name: `wl${n}` }, { ipv6: false });
      veth({ ns: t.ns, name: `vex${n}` }, { ns: t.ns, name: `h${n}` }, { ipv6: false });
    }
    const a = t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC]);
    assert.equal(a.code, 0, a.stderr);
    const id = linkOf(t.ns, 'vex1').ifindex & 0xffff;
    refused(t, ['pair', 'add', '--in', 'wl1', '--ex', 'vex2', '--mac', MAC], ExitCode.CONFLICT,
      new RegExp(`wl1/vex2: forwarding loop: the veth peer of vin wl1 is vin1, the vin of pair vin1/vex1 \\(id ${id}\\)`));
    refused(t, ['pair', 'add', '--in', 'vin2', '--ex', 'h1', '--mac', MAC], ExitCode.CONFLICT, /forwarding loop: the veth peer of vex h1 is vex1, the vex of pair vin1\/vex1/);
    refused(t, ['pair', 'add', '--file', '-'], ExitCode.CONFLICT, /^neuv-bpf: stdin line 1: vin2\/vex2: forwarding loop: the veth peer of vin vin2 is wl2, the vin of stdin line 2 /,
      `{"in":"vin2","ex":"vex2","mac":"${MAC}"}\n{"in":"wl2","ex":"h2","mac":"02:00:00:00:00:03"}\n`);
    refused(t, ['pair', 'add', '--in', 'vth-neuv', '--ex', 'vex2', '--mac', MAC], ExitCode.USAGE, /vth-neuv is the DP port pair of the datapath/);
    refused(t, ['pair', 'add', '--in', 'vin2', '--ex', 'vbr-neuv', '--mac', MAC], ExitCode.USAGE, /vbr-neuv is the DP port pair of the datapath/);
    const ok = t.c(['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(t.c(['show', '--check']).code, 0);
  });

  it('a looping pair written by an older version: show --check reports it, repair removes it', function () {
    const t = setup();
    veth({ ns: t.ns, name: 'la' }, { ns: t.ns, name: 'lb' }, { up: false });
    const before = kernelState(t.ns, t.pins);
    plant(t, 700, 'la', 'lb');
    const chk = t.c(['show', '--check']);
    assert.equal(chk.code, ExitCode.FAILURE);
    assert.match(oneErrorLine(chk), /pair id 700 \(la\/lb\): forwarding loop: la and lb are veth peers of each other/);
    const dry = t.c(['repair', '--dry-run']);
    assert.match(dry.stdout, /would fix: removed pair id 700 \(la\/lb\): forwarding loop/);
    const rep = t.c(['repair']);
    assert.equal(rep.code, 0, rep.stderr + rep.stdout);
    assert.match(rep.stdout, /^fixed: removed pair id 700 \(la\/lb\): forwarding loop: la and lb are veth peers of each other/m);
    assert.equal(t.c(['show', '--check']).code, 0);
    assert.equal(kernelState(t.ns, t.pins), before, 'entries, hooks and qdiscs gone');
  });

  it("two pairs looping through each other's ports: repair removes one and keeps the other", function () {
    const t = setup();
    veth({ ns: t.ns, name: 'vin1' }, { ns: t.ns, name: 'wl1' }, { up: false });
    veth({ ns: t.ns, name: 'vex1' }, { ns: t.ns, name: 'h1' }, { up: false });
    veth({ ns: t.ns, name: 'vex2' }, { ns: t.ns, name: 'h2' }, { up: false });
    const a = t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC]);
    assert.equal(a.code, 0, a.stderr);
    plant(t, 701, 'h1', 'vex2'); // h1's peer is vex1
    const chk = t.c(['show', '--check', '--json']);
    assert.equal(chk.code, ExitCode.FAILURE);
    const looping = (JSON.parse(chk.stdout) as { pairs: Array<{ id: number; problems: string[] }> }).pairs.filter((p) => p.problems.some((x) => x.startsWith('forwarding loop')));
    assert.equal(looping.length, 2, chk.stdout);
    const rep = t.c(['repair']);
    assert.equal(rep.code, 0, rep.stderr + rep.stdout);
    assert.equal(rep.stdout.match(/^fixed: removed pair id/gm)?.length, 1, rep.stdout);
    const left = JSON.parse(t.c(['show', '--json']).stdout) as { pairs: Array<{ id: number }>; consistent: boolean };
    assert.equal(left.pairs.length, 1);
    assert.equal(left.consistent, true);
    assert.equal(t.c(['show', '--check']).code, 0);
  });

  it('pair add refuses ports whose peers are ports of one bridge in another netns, and takes them once they are not', function () {
    const t = setup();
    const x = makeNetns();
    veth({ ns: t.ns, name: 'la' }, { ns: x, name: 'pa' }, { ipv6: false });
    veth({ ns: t.ns, name: 'lb' }, { ns: x, name: 'pb' }, { ipv6: false });
    x.ip('link', 'add', 'br0', 'type', 'bridge');
    for (const p of ['pa', 'pb']) x.ip('link', 'set', p, 'master', 'br0');
    refused(t, ['pair', 'add', '--in', 'la', '--ex', 'lb', '--mac', MAC], ExitCode.USAGE,
      new RegExp(`^neuv-bpf: la/lb: forwarding loop: the veth peers of vin la and vex lb \\(pa and pb, in netns /var/run/netns/${x.name}\\) are ports of one bridge there, br0`));
    x.ip('link', 'set', 'pb', 'nomaster');
    const ok = t.c(['pair', 'add', '--in', 'la', '--ex', 'lb', '--mac', MAC]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(t.c(['show', '--check']).code, 0);
  });

  it("adopt refuses a NeuVector pair whose ports are veth peers of each other before it loads or writes anything", function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const c = (args: string[]) => runCli(['--netns', ns.name, '--bpffs', pins, ...args], { env: { NEUV_BPF_ATTACH: 'tc' } });
    // NeuVector's Connect, AttachPortPair and FwdPortPair (nvtc.ts) on la/lb, veth peers of each other.
    veth({ ns, name: NV_VBR, index: 10000000, mtu: 2048 }, { ns, name: 'vth-neuv', index: 10000001, mtu: 2048 }, { ipv6: false });
    ns.exec('tc', ['qdisc', 'add', 'dev', NV_VBR, 'ingress']);
    veth({ ns, name: 'la' }, { ns, name: 'lb' }, { ipv6: false });
    const [i, x] = [linkOf(ns, 'la').ifindex, linkOf(ns, 'lb').ifindex];
    for (const a of nvAttachRules({ inPort: 'la', exPort: 'lb' })) ns.exec('tc', a);
    const inPref = nvPref(i, new Set());
    const exPref = nvPref(x, new Set([inPref]));
    const pair = { inPort: 'la', exPort: 'lb', mac: Buffer.from([2, 0, 0, 0, 0, 1]), ucmac: ucmac(x & 0xffff), inPref, exPref };
    for (const a of nvPairRules(pair, 'fwd', { pedit: nvCaps().pedit })) ns.exec('tc', a);
    const loop = /^neuv-bpf: la\/lb: forwarding loop: la and lb are veth peers of each other/;
    // Not loaded: refused before adopt loads the datapath. Loaded: before it writes the pair's entries.
    for (const step of ['not loaded', 'loaded'] as const) {
      if (step === 'loaded') assert.equal(c(['load']).code, 0);
      const before = kernelState(ns, pins);
      for (const args of [['adopt', '--dry-run'], ['adopt']]) {
        const r = c(args);
        assert.equal(r.code, ExitCode.USAGE, `${step}: ${args.join(' ')}: exit ${r.code}: ${r.stderr}${r.stdout}`);
        assert.match(oneErrorLine(r), loop);
        assert.equal(kernelState(ns, pins), before, `${step}: ${args.join(' ')}: the kernel changed`);
      }
    }
  });
});
