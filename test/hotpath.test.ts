/**
 * The hot path's contracts beyond the per-frame decisions (those are in
 * datapath/differential/flows): flag values are covered by the load-time
 * layout check, flow lookups only once something wrote neuv_flows, the build
 * tag stays in every program's .rodata without code reading it.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { BpfObject, MapFd, progInfo } from '../src/bpf';
import { Flows } from '../src/flows';
import { checkAgainstBtf, ConfigFlag, decodeConfig, Dir, FlowVerdict, Mode, u32Key, Verdict, encodeFlow, encodeFlowKey, flowKeyOf } from '../src/layout';
import { ucmac } from '../src/mac';
import { ProgFixture } from '../harness/prog-fixture';
import { GW, ID, M, twoPairs } from '../harness/frames';
import { cli, kernelState, leakChecks, makeNetns, makePinRoot, oneErrorLine, requireKernel, ROOT, runCleanups, sh } from './helpers';

const DRIFT_FLAG = path.join(ROOT, 'build', 'fixtures', 'drift-flag.bpf.o');
const REDIRECT = 7;

describe('hot path: layout check of flags (drift fixture)', function () {
  leakChecks();
  it('a changed flag value is a layout disagreement', function () {
    const obj = BpfObject.open(DRIFT_FLAG);
    try {
      assert.deepEqual(checkAgainstBtf(obj), ['enum neuv_port_flag: NEUV_F_SELF_PEER is 16 in BTF, 8 in src/layout/generated.ts']);
    } finally {
      obj.close();
    }
  });

  it('load refuses that object before touching the kernel', function () {
    requireKernel(this);
    const ns = makeNetns();
    const pins = makePinRoot();
    const before = kernelState(ns, pins);
    const r = cli(['--netns', ns.name, '--bpffs', pins, 'load', '--obj', DRIFT_FLAG]);
    assert.equal(r.code, 6, r.stderr);
    assert.match(oneErrorLine(r), /does not match the loader's map layouts.*enum neuv_port_flag: NEUV_F_SELF_PEER is 16 in BTF, 8 in src\/layout\/generated\.ts/);
    assert.equal(kernelState(ns, pins), before);
  });
});

/** A TCP frame of the workload (vin ingress: SA = M) to the gateway. */
function tcpOut(): Buffer {
  const b = Buffer.alloc(60);
  GW.copy(b, 0);
  M.copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(46, 16);
  b[22] = 64;
  b[23] = 6;
  Buffer.from([10, 1, 0, 2]).copy(b, 26);
  Buffer.from([10, 1, 0, 9]).copy(b, 30);
  b.writeUInt16BE(40000, 34);
  b.writeUInt16BE(80, 36);
  b[46] = 0x50;
  b[47] = 0x10; // ACK
  return b;
}

describe('hot path: flow lookups follow NEUV_CFG_FLOWS (BPF_PROG_TEST_RUN)', function () {
  let dp: ProgFixture;
  let flows: MapFd;
  before(function () {
    requireKernel(this);
    dp = ProgFixture.create();
    flows = dp.obj.map('neuv_flows');
  });
  leakChecks({ perTest: false });

  const flow = { id: ID, proto: 6, src: '10.1.0.2', sport: 40000, dst: '10.1.0.9', dport: 80 };
  const putAllow = () => flows.update(encodeFlowKey(flowKeyOf(flow)), encodeFlow({ verdict: FlowVerdict.ALLOW, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n }));
  const cfgFlags = () => decodeConfig(dp.config.lookup(u32Key(0))!).flags;

  it('without the bit an ALLOW entry is not looked at (frame to the DP); with it the frame takes the fast path', function () {
    const st = twoPairs({ vin: dp.lo, vex: dp.veth, vin2: 31, vex2: 32, dp: dp.lo }, Mode.FWD);
    dp.seed(st, [ID]); // neuv_config.flags 0
    putAllow();
    const f = tcpOut();
    const toDp = Buffer.from(f);
    ucmac(ID).copy(toDp, 6);
    let r = dp.run('vin', f, dp.lo);
    assert.equal(r.retval, REDIRECT);
    assert.equal(r.dataOut.toString('hex'), toDp.toString('hex'), 'without NEUV_CFG_FLOWS: SA := UCMAC, to the DP');
    assert.equal(dp.readStats(ID)![Dir.FROM_WL]![Verdict.TO_DP]!.packets, 1n);

    dp.seed({ ...st, configFlags: ConfigFlag.FLOWS }, [ID]);
    r = dp.run('vin', f, dp.lo);
    assert.equal(r.retval, REDIRECT);
    assert.equal(r.dataOut.toString('hex'), f.toString('hex'), 'with NEUV_CFG_FLOWS: unchanged, to the peer (FAST)');
    // FAST is counted in neuv_flow_stats only: neuv_stats does not move.
    assert.equal(dp.readStats(ID)![Dir.FROM_WL]![Verdict.TO_PEER]!.packets, 0n);
    assert.equal(dp.readStats(ID)![Dir.FROM_WL]![Verdict.TO_DP]!.packets, 0n);
  });

  it('the flow API sets the bit before its first entry and keeps the other flags', function () {
    const st = twoPairs({ vin: dp.lo, vex: dp.veth, vin2: 31, vex2: 32, dp: dp.lo }, Mode.FWD);
    dp.seed({ ...st, configFlags: ConfigFlag.TRACE_ID | 7 }, [ID]);
    const pinRoot = path.dirname(dp.obj.mapPinPath('neuv_flows')!);
    const api = Flows.open(pinRoot);
    try {
      api.offload({ id: ID, proto: 'tcp', src: '10.1.0.2:40000', dst: '10.1.0.9:80' });
    } finally {
      api.close();
    }
    assert.equal(cfgFlags(), (ConfigFlag.TRACE_ID | 7 | ConfigFlag.FLOWS) >>> 0);
    const r = dp.run('vin', tcpOut(), dp.lo);
    assert.equal(r.dataOut.toString('hex'), tcpOut().toString('hex'), 'the offloaded flow takes the fast path');
  });
});

describe('hot path: the build tag', function () {
  leakChecks();
  it('stays in the .rodata bound to every program, with no code reading it', function () {
    requireKernel(this);
    const tag = 0x6b5a4c3d;
    const dp = ProgFixture.create({ neuv_build_tag: tag });
    try {
      const want = Buffer.alloc(4);
      want.writeUInt32LE(tag);
      for (const [hook, fd] of Object.entries(dp.progs)) {
        const id = progInfo(fd).id;
        const prog = JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(id)])) as { map_ids?: number[] };
        const rodata = (prog.map_ids ?? []).filter((m) => (JSON.parse(sh('bpftool', ['-j', 'map', 'show', 'id', String(m)])) as { name: string }).name.endsWith('.rodata'));
        assert.equal(rodata.length, 1, `${hook}: one .rodata map bound`);
        const dump = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'id', String(rodata[0])])) as Array<{ value: string[] | number[] }>;
        const raw = Buffer.from((dump[0]!.value as Array<string | number>).map((x) => Number(x)));
        assert.ok(raw.includes(want), `${hook}: the tag's bytes are in its .rodata`);
      }
    } finally {
      runCleanups();
    }
  });
});
