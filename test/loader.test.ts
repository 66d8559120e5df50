/**
 * Kernel suite for `load` / `unload` (the foundation): real object, real
 * pins, real tc hooks, each test in its own netns and pin root.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { veth } from '../harness/net';
import { cli as runCli, CLI, ROOT, kernelState, makeNetns, makePinRoot, oneErrorLine, removeLockFiles, requireKernel, sh, leakChecks, bpftoolJson } from './helpers';
import { collectOutput } from '../harness/proc';
import { BpfObject, LOCK_EX, LOCK_NB, LOCK_UN, flock } from '../src/bpf';
import { openLockDirFile, withLock } from '../src/lock';
import { features } from '../src/features';
import { checkAgainstBtf, encodeConfig, decodeConfig, encodePort, PortDecl, Role, Mode, u32Key, decodePort, STRUCTS, ENUMS } from '../src/layout';
import { isLoaded, mapPinPath, Pins } from '../src/pins';

const DRIFT = path.join(ROOT, 'build', 'fixtures', 'drift.bpf.o');
const REJECT = path.join(ROOT, 'build', 'fixtures', 'reject.bpf.o');

for (const kind of ['tcx', 'tc'] as const) describe(`load / unload (kernel, ${kind} attach)`, function () {
  const env = { NEUV_BPF_ATTACH: kind };
  const cli = (args: string[], opts: Parameters<typeof runCli>[1] = {}) => runCli(args, { ...opts, env: { ...env, ...opts.env } });
  /** The program attached to vbr-neuv ingress (tcx: the pinned link's program; tc: the filter's), or 0. */
  const vbrProg = (ns: { exec: (c: string, a: string[]) => string }, pins: string): number => {
    if (kind === 'tcx') {
      const link = path.join(pins, 'link_10000000');
      if (!fs.existsSync(link)) return 0;
      return (JSON.parse(sh('bpftool', ['-j', 'link', 'show', 'pinned', link])) as { prog_id: number }).prog_id;
    }
    const j = JSON.parse(ns.exec('bpftool', ['-j', 'net', 'show', 'dev', 'vbr-neuv'])) as Array<{ tc: Array<{ id: number; name: string }> }>;
    const ours = j[0]?.tc.filter((t) => t.name.startsWith('neuv_vbr')) ?? [];
    assert.ok(ours.length <= 1, `at most one tc attachment: ${JSON.stringify(ours)}`);
    return ours[0]?.id ?? 0;
  };
  before(function () {
    requireKernel(this);
    if (kind === 'tcx' && !features().tcx) this.skip();
  });
  leakChecks();

  it('loads: pins maps and programs (0600 in a 0700 dir), creates vbr-neuv/vth-neuv, attaches vbr-neuv', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { replaced: boolean; created: boolean };
    assert.equal(out.replaced, false);
    assert.equal(out.created, true);
    const files = fs.readdirSync(pins).sort();
    const expected = ['neuv_config', 'neuv_flow_stats', 'neuv_flows', 'neuv_global', 'neuv_home', 'neuv_ids', 'neuv_ports', 'neuv_stats', 'neuv_trace', 'prog_vbr', 'prog_vex', 'prog_vin'];
    if (kind === 'tcx') expected.unshift('link_10000000');
    assert.deepEqual(files, expected);
    assert.equal(fs.statSync(pins).mode & 0o777, 0o700);
    for (const f of files) assert.equal(fs.statSync(path.join(pins, f)).mode & 0o777, 0o600, f);

    const links = JSON.parse(ns.ip('-d', '-j', 'link', 'show')) as Array<{ ifname: string; ifindex: number; mtu: number; operstate: string }>;
    const vbr = links.find((l) => l.ifname === 'vbr-neuv');
    const vth = links.find((l) => l.ifname === 'vth-neuv');
    assert.equal(vbr?.ifindex, 10000000);
    assert.equal(vth?.ifindex, 10000001);
    assert.equal(vbr?.mtu, 2048);
    const feats = ns.exec('ethtool', ['-k', 'vbr-neuv']);
    assert.match(feats, /rx-checksumming: off/);
    assert.match(feats, /tx-checksumming: off/);

    assert.ok(vbrProg(ns, pins) > 0, 'neuv_vbr attached to vbr-neuv ingress');
    if (kind === 'tc') assert.match(ns.exec('tc', ['filter', 'show', 'dev', 'vbr-neuv', 'ingress']), /neuv_vbr.*direct-action/);
    else assert.ok(fs.existsSync(path.join(pins, 'link_10000000')), 'tcx link pinned');
    const cfg = bpftoolJson(['map', 'dump', 'pinned', mapPinPath(pins, 'config')]) as Array<{ formatted: { value: { dp_ifindex: number } } }>;
    assert.equal(cfg[0]!.formatted.value.dp_ifindex, 10000000);
    // Where it lives (src/home.ts): the enforcer netns's nsfs inode and cookie, vbr-neuv's ifindex.
    const home = bpftoolJson(['map', 'dump', 'pinned', mapPinPath(pins, 'home')]) as Array<{ formatted: { value: { netns_ino: number; netns_cookie: number; vbr_ifindex: number } } }>;
    assert.equal(home[0]!.formatted.value.netns_ino, fs.statSync(`/var/run/netns/${ns.name}`).ino);
    assert.ok(home[0]!.formatted.value.netns_cookie > 0, 'netns cookie recorded');
    assert.equal(home[0]!.formatted.value.vbr_ifindex, 10000000);
  });

  it('bpftool shows named BTF fields of the pinned maps', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    Pins.with(pins, ['ports'], (p) => p.ports.update(u32Key(4242), encodePort({ peerIfindex: 4243, flags: 0, id: 0x1092, role: Role.VEX, mode: Mode.TAP, mac: Buffer.from([2, 0, 0, 0, 0, 1]) })));
    const dump = bpftoolJson(['map', 'dump', 'pinned', mapPinPath(pins, 'ports')]) as Array<{ formatted: { key: number; value: Record<string, unknown> } }>;
    assert.equal(dump.length, 1);
    assert.equal(dump[0]!.formatted.key, 4242);
    const v = dump[0]!.formatted.value;
    assert.equal(v.peer_ifindex, 4243);
    assert.equal(v.id, 0x1092);
    assert.equal(v.role, Role.VEX);
    assert.equal(v.mode, Mode.TAP);
    assert.deepEqual(v.mac, [2, 0, 0, 0, 0, 1]);
  });

  it('a second load keeps map ids and entries and swaps the programs in place', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const first = JSON.parse(cli(['--netns', ns.name, '--bpffs', pins, 'load', '--json']).stdout) as {
      progIds: Record<string, number>;
      mapIds: Record<string, number>;
    };
    const entry = { peerIfindex: 7, flags: 0, id: 9, role: Role.VIN, mode: Mode.FWD, mac: Buffer.from([2, 1, 2, 3, 4, 5]) };
    Pins.with(pins, ['ports', 'config'], (p) => {
      p.ports.update(u32Key(99), encodePort(entry));
      // A running trace's lease lives in neuv_config: a reload must not cut it.
      p.config.update(u32Key(0), encodeConfig({ dpIfindex: 10000000, flags: 7, traceUntil: 123456789n }));
    });

    const r2 = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--json']);
    assert.equal(r2.code, 0, r2.stderr);
    const second = JSON.parse(r2.stdout) as { replaced: boolean; created: boolean; progIds: Record<string, number>; mapIds: Record<string, number> };
    assert.equal(second.replaced, true);
    assert.equal(second.created, false);
    assert.deepEqual(second.mapIds, first.mapIds);
    for (const role of ['vin', 'vex', 'vbr']) assert.notEqual(second.progIds[role], first.progIds[role], role);
    assert.equal(vbrProg(ns, pins), second.progIds.vbr, 'the new program is the one attached');
    if (kind === 'tcx') assert.doesNotMatch(ns.exec('tc', ['filter', 'show', 'dev', 'vbr-neuv', 'ingress']), /neuv/, 'no tc filter besides the tcx link');
    Pins.with(pins, ['ports', 'config'], (p) => {
      const v = p.ports.lookup(u32Key(99));
      assert.ok(v, 'entry survived the reload');
      assert.deepEqual(decodePort(v), entry);
      assert.deepEqual(decodeConfig(p.config.lookup(u32Key(0))!), { dpIfindex: 10000000, flags: 7, traceUntil: 123456789n });
    });
  });

  it('unload leaves no pin, no vbr-neuv, no clsact; a second unload is a no-op', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    const linkId = kind === 'tcx' ? (JSON.parse(sh('bpftool', ['-j', 'link', 'show', 'pinned', path.join(pins, 'link_10000000')])) as { id: number }).id : 0;
    const r = cli(['--netns', ns.name, '--bpffs', pins, 'unload']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fs.existsSync(pins), false);
    const links = ns.ip('link', 'show');
    assert.doesNotMatch(links, /vbr-neuv|vth-neuv/);
    assert.doesNotMatch(ns.exec('tc', ['qdisc', 'show']), /clsact/);
    assert.doesNotMatch(ns.exec('bpftool', ['net', 'show']), /neuv/);
    if (linkId) assert.equal(sh('bpftool', ['link', 'show', 'id', String(linkId)], { allowFail: true }), '', 'tcx link gone');
    const r2 = cli(['--netns', ns.name, '--bpffs', pins, 'unload']);
    assert.equal(r2.code, 0);
    assert.match(r2.stdout, /nothing was loaded/);
  });

  it('--jumbo sets MTU 9000', function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load', '--jumbo']).code, 0);
    assert.match(ns.ip('link', 'show', 'vth-neuv'), /mtu 9000/);
  });

  it("frames neuv_vbr does not handle go on to the filters behind it (TC_ACT_UNSPEC), as NeuVector's rules need while migrating", function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
    // A mirror target, and a filter behind ours on vbr-neuv ingress for DA 4e:65:75:56:12:34 (the
    // UCMAC of id 0x1234, which no pair has), as NeuVector's vbr-neuv rules are. tcx: a legacy
    // ingress qdisc of its own, as NeuVector's; tc: our clsact, where our filter is pref 1.
    // No IPv6 on them: their own neighbour discovery would be counted too.
    veth({ ns, name: 'nbm0' }, { ns, name: 'nbm1' }, { ipv6: false });
    if (kind === 'tcx') ns.exec('tc', ['qdisc', 'add', 'dev', 'vbr-neuv', 'ingress']);
    ns.exec('tc', ['filter', 'add', 'dev', 'vbr-neuv', ...(kind === 'tcx' ? ['parent', 'ffff:'] : ['ingress']), 'pref', '100', 'protocol', 'all', 'u32',
      'match', 'u16', '0x4e65', '0xffff', 'at', '-14', 'match', 'u32', '0x75561234', '0xffffffff', 'at', '-12',
      'action', 'mirred', 'egress', 'mirror', 'dev', 'nbm0']);
    const rx = () => (JSON.parse(ns.ip('-s', '-j', 'link', 'show', 'nbm1')) as Array<{ stats64: { rx: { packets: number } } }>)[0]!.stats64.rx.packets;
    const passNoPair = () => (JSON.parse(cli(['--netns', ns.name, '--bpffs', pins, 'stats', '--json']).stdout) as { global: { pass_no_pair: number } }).global.pass_no_pair;
    const rx0 = rx();
    const pass0 = passNoPair();
    // Three frames from vth-neuv (where the DP writes), through an AF_PACKET socket.
    const frame = '4e6575561234' + '0200000000aa' + '88b5' + '00'.repeat(46);
    ns.exec('python3', ['-c', 'import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\nfor _ in range(3): s.send(bytes.fromhex(sys.argv[2]))', 'vth-neuv', frame]);
    assert.ok(passNoPair() - pass0 >= 3, 'neuv_vbr saw them first and passed them on (pass_no_pair)');
    assert.equal(rx() - rx0, 3, 'the filter behind ours mirrored all three');
  });

  describe('errors: one line, non-zero exit, nothing changed', function () {
    it('missing object file', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      const before = kernelState(ns, pins);
      const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', '/nonexistent/x.o']);
      assert.equal(r.code, 4);
      assert.match(oneErrorLine(r), /--obj \/nonexistent\/x.o not found/);
      assert.equal(kernelState(ns, pins), before);
    });

    it('unknown netns', function () {
      const r = cli(['--netns', 'nbt-no-such-ns', 'load']);
      assert.equal(r.code, 4);
      assert.match(oneErrorLine(r), /network namespace nbt-no-such-ns not found/);
    });

    it('not root: needs CAP_BPF and CAP_NET_ADMIN', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      const before = kernelState(ns, pins);
      const r = cli(['--bpffs', pins, 'load'], { uid: 65534 });
      assert.equal(r.code, 3, r.stderr);
      assert.match(oneErrorLine(r), /needs root \(CAP_BPF and CAP_NET_ADMIN\)/);
      assert.equal(kernelState(ns, pins), before);
    });

    it('pin root not on a bpffs', function () {
      const ns = makeNetns();
      const dir = fs.mkdtempSync('/tmp/nbt-');
      try {
        const r = cli(['--netns', ns.name, '--bpffs', path.join(dir, 'neuv'), 'load']);
        assert.equal(r.code, 2);
        assert.match(oneErrorLine(r), /is not on a bpffs/);
        assert.deepEqual(fs.readdirSync(dir), []);
        assert.doesNotMatch(ns.ip('link', 'show'), /vbr-neuv/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
        removeLockFiles(path.join(dir, 'neuv'));
      }
    });

    it('verifier refusal: clear line, verifier log at debug level, nothing left', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      const before = kernelState(ns, pins);
      const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', REJECT]);
      assert.equal(r.code, 6, r.stderr);
      assert.match(r.stderr.split('\n')[0]!, /^neuv-bpf: load BPF object .*reject.bpf.o: .*verifier refused/); // then the verifier log tail (test/logging.test.ts)
      assert.equal(kernelState(ns, pins), before);
      const dbg = cli(['--netns', ns.name, '--bpffs', pins, '--log-level', 'debug', 'load', '--obj', REJECT]);
      assert.equal(dbg.code, 6);
      assert.match(dbg.stderr, /invalid access to packet|R\d+ invalid mem access|min value is outside/);
      assert.equal(kernelState(ns, pins), before);
    });

    it('an object whose layouts drifted from src/layout/ is refused before load', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      const before = kernelState(ns, pins);
      const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', DRIFT]);
      assert.equal(r.code, 6, r.stderr);
      assert.match(oneErrorLine(r), /does not match the loader's map layouts.*struct neuv_port: size 28 in BTF, 24 in src\/layout\/generated\.ts/);
      assert.equal(kernelState(ns, pins), before);
    });

    it('a failed reload keeps the running datapath intact', function () {
      const ns = makeNetns();
      const pins = makePinRoot();
      assert.equal(cli(['--netns', ns.name, '--bpffs', pins, 'load']).code, 0);
      const before = kernelState(ns, pins);
      const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', REJECT]);
      assert.equal(r.code, 6);
      assert.equal(kernelState(ns, pins), before);
    });
  });
});

/**
 * A program embedding the library (not the CLI): enters the netns, calls
 * load() or unload() of dist/src/index.js, prints the result.
 */
const EMBEDDER = `
const [index, netns, op, pinRoot] = process.argv.slice(1);
require(require('node:path').join(index, '..', 'netns.js')).enterNetns(netns);
const api = require(index);
(op === 'load' ? api.load({ pinRoot }) : api.unload(pinRoot)).then(
  (r) => process.stdout.write(JSON.stringify(r)),
  (e) => { process.stderr.write(String(e && e.message)); process.exitCode = 1; },
);`;

describe('the API takes the pin root lock itself (kernel)', function () {
  before(function () {
    requireKernel(this);
  });
  leakChecks();

  /** Whether someone queued for the pin root's lock (a waiter holds its .wait file shared: src/lock.ts). */
  function queued(pins: string): boolean {
    const fd = openLockDirFile(pins, 'lock.wait');
    try {
      if (!flock(fd, LOCK_EX | LOCK_NB, 'lock.wait')) return true;
      flock(fd, LOCK_UN, 'lock.wait');
      return false;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Runs the embedder while this process holds the lock: it must queue and change nothing until released. */
  async function whileLocked(ns: string, pins: string, op: 'load' | 'unload', untouched: () => string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => (locked = r));
    const holder = withLock(pins, async () => {
      locked();
      await gate;
    });
    await isLocked;
    const before = untouched();
    const child = spawn(process.execPath, ['-e', EMBEDDER, path.join(ROOT, 'dist', 'src', 'index.js'), ns, op, pins], { env: { ...process.env, NEUV_BPF_LOG_LEVEL: 'warn' } });
    const out = collectOutput(child);
    try {
      while (!queued(pins)) {
        assert.ok(!out.exited, `${op}() ended without waiting for the lock: ${out.stderr}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.equal(untouched(), before, `${op}() changed the pin root while another held its lock`);
    } finally {
      release();
      await holder;
    }
    const { code, stdout, stderr } = await out.done;
    return { code, stdout, stderr };
  }

  it('load() and unload() called by an embedder wait for a holder of the lock, then run (no CLI around them)', async function () {
    const ns = makeNetns();
    const pins = makePinRoot();
    const listing = () => (fs.existsSync(pins) ? fs.readdirSync(pins).sort().join(' ') : 'no pin root');
    const l = await whileLocked(ns.name, pins, 'load', listing);
    assert.equal(l.code, 0, l.stderr);
    assert.ok(isLoaded(pins), 'loaded once the lock was free');
    const u = await whileLocked(ns.name, pins, 'unload', listing);
    assert.equal(u.code, 0, u.stderr);
    assert.equal((JSON.parse(u.stdout) as { wasLoaded: boolean }).wasLoaded, true);
    assert.ok(!isLoaded(pins), 'unloaded once the lock was free');
  });
});

describe('BTF layout check', function () {
  let obj: BpfObject | undefined;
  before(function () {
    requireKernel(this);
    obj = BpfObject.open(path.join(ROOT, 'build', 'neuv.bpf.o'));
  });
  after(() => obj?.close());

  it('src/layout/ agrees with the object on every struct and enum', function () {
    assert.deepEqual(checkAgainstBtf(obj!), []);
  });

  it('catches a moved field, a wrong size, a missing member and a changed enum value', function () {
    const moved = STRUCTS.map((s) =>
      s.name !== PortDecl.name ? s : { ...s, members: s.members.map((m) => (m.name === 'mode' ? { ...m, offset: 10 } : m)) },
    );
    assert.match(checkAgainstBtf(obj!, moved).join('\n'), /neuv_port.mode: offset 11 in BTF, 10 in src\/layout\/generated\.ts/);
    const resized = STRUCTS.map((s) => (s.name !== PortDecl.name ? s : { ...s, size: 28 }));
    assert.match(checkAgainstBtf(obj!, resized).join('\n'), /neuv_port: size 24 in BTF, 28 in src\/layout\/generated\.ts/);
    const missing = STRUCTS.map((s) => (s.name !== PortDecl.name ? s : { ...s, members: s.members.filter((m) => m.name !== 'flags') }));
    assert.match(checkAgainstBtf(obj!, missing).join('\n'), /neuv_port.flags: in BTF, missing from src\/layout\/generated\.ts/);
    const enums = ENUMS.map((e) => (e.name !== 'neuv_mode' ? e : { ...e, values: { ...e.values, TAP: 7 } }));
    assert.match(checkAgainstBtf(obj!, STRUCTS, enums).join('\n'), /NEUV_MODE_TAP is 2 in BTF, 7 in src\/layout\/generated\.ts/);
  });

  it('the CLI binary is executable', function () {
    assert.ok(fs.statSync(CLI).mode & 0o100);
  });
});
