/**
 * Kernel suite for port pairs through the CLI (`pair add / mode / del`,
 * `show`, `stats`, `pair add --file`), with tcx and tc hooks: real veths in a
 * private netns, real hooks, maps read back with bpftool. Every refusal must
 * be one error line, its exit code, and leave the kernel exactly as it was.
 * The API: pairs-api; traffic across a pair: pairs-traffic; 1,000 pairs:
 * pairs-scale.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cli as runCli, CliResult, kernelState, makeNetns, makePinRoot, Netns, oneErrorLine, onCleanup, requireKernel, runCleanups, sh, leakChecks } from './helpers';
import { features } from '../src/features';
import { veth } from '../harness/net';
import { addNonVeth, addVeths, dump, hookProg, ifindexOf, MAC1, MAC2, ports, u32Bytes } from './pairs-fixture';
import { mapPinPath } from '../src/pins';

for (const kind of ['tcx', 'tc'] as const) {
  describe(`pairs (kernel, ${kind} attach)`, function () {
    const env = { NEUV_BPF_ATTACH: kind };

    interface T {
      ns: Netns;
      pins: string;
      c: (args: string[], opts?: { input?: string; env?: NodeJS.ProcessEnv }) => CliResult;
    }

    function setup(n = 2): T {
      const ns = makeNetns();
      const pins = makePinRoot();
      const c: T['c'] = (args, opts = {}) => runCli(['--netns', ns.name, '--bpffs', pins, ...args], { input: opts.input, env: { ...env, ...opts.env } });
      const l = c(['load']);
      assert.equal(l.code, 0, l.stderr);
      addVeths(ns, n);
      return { ns, pins, c };
    }

    function ok(r: CliResult): CliResult {
      assert.equal(r.code, 0, `exit ${r.code}: ${r.stderr}`);
      return r;
    }

    before(function () {
      requireKernel(this);
      if (kind === 'tcx' && !features().tcx) this.skip();
    });
    // Each block below runs its own cleanups (after each test, or after its shared fixture).
    leakChecks({ perTest: false });

    describe('operations', function () {
      afterEach(runCleanups);

      it('add writes both port entries, the ids entry and a zeroed stats entry, attaches both hooks; mode switches; del leaves the kernel as before', function () {
        const t = setup();
        const before = kernelState(t.ns, t.pins);
        const vin = ifindexOf(t.ns, 'vin1');
        const vex = ifindexOf(t.ns, 'vex1');
        const r = ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--mode', 'tap']));
        const id = vex & 0xffff;
        const hex = (n: number) => n.toString(16).padStart(2, '0');
        const uc = `4e:65:75:56:${hex(id >> 8)}:${hex(id & 0xff)}`;
        assert.equal(r.stdout.trim(), `added vin1/vex1: id ${id} ucmac ${uc} bcmac ff:ff:ff:00:${hex(id >> 8)}:${hex(id & 0xff)} mode tap`);

        const p = ports(t.pins);
        assert.equal(p.size, 2);
        const qd = kind === 'tc' ? 4 : 0;
        assert.deepEqual(p.get(vin), { peer_ifindex: vex, flags: qd, id, role: 1, mode: 2, mac: [2, 0, 0, 0, 0, 1], pad: [0, 0], lock: { val: 0 } });
        assert.deepEqual(p.get(vex), { peer_ifindex: vin, flags: qd, id, role: 2, mode: 2, mac: [2, 0, 0, 0, 0, 1], pad: [0, 0], lock: { val: 0 } });
        assert.deepEqual(dump(t.pins, 'ids'), [{ key: id, value: { vin_ifindex: vin, vex_ifindex: vex } }]);
        const stats = dump<Array<{ value: { c: Array<Array<{ packets: number; bytes: number }>> } }>>(t.pins, 'stats');
        assert.equal(stats.length, 1);
        assert.equal(stats[0]!.key, id);
        assert.equal(hookProg(t.ns, t.pins, 'vin1'), 'neuv_vin');
        assert.equal(hookProg(t.ns, t.pins, 'vex1'), 'neuv_vex');
        if (kind === 'tc') {
          assert.match(t.ns.exec('tc', ['qdisc', 'show', 'dev', 'vin1']), /clsact/);
        } else {
          assert.ok(fs.existsSync(path.join(t.pins, `link_${vin}`)) && fs.existsSync(path.join(t.pins, `link_${vex}`)));
        }

        for (const [mode, val] of [['fwd', 1], ['drop', 4], ['bypass', 3], ['tap', 2]] as const) {
          const sel = mode === 'drop' ? ['--id', String(id)] : mode === 'bypass' ? ['--ex', 'vex1'] : ['--in', 'vin1'];
          const m = ok(t.c(['pair', 'mode', ...sel, mode, '--json']));
          assert.equal((JSON.parse(m.stdout) as { to: string }).to, mode);
          const q = ports(t.pins);
          assert.equal(q.get(vin)!.mode, val, mode);
          assert.equal(q.get(vex)!.mode, val, mode);
          assert.equal(q.get(vin)!.peer_ifindex, vex, 'only the mode changes');
        }

        const d = ok(t.c(['pair', 'del', '--in', 'vin1', '--json']));
        const del = JSON.parse(d.stdout) as { id: number; detached: string[]; qdiscsRemoved: string[] };
        assert.equal(del.id, id);
        assert.deepEqual(del.detached.sort(), ['vex1', 'vin1']);
        assert.deepEqual(del.qdiscsRemoved.sort(), kind === 'tc' ? ['vex1', 'vin1'] : []);
        assert.equal(kernelState(t.ns, t.pins), before);
        assert.match(t.ns.exec('tc', ['filter', 'show', 'dev', 'vbr-neuv', 'ingress']) + fs.readdirSync(t.pins).join(' '), /neuv_vbr|link_10000000/, 'vbr-neuv keeps its program');
      });

      it('show and stats right after add (JSON), from the maps and the kernel only', function () {
        const t = setup();
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--id', '300', '--ipv6-to-dp']));
        ok(t.c(['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2]));
        const s = JSON.parse(ok(t.c(['show', '--json'])).stdout) as {
          consistent: boolean;
          pairs: Array<{ id: number; mac: string; mode: string; ipv6ToDp: boolean; ucmac: string; bcmac: string; vin: { name: string; attached: boolean; attach: string }; vex: { name: string; attached: boolean }; counters: { to_wl: { to_peer: { packets: number } } } }>;
          global: Record<string, number>;
        };
        assert.equal(s.consistent, true);
        assert.equal(s.pairs.length, 2);
        const p = s.pairs.find((x) => x.id === 300)!;
        assert.equal(p.mac, MAC1);
        assert.equal(p.mode, 'bypass', 'default mode');
        assert.equal(p.ipv6ToDp, true);
        assert.equal(p.ucmac, '4e:65:75:56:01:2c');
        assert.equal(p.bcmac, 'ff:ff:ff:00:01:2c');
        assert.equal(p.vin.name, 'vin1');
        assert.equal(p.vin.attached, true);
        assert.equal(p.vin.attach, kind);
        assert.equal(p.vex.attached, true);
        assert.equal(typeof p.counters.to_wl.to_peer.packets, 'number');
        assert.equal(typeof s.global.pass_no_pair, 'number');
        const text = ok(t.c(['show'])).stdout;
        assert.match(text, /^pin root .*: 2 pairs$/m);
        assert.match(text, /^\s*300\s+vin1 \(\d+\)\s+vex1 \(\d+\)\s+02:00:00:00:00:01\s+4e:65:75:56:01:2c\s+ff:ff:ff:00:01:2c\s+bypass\s+both/m);
        const st = JSON.parse(ok(t.c(['stats', '--json'])).stdout) as { pairs: Array<{ id: number; in: string; counters: Record<string, Record<string, { packets: number }>> }> };
        assert.deepEqual(st.pairs.map((x) => x.id).sort(), s.pairs.map((x) => x.id).sort());
        assert.deepEqual(Object.keys(st.pairs[0]!.counters), ['to_wl', 'from_wl']);
        assert.deepEqual(Object.keys(st.pairs[0]!.counters.to_wl!), ['to_dp', 'to_peer', 'copy', 'from_dp', 'drop', 'fast', 'flow_drop']);
        assert.match(ok(t.c(['stats'])).stdout, /ID\s+PAIR\s+DIR\s+TO_DP\s+TO_PEER\s+COPY\s+FROM_DP\s+DROP\s+FAST\s+FLOW_DROP\s+BYTES/);
      });

      it('REDIRECT_PEER only where the redirect target is a veth whose peer is in another netns (NEUV_BPF_NO_REDIRECT_PEER=1 forces plain redirect)', function () {
        const t = setup(1);
        const w = makeNetns();
        veth({ ns: t.ns, name: 'vinX' }, { ns: w, name: 'eth0' }, { up: false });
        veth({ ns: t.ns, name: 'vexX' }, { ns: t.ns, name: 'hX' }, { up: false });
        ok(t.c(['pair', 'add', '--in', 'vinX', '--ex', 'vexX', '--mac', MAC2]));
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1]));
        const p = ports(t.pins);
        const f = (dev: string) => p.get(ifindexOf(t.ns, dev))!.flags & 2;
        assert.equal(f('vexX'), 2, "vex's redirect goes to vinX, whose peer is in the workload netns");
        assert.equal(f('vinX'), 0, "vin's redirect goes to vexX, whose peer is in this netns");
        assert.equal(f('vin1'), 0);
        assert.equal(f('vex1'), 0);
        ok(t.c(['pair', 'del', '--in', 'vinX']));
        ok(t.c(['pair', 'add', '--in', 'vinX', '--ex', 'vexX', '--mac', MAC2, '--json'], { env: { NEUV_BPF_NO_REDIRECT_PEER: '1' } }));
        assert.equal(ports(t.pins).get(ifindexOf(t.ns, 'vexX'))!.flags & 2, 0);
      });

      if (kind === 'tc') {
        it('removes only a clsact it created: an existing clsact or a legacy ingress qdisc (NeuVector) stays', function () {
          const t = setup(2);
          t.ns.exec('tc', ['qdisc', 'add', 'dev', 'vin1', 'clsact']);
          t.ns.exec('tc', ['qdisc', 'add', 'dev', 'vex1', 'ingress']);
          const before = kernelState(t.ns, t.pins);
          ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1]));
          ok(t.c(['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2]));
          const p = ports(t.pins);
          assert.equal(p.get(ifindexOf(t.ns, 'vin1'))!.flags & 4, 0);
          assert.equal(p.get(ifindexOf(t.ns, 'vex1'))!.flags & 4, 0);
          assert.equal(p.get(ifindexOf(t.ns, 'vin2'))!.flags & 4, 4);
          assert.equal(hookProg(t.ns, t.pins, 'vex1'), 'neuv_vex', 'attached under the legacy ingress qdisc');
          ok(t.c(['pair', 'del', '--id', String(p.get(ifindexOf(t.ns, 'vin1'))!.id)]));
          ok(t.c(['pair', 'del', '--ex', 'vex2']));
          assert.equal(kernelState(t.ns, t.pins), before);
          assert.match(t.ns.exec('tc', ['qdisc', 'show', 'dev', 'vex1']), /qdisc ingress/);
          assert.match(t.ns.exec('tc', ['qdisc', 'show', 'dev', 'vin1']), /qdisc clsact/);
        });
      }

      it('id: the exPort ifindex low 16 bits when free; exPorts 65536 apart collide, the second gets the lowest free id with a warning; --id pins it; a taken --id is refused', function () {
        const t = setup(0);
        veth({ ns: t.ns, name: 'vexA', index: 70000 }, { ns: t.ns, name: 'hA' }, { up: false });
        veth({ ns: t.ns, name: 'vexB', index: 4464 }, { ns: t.ns, name: 'hB' }, { up: false });
        for (const n of ['vinA', 'vinB', 'vinC']) veth({ ns: t.ns, name: n }, { ns: t.ns, name: `w${n}` }, { up: false });
        veth({ ns: t.ns, name: 'vexC' }, { ns: t.ns, name: 'hC' }, { up: false });
        const a = JSON.parse(ok(t.c(['pair', 'add', '--in', 'vinA', '--ex', 'vexA', '--mac', MAC1, '--json'])).stdout) as { id: number; idSource: string; ucmac: string };
        assert.equal(a.id, 70000 & 0xffff);
        assert.equal(a.id, 4464);
        assert.equal(a.idSource, 'derived');
        const rb = ok(t.c(['pair', 'add', '--in', 'vinB', '--ex', 'vexB', '--mac', MAC2, '--json']));
        const b = JSON.parse(rb.stdout) as { id: number; idSource: string; warning: string };
        assert.equal(b.idSource, 'allocated');
        assert.equal(b.id, 0, 'the lowest free id');
        assert.match(b.warning, /port id 4464 \(vexB's ifindex 4464 & 0xffff\) is taken by pair vinA\/vexA \(id 4464\); using id 0/);
        assert.match(rb.stderr, /port id 4464 .* is taken/, 'the warning is logged');
        const before = kernelState(t.ns, t.pins);
        const dup = t.c(['pair', 'add', '--in', 'vinC', '--ex', 'vexC', '--mac', '02:00:00:00:00:03', '--id', '4464']);
        assert.equal(dup.code, 5);
        assert.match(oneErrorLine(dup), /port id 4464 is already used by pair vinA\/vexA \(id 4464\)/);
        assert.equal(kernelState(t.ns, t.pins), before);
        const c = JSON.parse(ok(t.c(['pair', 'add', '--in', 'vinC', '--ex', 'vexC', '--mac', '02:00:00:00:00:03', '--id', '65535', '--json'])).stdout) as { id: number; idSource: string; ucmac: string };
        assert.equal(c.id, 65535);
        assert.equal(c.idSource, 'pinned');
        assert.equal(c.ucmac, '4e:65:75:56:ff:ff');
        assert.deepEqual(dump(t.pins, 'ids').map((r) => r.key).sort((x, y) => x - y), [0, 4464, 65535]);
      });

      it('idempotent: the same spec again succeeds and re-attaches a missing hook; a conflicting spec is refused', function () {
        const t = setup();
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--mode', 'tap']));
        const state = kernelState(t.ns, t.pins);
        const again = ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--mode', 'tap']));
        assert.match(again.stdout, /^exists vin1\/vex1: id \d+ .* mode tap$/m);
        assert.equal(kernelState(t.ns, t.pins), state, 'nothing changed');
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1])); // mode omitted: matches any
        // Lose the vin hook (as a crash or an admin might), then add again.
        const vin = ifindexOf(t.ns, 'vin1');
        if (kind === 'tcx') fs.rmSync(path.join(t.pins, `link_${vin}`));
        else t.ns.exec('tc', ['filter', 'del', 'dev', 'vin1', 'ingress', 'pref', '1', 'handle', '0x4e56', 'bpf']);
        assert.equal(hookProg(t.ns, t.pins, 'vin1'), undefined);
        const shown = JSON.parse(ok(t.c(['show', '--json'])).stdout) as { consistent: boolean; pairs: Array<{ problems: string[] }> };
        assert.equal(shown.consistent, false);
        assert.match(shown.pairs[0]!.problems.join('\n'), /the vin hook is not attached/);
        const rep = ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--mode', 'tap', '--json']));
        const r = JSON.parse(rep.stdout) as { created: boolean; repaired: string[] };
        assert.equal(r.created, false);
        assert.deepEqual(r.repaired, ['vin hook']);
        assert.equal(hookProg(t.ns, t.pins, 'vin1'), 'neuv_vin');
        assert.equal((JSON.parse(ok(t.c(['show', '--json'])).stdout) as { consistent: boolean }).consistent, true);
        for (const [args, re] of [
          [['--mac', MAC2], /already exists with MAC 02:00:00:00:00:01, not 02:00:00:00:00:02/],
          [['--mac', MAC1, '--mode', 'fwd'], /already exists with mode tap, not fwd \(use neuv-bpf pair mode\)/],
          [['--mac', MAC1, '--id', '9'], /already exists with id \d+, not 9/],
          [['--mac', MAC1, '--ipv6-to-dp'], /already exists with ipv6ToDp false, not true/],
        ] as const) {
          const before = kernelState(t.ns, t.pins);
          const x = t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', ...args]);
          assert.equal(x.code, 5, x.stderr);
          assert.match(oneErrorLine(x), re);
          assert.equal(kernelState(t.ns, t.pins), before);
        }
      });

      it('--file: many pairs in one process (JSON lines on stdin); a kernel refusal mid-batch rolls the whole batch back', function () {
        const t = setup(4);
        const before = kernelState(t.ns, t.pins);
        // Make the 3rd pair's vex refuse our attachment after the first two succeeded.
        const vex3 = ifindexOf(t.ns, 'vex3');
        if (kind === 'tc') {
          t.ns.exec('tc', ['qdisc', 'add', 'dev', 'vex3', 'clsact']);
          t.ns.exec('tc', ['filter', 'add', 'dev', 'vex3', 'ingress', 'pref', '1', 'u32', 'match', 'u32', '0', '0', 'classid', '1:1']);
        } else {
          fs.mkdirSync(path.join(t.pins, `link_${vex3}`));
        }
        const blocked = kernelState(t.ns, t.pins);
        const lines = [1, 2, 3, 4].map((i) => JSON.stringify({ in: `vin${i}`, ex: `vex${i}`, mac: `02:00:00:00:00:0${i}`, ...(i === 2 ? { mode: 'tap', id: 77 } : {}) }));
        const fail = t.c(['pair', 'add', '--file', '-'], { input: lines.join('\n') + '\n' });
        assert.equal(fail.code, 6, fail.stderr);
        assert.match(oneErrorLine(fail), /^neuv-bpf: stdin line 3: .*vex3/);
        assert.equal(kernelState(t.ns, t.pins), blocked, 'the first two pairs were rolled back');
        if (kind === 'tc') t.ns.exec('tc', ['qdisc', 'del', 'dev', 'vex3', 'clsact']);
        else fs.rmdirSync(path.join(t.pins, `link_${vex3}`));
        assert.equal(kernelState(t.ns, t.pins), before);

        const file = path.join(os.tmpdir(), `nbt-pairs-${process.pid}.jsonl`);
        fs.writeFileSync(file, lines.join('\n') + '\n');
        onCleanup(() => fs.rmSync(file, { force: true }));
        const r = ok(t.c(['pair', 'add', '--file', file, '--json']));
        const out = JSON.parse(r.stdout) as Array<{ in: string; id: number; mode: string; created: boolean }>;
        assert.deepEqual(out.map((x) => x.in), ['vin1', 'vin2', 'vin3', 'vin4']);
        assert.equal(out[1]!.id, 77);
        assert.equal(out[1]!.mode, 'tap');
        assert.ok(out.every((x) => x.created));
        assert.equal(ports(t.pins).size, 8);
        const again = ok(t.c(['pair', 'add', '--file', file]));
        assert.match(again.stdout, /4 pairs: 0 added, 4 existed/);
      });

      it('show flags inconsistencies (vanished port, ids entry without ports, port entries without ids entry); pair del cleans them up', function () {
        const t = setup(3);
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--id', '11']));
        ok(t.c(['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2, '--id', '12']));
        ok(t.c(['pair', 'add', '--in', 'vin3', '--ex', 'vex3', '--mac', '02:00:00:00:00:03', '--id', '13']));
        t.ns.ip('link', 'del', 'h1'); // takes vex1 with it
        sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(t.pins, 'ports'), 'key', ...u32Bytes(ifindexOf(t.ns, 'vin2'))]);
        sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(t.pins, 'ports'), 'key', ...u32Bytes(ifindexOf(t.ns, 'vex2'))]);
        sh('bpftool', ['map', 'delete', 'pinned', mapPinPath(t.pins, 'ids'), 'key', ...u32Bytes(13)]);
        const s = JSON.parse(ok(t.c(['show', '--json'])).stdout) as { consistent: boolean; pairs: Array<{ id: number; problems: string[] }>; problems: string[] };
        assert.equal(s.consistent, false);
        const probs = (id: number) => s.pairs.find((p) => p.id === id)!.problems.join('\n');
        assert.match(probs(11), /the vex \(ifindex \d+\) has no interface in this network namespace \(port vanished\)/);
        assert.match(probs(12), /no neuv_ports entry for the vin/);
        assert.match(probs(12), /no neuv_ports entry for the vex/);
        assert.match(probs(13), /no neuv_ids entry/);
        const text = ok(t.c(['show'])).stdout;
        assert.match(text, /INCONSISTENT/);
        assert.match(text, /^ {2}! .*port vanished/m);
        // A new pair may not reuse a port a leftover still names.
        const x = t.c(['pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2]);
        assert.equal(x.code, 5);
        assert.match(oneErrorLine(x), /vin2 \(ifindex \d+\) is still named by the neuv_ids entry of port id 12/);
        for (const id of ['11', '12', '13']) ok(t.c(['pair', 'del', '--id', id]));
        const after = JSON.parse(ok(t.c(['show', '--json'])).stdout) as { consistent: boolean; pairs: unknown[] };
        assert.deepEqual(after, { ...after, consistent: true, pairs: [] });
        assert.deepEqual(ports(t.pins).size, 0);
        assert.deepEqual(dump(t.pins, 'ids'), []);
        assert.deepEqual(dump(t.pins, 'stats'), []);
        assert.deepEqual(fs.readdirSync(t.pins).filter((f) => f.startsWith('link_') && f !== 'link_10000000'), []);
      });

    });

    describe('refusals: one error line, their exit code, nothing changed', function () {
      let t: T;
      let state0: string;
      before(function () {
        t = setup(2);
        addNonVeth(t.ns, 'nv0');
        ok(t.c(['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC1, '--id', '100']));
        state0 = kernelState(t.ns, t.pins);
      });
      // One netns and pin root for the whole block (every case must leave them unchanged).
      after(runCleanups);

      const add2 = ['pair', 'add', '--in', 'vin2', '--ex', 'vex2'];
      const line = (o: object) => JSON.stringify(o);
      const good2 = line({ in: 'vin2', ex: 'vex2', mac: MAC2 });
      const cases: Array<[string, string[], number, RegExp, string?]> = [
        ['malformed MAC', [...add2, '--mac', '02:00:00:00:00'], 2, /malformed MAC "02:00:00:00:00"/],
        ['multicast MAC', [...add2, '--mac', '01:00:5e:00:00:fb'], 2, /is a multicast address/],
        ['broadcast MAC', [...add2, '--mac', 'ff:ff:ff:ff:ff:ff'], 2, /broadcast address/],
        ['all-zero MAC', [...add2, '--mac', '00:00:00:00:00:00'], 2, /all zeros/],
        ['UCMAC-prefixed MAC', [...add2, '--mac', '4e:65:75:56:00:64'], 2, /"NeuV"/],
        ['unknown interface', ['pair', 'add', '--in', 'nosuch0', '--ex', 'vex2', '--mac', MAC2], 4, /interface nosuch0 not found in this network namespace/],
        ['non-veth interface', ['pair', 'add', '--in', 'vin2', '--ex', 'nv0', '--mac', MAC2], 2, /nv0 is not a veth \(it is a (dummy|bridge)\)/],
        ['bad interface name', ['pair', 'add', '--in', 'a b', '--ex', 'vex2', '--mac', MAC2], 2, /contains a space/],
        ['in == ex', ['pair', 'add', '--in', 'vin2', '--ex', 'vin2', '--mac', MAC2], 2, /in and ex are the same interface/],
        ['vbr-neuv as a port', ['pair', 'add', '--in', 'vin2', '--ex', 'vbr-neuv', '--mac', MAC2], 2, /DP port pair/],
        ['missing --mac', ['pair', 'add', '--in', 'vin2', '--ex', 'vex2'], 2, /pair add needs --mac/],
        ['duplicate pair (vin in another pair)', ['pair', 'add', '--in', 'vin1', '--ex', 'vex2', '--mac', MAC2], 5, /vin1 is already the vin of pair vin1\/vex1 \(id 100\), paired with vex1/],
        ['a vex used as vin', ['pair', 'add', '--in', 'vex1', '--ex', 'vex2', '--mac', MAC2], 5, /vex1 is already the vex of pair vin1\/vex1 \(id 100\)/],
        ['existing pair, other MAC', ['pair', 'add', '--in', 'vin1', '--ex', 'vex1', '--mac', MAC2], 5, /already exists with MAC/],
        ['duplicate id', [...add2, '--mac', MAC2, '--id', '100'], 5, /port id 100 is already used by pair vin1\/vex1 \(id 100\)/],
        ['id out of range', [...add2, '--mac', MAC2, '--id', '65536'], 2, /--id "65536" is out of range \(expected 0\.\.65535\)/],
        ['id not an integer', [...add2, '--mac', MAC2, '--id', '1e3'], 2, /--id "1e3" is not an integer/],
        ['bad add mode', [...add2, '--mac', MAC2, '--mode', 'drop'], 2, /argument 'drop' is invalid/],
        ['bad mode', ['pair', 'mode', '--id', '100', 'sideways'], 2, /unknown mode "sideways" \(expected fwd, tap, bypass or drop\)/],
        ['bad JSON line', ['pair', 'add', '--file', '-'], 2, /^neuv-bpf: stdin line 2: not valid JSON/, `${good2}\n{"in":\n`],
        ['unknown field in a line', ['pair', 'add', '--file', '-'], 2, /stdin line 1: unknown field 'vlan'/, line({ in: 'vin2', ex: 'vex2', mac: MAC2, vlan: 4 }) + '\n'],
        ['missing field in a line', ['pair', 'add', '--file', '-'], 2, /stdin line 2: missing field 'mac'/, `${good2}\n${line({ in: 'vin3', ex: 'vex3' })}\n`],
        ['unknown interface in a line', ['pair', 'add', '--file', '-'], 4, /stdin line 2: interface nosuch0 not found/, `${good2}\n${line({ in: 'nosuch0', ex: 'nosuch1', mac: '02:00:00:00:00:09' })}\n`],
        ['a line conflicting with an existing pair', ['pair', 'add', '--file', '-'], 5, /stdin line 2: vin1 is already the vin/, `${good2}\n${line({ in: 'vin1', ex: 'h2', mac: '02:00:00:00:00:09' })}\n`],
        ['an empty file', ['pair', 'add', '--file', '-'], 2, /stdin: no pairs/, '\n'],
        ['a missing file', ['pair', 'add', '--file', '/nonexistent/pairs.jsonl'], 4, /--file \/nonexistent\/pairs.jsonl not found: No such file or directory \(ENOENT\)/],
        ['--file with --in', ['pair', 'add', '--file', '-', '--in', 'vin2'], 2, /--file cannot be combined/],
        ['mode: unknown id', ['pair', 'mode', '--id', '7', 'tap'], 4, /no pair with port id 7/],
        ['mode: port in no pair', ['pair', 'mode', '--in', 'vin2', 'tap'], 4, /vin2 is not in any pair/],
        ['mode: unknown interface', ['pair', 'mode', '--ex', 'nosuch0', 'tap'], 4, /interface nosuch0 not found/],
        ['mode: a vex named as vin', ['pair', 'mode', '--in', 'vex1', 'tap'], 4, /vex1 is the vex of pair id 100, not a vin/],
        ['mode: two selectors', ['pair', 'mode', '--in', 'vin1', '--id', '100', 'tap'], 2, /exactly one of --in VIN, --ex VEX or --id N/],
        ['del: unknown id', ['pair', 'del', '--id', '7'], 4, /no pair with port id 7/],
        ['del: port in no pair', ['pair', 'del', '--ex', 'vex2'], 4, /vex2 is not in any pair/],
        ['del: no selector', ['pair', 'del'], 2, /exactly one of/],
        ['stats: bad interval', ['stats', '--watch', '--interval', '0'], 2, /--interval "0" is out of range \(expected 0\.1\.\.3600 seconds\)/],
      ];
      for (const [what, args, code, re, input] of cases) {
        it(what, function () {
          const r = t.c(args, { input });
          assert.equal(r.code, code, `${r.code}: ${r.stderr}`);
          assert.match(oneErrorLine(r), re);
          assert.equal(r.stdout, '');
          assert.equal(kernelState(t.ns, t.pins), state0);
        });
      }

      it('not loaded: a clear pointer to `load`', function () {
        const pins = makePinRoot();
        const r = runCli(['--netns', t.ns.name, '--bpffs', pins, 'pair', 'add', '--in', 'vin2', '--ex', 'vex2', '--mac', MAC2], { env });
        assert.equal(r.code, 4);
        assert.match(oneErrorLine(r), /the datapath is not loaded .*run neuv-bpf load first/);
        assert.equal(fs.existsSync(pins), false);
      });
    });
  });
}
