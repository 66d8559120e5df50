/**
 * Scenario 4: per-frame cost of each datapath path under BPF_PROG_TEST_RUN
 * (the kernel's mean ns per run over `repeat` runs), beside an empty TC
 * program (`r0 = 0; exit`) run the same way, as a ratio.
 *
 * test_run runs the program `repeat` times on the same skb, so a rewrite
 * made by one run is what the next run sees. To keep every run on the path
 * being measured, the pair's workload MAC is set to its own UCMAC for the FWD
 * paths: DA := UCMAC (vex), SA := UCMAC (vin) and DA := M (vbr-neuv) then
 * write the bytes that are already there, and the next run matches again.
 * The work (lookups, compare, bpf_skb_store_bytes, redirect) is the same as
 * with any other MAC. TAP restores the MAC itself. Each path's counters are
 * checked after every measurement: the expected verdict must have grown by
 * `repeat`.
 *
 * In TAP the copy really leaves: bpf_clone_redirect transmits it on a veth
 * whose peer is up (the DP port stand-in), so that path includes an skb
 * clone and a veth transmit.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BpfObject, closeFd, loadTrivialTcProg, progInfo, testRun } from '../src/bpf';
import { features } from '../src/features';
import {
  ConfigFlag,
  FlowVerdict,
  Mode,
  PortFlag,
  REASON_NAMES,
  Role,
  VERDICT_NAMES,
  addFlowStats,
  emptyStats,
  encodeConfig,
  encodeFlow,
  encodeFlowKey,
  encodeId,
  encodePort,
  encodeStats,
  flowKeyOf,
  u32Key,
} from '../src/layout';
import { ucmac } from '../src/mac';
import { ProgFixture } from '../harness/prog-fixture';
import { kernelUnavailable } from '../harness/kernel';
import { cleanupDepth, runCleanupsTo } from '../harness/proc';
import { Summary, onCleanup, pairedRatio, progress, sh, summary, tmpDir, shResult } from './util';

const SKB_CTX_SIZE = 192; // sizeof(struct __sk_buff)
const SKB_CTX_IFINDEX = 40; // offsetof(struct __sk_buff, ifindex)
const ID = 0x1234;
const M = Buffer.from('0242ac110002', 'hex');
const GW = Buffer.from('0242ac110001', 'hex');
const OTHER = Buffer.from('0242ac110099', 'hex');
const UC = ucmac(ID);
const FAST_DPORT = 10; // the UDP port of vex-fast's offloaded flow

/** A 64-byte IPv4/UDP frame 10.201.0.1:40000 -> 10.201.0.2:dport (valid header, so every parser goes as deep as it would on the wire). */
export function udpFrame(da: Buffer, sa: Buffer, dport = 9): Buffer {
  const b = Buffer.alloc(64);
  da.copy(b, 0);
  sa.copy(b, 6);
  b.writeUInt16BE(0x0800, 12);
  b[14] = 0x45;
  b.writeUInt16BE(64 - 14, 16);
  b[22] = 64;
  b[23] = 17;
  Buffer.from([10, 201, 0, 1]).copy(b, 26);
  Buffer.from([10, 201, 0, 2]).copy(b, 30);
  let sum = 0;
  for (let i = 14; i < 34; i += 2) sum += b.readUInt16BE(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  b.writeUInt16BE(~sum & 0xffff, 24);
  b.writeUInt16BE(40000, 34);
  b.writeUInt16BE(dport, 36);
  b.writeUInt16BE(64 - 34, 38);
  return b;
}

/*
 * Reference floors, compiled here with the Makefile's clang flags: the least
 * a map-driven redirect can do. ref_redirect: one hash lookup keyed by the
 * ingress ifindex, then bpf_redirect to the ifindex found (the bare bones of
 * BYPASS); ref_rewrite: the same plus a 6-byte bpf_skb_store_bytes (of FWD).
 * No counters, no checks. They show how much of a path's cost any design
 * with a lookup and a helper call pays on this machine.
 */
const REF_SRC = `
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "Dual BSD/GPL";
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} ref_ports SEC(".maps");
static __always_inline __u32 *peer_of(struct __sk_buff *skb)
{
	__u32 k = skb->ingress_ifindex ? skb->ingress_ifindex : skb->ifindex;
	return bpf_map_lookup_elem(&ref_ports, &k);
}
SEC("tc") int ref_redirect(struct __sk_buff *skb)
{
	__u32 *peer = peer_of(skb);
	return peer ? bpf_redirect(*peer, 0) : TC_ACT_OK;
}
SEC("tc") int ref_rewrite(struct __sk_buff *skb)
{
	__u8 m[6] = { 0x4e, 0x65, 0x75, 0x56, 0x12, 0x34 };
	__u32 *peer = peer_of(skb);
	if (!peer)
		return TC_ACT_OK;
	if (bpf_skb_store_bytes(skb, 0, m, 6, 0))
		return TC_ACT_SHOT;
	return bpf_redirect(*peer, 0);
}
`;

function compileRef(): string | undefined {
  const dir = tmpDir();
  const src = path.join(dir, 'ref.bpf.c');
  const obj = path.join(dir, 'ref.bpf.o');
  fs.writeFileSync(src, REF_SRC);
  const arch = sh('gcc', ['-print-multiarch'], { allowFail: true }).trim() || 'x86_64-linux-gnu';
  const r = shResult(process.env.CLANG ?? 'clang', ['-O2', '-g', '-target', 'bpf', '-Wall', `-I/usr/include/${arch}`, '-c', src, '-o', obj], { allowFail: true });
  if (r.code !== 0) {
    progress(`per-frame cost: reference programs not built (${r.stderr.trim().split('\n')[0]})`);
    return undefined;
  }
  return obj;
}

type Hook = 'vin' | 'vex' | 'vbr' | 'empty' | 'ref_redirect' | 'ref_rewrite';
interface PathDef {
  id: string;
  label: string;
  hook: Hook;
  frame: Buffer;
  ifindex: 'lo' | 'veth';
  mode?: number;
  mac?: Buffer;
  retval: number;
  /** neuv_config.flags for the run (default 0: no flow lookups). */
  configFlags?: number;
  /** [dir, verdict] counters of the pair that must grow by `repeat` (fast/flow_drop: neuv_flow_stats), or a global reason. */
  expect?: { counters?: Array<[number, string]>; reason?: string };
}

export interface ProgCostResult {
  params: { rounds: number; repeat: number };
  /** ns per frame, per path. */
  ns: Record<string, Summary>;
  /** path / empty program, paired per round. */
  ratio: Record<string, Summary>;
  /** path / its reference floor (BYPASS: ref-redirect; FWD: ref-rewrite), paired per round. */
  overFloor: Record<string, Summary>;
  labels: Record<string, string>;
  /** Per program: instructions the verifier processed, and the program's size after load (xlated BPF instructions). */
  insns: Record<string, { verified: number; xlated: number }>;
  notes: string[];
}

export function runProgCost(o: { quick: boolean }): ProgCostResult {
  const why = kernelUnavailable();
  if (why) throw new Error(`per-frame cost needs the kernel: ${why}`);
  const params = { rounds: o.quick ? 3 : 11, repeat: 1_000_000 };
  const depth = cleanupDepth(); // the fixture's netns and pin root are undone at the end
  try {
    // The loader's setting for this kernel: pkt_type is set before redirect_peer only where needed (< 6.15).
    const dp = ProgFixture.create({ neuv_set_pkt_type: features().pktTypeFix ? 1 : 0 });
    const vex = dp.lo; // ingress ifindex of the vex hook
    const vin = dp.veth; // ... of the vin hook
    const selfPeer = (PortFlag as Record<string, number>)['SELF_PEER'] ?? 0;
    const flags = PortFlag.REDIRECT_PEER | selfPeer; // both peers in other netns, as for a real intercepted pair
    dp.clear(dp.veth); // the DP port: a veth whose peer is up, so TAP copies are really transmitted
    dp.ids.update(u32Key(ID), encodeId({ vinIfindex: vin, vexIfindex: vex }));
    dp.stats.update(u32Key(ID), encodeStats(emptyStats()));
    const seed = (mode: number, mac: Buffer) => {
      dp.ports.update(u32Key(vex), encodePort({ peerIfindex: vin, flags, id: ID, role: Role.VEX, mode, mac }));
      dp.ports.update(u32Key(vin), encodePort({ peerIfindex: vex, flags, id: ID, role: Role.VIN, mode, mac }));
    };
    const V = (n: (typeof VERDICT_NAMES)[number]) => n;
    const paths: PathDef[] = [
      { id: 'empty', label: 'empty TC program (r0 = 0; exit)', hook: 'empty', frame: udpFrame(M, GW), ifindex: 'lo', retval: 0 },
      { id: 'vex-fwd', label: 'vex FWD: DA := UCMAC, redirect to vbr-neuv', hook: 'vex', frame: udpFrame(UC, GW), ifindex: 'lo', mode: Mode.FWD, mac: UC, retval: 7, expect: { counters: [[0, V('to_dp')]] } },
      {
        id: 'vex-fwd-flows',
        label: 'vex FWD with flow lookups on (NEUV_CFG_FLOWS), no entry for the flow: DA := UCMAC, redirect to vbr-neuv',
        hook: 'vex',
        frame: udpFrame(UC, GW),
        ifindex: 'lo',
        mode: Mode.FWD,
        mac: UC,
        retval: 7,
        configFlags: ConfigFlag.FLOWS,
        expect: { counters: [[0, V('to_dp')]] },
      },
      {
        id: 'vex-fast',
        label: 'vex FWD, the flow offloaded (ALLOW entry): redirect_peer to vin unchanged (FAST)',
        hook: 'vex',
        frame: udpFrame(M, GW, FAST_DPORT),
        ifindex: 'lo',
        mode: Mode.FWD,
        mac: M,
        retval: 7,
        configFlags: ConfigFlag.FLOWS,
        expect: { counters: [[0, V('fast')]] },
      },
      { id: 'vex-tap', label: 'vex TAP: copy (clone + veth transmit) to vbr-neuv, original to vin', hook: 'vex', frame: udpFrame(M, GW), ifindex: 'lo', mode: Mode.TAP, mac: M, retval: 7, expect: { counters: [[0, V('copy')], [0, V('to_peer')]] } },
      { id: 'vex-bypass', label: 'vex BYPASS: redirect_peer to vin', hook: 'vex', frame: udpFrame(M, GW), ifindex: 'lo', mode: Mode.BYPASS, mac: M, retval: 7, expect: { counters: [[0, V('to_peer')]] } },
      { id: 'vin-fwd', label: 'vin FWD: SA := UCMAC, redirect to vbr-neuv', hook: 'vin', frame: udpFrame(GW, UC), ifindex: 'veth', mode: Mode.FWD, mac: UC, retval: 7, expect: { counters: [[1, V('to_dp')]] } },
      { id: 'vbr-fwd', label: 'vbr-neuv FWD return: DA := M, redirect_peer to vin', hook: 'vbr', frame: udpFrame(UC, GW), ifindex: 'lo', mode: Mode.FWD, mac: UC, retval: 7, expect: { counters: [[0, V('from_dp')]] } },
      { id: 'vbr-pass', label: 'vbr-neuv pass: no UCMAC, passed on (TC_ACT_UNSPEC: the next filter, else the stack)', hook: 'vbr', frame: udpFrame(GW, OTHER), ifindex: 'lo', mode: Mode.FWD, mac: UC, retval: -1, expect: { reason: 'pass_no_pair' } },
    ];
    const ctx = (which: 'lo' | 'veth') => {
      const c = Buffer.alloc(SKB_CTX_SIZE);
      c.writeUInt32LE(which === 'lo' ? dp.lo : dp.veth, SKB_CTX_IFINDEX);
      return c;
    };
    const ctxs = { lo: ctx('lo'), veth: ctx('veth') };
    const empty = loadTrivialTcProg();
    if (empty < 0) throw new Error(`cannot load the empty program: errno ${-empty}`);
    onCleanup(() => closeFd(empty), 'empty program');
    const refObj = compileRef();
    let ref: BpfObject | undefined;
    if (refObj) {
      ref = BpfObject.open(refObj);
      const r = ref;
      onCleanup(() => r.close(), 'reference object');
      ref.load();
      const m = ref.map('ref_ports');
      const v = Buffer.alloc(4);
      v.writeUInt32LE(vin, 0);
      m.update(u32Key(vex), v);
      paths.push(
        { id: 'ref-redirect', label: 'floor: one hash lookup + bpf_redirect (reference program, no counters)', hook: 'ref_redirect', frame: udpFrame(M, GW), ifindex: 'lo', retval: 7 },
        { id: 'ref-rewrite', label: 'floor: one hash lookup + 6-byte store + bpf_redirect (reference program, no counters)', hook: 'ref_rewrite', frame: udpFrame(M, GW), ifindex: 'lo', retval: 7 },
      );
    }
    const fdOf = (h: Hook) => (h === 'empty' ? empty : h === 'ref_redirect' || h === 'ref_rewrite' ? ref!.progFd(h) : dp.progs[h]);

    // The offloaded flow of vex-fast (its own port, so vex-fwd-flows finds no entry).
    const flows = dp.obj.map('neuv_flows');
    const flowStats = dp.obj.map('neuv_flow_stats');
    flows.update(
      encodeFlowKey(flowKeyOf({ id: ID, proto: 17, src: '10.201.0.1', sport: 40000, dst: '10.201.0.2', dport: FAST_DPORT })),
      encodeFlow({ verdict: FlowVerdict.ALLOW, deadlineNs: 0n, idleNs: 0n, lastNs: 0n, packets: 0n, bytes: 0n }),
    );
    const readAll = () => {
      const s = dp.readStats(ID) ?? emptyStats();
      const f = flowStats.lookup(u32Key(ID));
      if (f) for (const c of flowStats.perCpuValues(f)) addFlowStats(s, c);
      return s;
    };
    const count = (p: PathDef): bigint[] => {
      const out: bigint[] = [];
      const s = readAll();
      for (const [d, v] of p.expect?.counters ?? []) out.push(s[d]![VERDICT_NAMES.indexOf(v as (typeof VERDICT_NAMES)[number])]!.packets);
      if (p.expect?.reason) out.push(dp.readGlobal()[REASON_NAMES.indexOf(p.expect.reason as (typeof REASON_NAMES)[number])]!);
      return out;
    };
    const runOnce = (p: PathDef, repeat: number): number => {
      if (p.mode !== undefined) seed(p.mode, p.mac!);
      dp.config.update(u32Key(0), encodeConfig({ dpIfindex: dp.veth, flags: p.configFlags ?? 0, traceUntil: 0n }));
      const before = count(p);
      const r = testRun(fdOf(p.hook), p.frame, { ctxIn: ctxs[p.ifindex], repeat });
      if (r.retval !== p.retval) throw new Error(`${p.id}: returned ${r.retval}, expected ${p.retval}`);
      const after = count(p);
      after.forEach((a, i) => {
        if (a - before[i]! !== BigInt(repeat)) throw new Error(`${p.id}: a counter grew by ${a - before[i]!}, expected ${repeat}: not the path meant`);
      });
      return r.duration;
    };

    progress(`per-frame cost: ${paths.length} paths x ${params.rounds} rounds x ${params.repeat} runs`);
    for (const p of paths) runOnce(p, 10_000); // warm-up and a check of every path
    const xs = new Map<string, number[]>(paths.map((p) => [p.id, []]));
    for (let r = 0; r < params.rounds; r++) {
      for (let i = 0; i < paths.length; i++) {
        const p = paths[(i + r) % paths.length]!;
        xs.get(p.id)!.push(runOnce(p, params.repeat));
      }
    }
    const ns: Record<string, Summary> = {};
    const ratio: Record<string, Summary> = {};
    const labels: Record<string, string> = {};
    for (const p of paths) {
      ns[p.id] = summary(xs.get(p.id)!);
      labels[p.id] = p.label;
      if (p.id !== 'empty') ratio[p.id] = pairedRatio(xs.get(p.id)!, xs.get('empty')!);
    }
    const overFloor: Record<string, Summary> = {};
    if (xs.has('ref-redirect')) {
      const floors: Record<string, string> = { 'vex-bypass': 'ref-redirect', 'vex-fwd': 'ref-rewrite', 'vin-fwd': 'ref-rewrite', 'vbr-fwd': 'ref-rewrite' };
      for (const [id, f] of Object.entries(floors)) overFloor[id] = pairedRatio(xs.get(id)!, xs.get(f)!);
    }
    const insns: ProgCostResult['insns'] = {};
    for (const [hook, fd] of Object.entries(dp.progs)) {
      const info = progInfo(fd);
      insns[hook] = { verified: info.verifiedInsns, xlated: info.xlatedLen / 8 };
    }
    return {
      params,
      ns,
      ratio,
      overFloor,
      labels,
      insns,
      notes: [
        'Flow lookups: the programs look neuv_flows up only once NEUV_CFG_FLOWS is set (whoever writes the map sets it); vex-fwd runs without it, vex-fwd-flows with it and no entry for its flow (the lookup that misses), vex-fast with an ALLOW entry.',
        'BPF_PROG_TEST_RUN does not perform the redirect (the program returns TC_ACT_REDIRECT and the kernel forwards nothing): these are program costs, not forwarding costs.',
        'FWD paths run with the workload MAC set to its own UCMAC, so the rewrite leaves the frame as the next run needs it (test_run reuses one skb for all runs); the counters confirm every run took the path.',
        'TAP includes a real skb clone and a veth transmit (bpf_clone_redirect is carried out under test_run).',
      ],
    };
  } finally {
    runCleanupsTo(depth);
  }
}
