/**
 * Reference model of the datapath, written from docs/datapath.md section 3 (and the
 * decisions recorded with the BPF task), not from bpf/neuv.bpf.c. It is the
 * oracle of the differential test: for a map state, a hook, an ingress
 * ifindex and a frame, what the program must return, where the frame goes,
 * what the skb holds afterwards and which counters move.
 *
 * Pure: no kernel, no I/O, inputs never mutated.
 */
import { ConfigFlag, Dir, FlowVerdict, IPPROTO_TCP, IPPROTO_UDP, Mode, PortFlag, Reason, Role, VBR_IFINDEX, Verdict } from '../src/layout';
import { isUcmac, ucmac } from '../src/mac';
import type { Hook, MapState, PortEntry } from '../harness/prog-fixture';

export type { Hook, PortEntry };

/** The maps' state (harness/prog-fixture.ts writes it into the real maps) and what else a decision depends on. */
export interface ModelState extends MapState {
  /**
   * Whether bpf_clone_redirect to the DP succeeds (the DP port exists and is
   * up). Not a map: a fact of the environment. Default true.
   */
  cloneOk?: boolean;
  /** neuv_flows (flow offload), by flowKeyString(). Absent: empty. */
  flows?: Map<string, ModelFlow>;
  /** The datapath's clock when the frame is seen (bpf_ktime_get_coarse_ns()), for flow expiry (default 0). */
  now?: bigint;
}

/**
 * A key of neuv_flows: pair id, IP protocol, and the two endpoints ordered
 * so both directions of a flow give the same key (A is the lower
 * (address, port), address first). Addresses as unsigned 32-bit numbers
 * (network order read as big-endian), ports 0 unless TCP or UDP.
 */
export interface ModelFlowKey {
  id: number;
  proto: number;
  addrA: number;
  portA: number;
  addrB: number;
  portB: number;
}

/** A value of neuv_flows (docs/flow-offload.md). */
export interface ModelFlow {
  key: ModelFlowKey;
  /** 1 allow (fast path), 2 deny; anything else is no decision (as no entry). */
  verdict: number;
  deadlineNs: bigint;
  idleNs: bigint;
  lastNs: bigint;
  packets: bigint;
  bytes: bigint;
}

export function flowKeyString(k: ModelFlowKey): string {
  return `${k.id}/${k.proto}/${k.addrA}:${k.portA}/${k.addrB}:${k.portB}`;
}


export interface Emit {
  ifindex: number;
  peer: boolean /* via redirect_peer */;
  frame: Uint8Array;
}

export interface Outcome {
  ret: 'pass' | 'shot' | 'redirect'; // TC_ACT_UNSPEC=-1 (pass on: the next filter, else the stack), TC_ACT_SHOT=2, TC_ACT_REDIRECT=7
  redirect?: Emit; // where the (possibly rewritten) frame goes
  copy?: Emit; // TAP clone
  frameOut: Uint8Array; // the skb data after the program (what BPF_PROG_TEST_RUN data_out shows)
  /**
   * Counters bumped: TO_DP..DROP in neuv_stats[id] (only if that entry
   * exists: the program never creates one); FAST and FLOW_DROP in
   * neuv_flow_stats[id] (created at the first).
   */
  stats?: { id: number; dir: 0 | 1; verdicts: number[] /* verdict indexes incremented, e.g. [COPY, TO_PEER] */ };
  reason?: number; // neuv_reason incremented in neuv_global, if any
  /** What the frame did to neuv_flows: 'hit' (last := now, packets += 1, bytes += length) or 'delete'. */
  flow?: { key: string; op: 'hit' | 'delete' };
}

/** neuv_flows after a frame with this outcome (a new map; the state is not changed). */
export function flowsAfter(state: ModelState, o: Outcome, frameLength: number): Map<string, ModelFlow> {
  const flows = new Map(state.flows ?? []);
  if (!o.flow) return flows;
  if (o.flow.op === 'delete') flows.delete(o.flow.key);
  else {
    const e = flows.get(o.flow.key)!;
    flows.set(o.flow.key, { ...e, lastNs: state.now ?? 0n, packets: e.packets + 1n, bytes: e.bytes + BigInt(frameLength) });
  }
  return flows;
}


/**
 * The flow key of an IPv4 frame, or undefined when the datapath builds none
 * (the frame goes to the DP as without offload): IPv4 header shorter than 20
 * bytes in the frame, version not 4, IHL < 5, any fragment (MF or an
 * offset), TCP with fewer than 14 header bytes (to the flags), UDP with
 * fewer than 4 (the ports). Also returns the TCP flags (0 otherwise).
 */
export function flowKeyOfFrame(id: number, f: Uint8Array): { key: ModelFlowKey; tcpFlags: number } | undefined {
  const L3 = ETH_HLEN;
  if (f.length < L3 + 20) return undefined;
  const version = f[L3]! >> 4;
  const ihl = (f[L3]! & 0x0f) * 4;
  if (version !== 4 || ihl < 20) return undefined;
  if ((((f[L3 + 6]! << 8) | f[L3 + 7]!) & 0x3fff) !== 0) return undefined;
  const proto = f[L3 + 9]!;
  let sp = 0;
  let dp = 0;
  let tcpFlags = 0;
  if (proto === IPPROTO_TCP || proto === IPPROTO_UDP) {
    const l4 = L3 + ihl;
    if (f.length < l4 + 4) return undefined;
    sp = (f[l4]! << 8) | f[l4 + 1]!;
    dp = (f[l4 + 2]! << 8) | f[l4 + 3]!;
    if (proto === IPPROTO_TCP) {
      if (f.length < l4 + 14) return undefined;
      tcpFlags = f[l4 + 13]!;
    }
  }
  const be32 = (o: number) => ((f[o]! << 24) | (f[o + 1]! << 16) | (f[o + 2]! << 8) | f[o + 3]!) >>> 0;
  const sa = be32(L3 + 12);
  const da = be32(L3 + 16);
  const srcIsA = sa < da || (sa === da && sp <= dp);
  const key = srcIsA
    ? { id: id & 0xffff, proto, addrA: sa, portA: sp, addrB: da, portB: dp }
    : { id: id & 0xffff, proto, addrA: da, portA: dp, addrB: sa, portB: sp };
  return { key, tcpFlags };
}

const TCP_FIN = 0x01;
const TCP_RST = 0x04;

/** Whether an entry is expired at `now` (docs/flow-offload.md, bpf/neuv.h struct neuv_flow). */
export function flowExpired(e: Pick<ModelFlow, 'deadlineNs' | 'idleNs' | 'lastNs'>, now: bigint): boolean {
  if (e.deadlineNs !== 0n && now >= e.deadlineNs) return true;
  return e.idleNs !== 0n && e.lastNs !== 0n && now > e.lastNs && now - e.lastNs >= e.idleNs;
}

export const TC_ACT_UNSPEC = -1;
export const TC_ACT_SHOT = 2;
export const TC_ACT_REDIRECT = 7;

/** The TC_ACT_* value of an outcome's ret. */
export function retval(ret: Outcome['ret']): number {
  return ret === 'pass' ? TC_ACT_UNSPEC : ret === 'shot' ? TC_ACT_SHOT : TC_ACT_REDIRECT;
}

const ETH_HLEN = 14;
const ETH_P_IP = 0x0800;
const ETH_P_IPV6 = 0x86dd;
const DA = 0;
const SA = 6;

function withMac(frame: Uint8Array, off: number, mac: Uint8Array): Uint8Array {
  const out = Uint8Array.from(frame);
  out.set(mac.subarray(0, 6), off);
  return out;
}

function macAt(frame: Uint8Array, off: number): Uint8Array {
  return frame.subarray(off, off + 6);
}

function sameMac(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (a[i] !== b[i]) return false;
  return true;
}

function dpOf(state: ModelState): number {
  return state.dpIfindex === 0 ? VBR_IFINDEX : state.dpIfindex;
}

/** The datapath's decision for one frame. */
export function decide(state: ModelState, hook: Hook, ingressIfindex: number, frame: Uint8Array): Outcome {
  return hook === 'vbr' ? decideVbr(state, frame) : decidePort(state, hook, ingressIfindex, frame);
}

/** vin ingress (from the workload) and vex ingress (towards the workload). */
function decidePort(state: ModelState, hook: 'vin' | 'vex', ingressIfindex: number, frame: Uint8Array): Outcome {
  const entry = state.ports.get(ingressIfindex);
  if (!entry) return { ret: 'pass', frameOut: frame, reason: Reason.PASS_NO_PORT };

  const id = entry.id & 0xffff;
  const dir = hook === 'vin' ? Dir.FROM_WL : Dir.TO_WL;
  const counted = (verdicts: number[]) => ({ id, dir, verdicts });
  const dropped = (reason: number): Outcome => ({ ret: 'shot', frameOut: frame, stats: counted([Verdict.DROP]), reason });
  const toPeer: Emit = { ifindex: entry.peerIfindex, peer: (entry.flags & PortFlag.REDIRECT_PEER) !== 0, frame };

  if (entry.role !== (hook === 'vin' ? Role.VIN : Role.VEX)) return dropped(Reason.DROP_ROLE);
  if (entry.mode !== Mode.FWD && entry.mode !== Mode.TAP && entry.mode !== Mode.BYPASS) {
    return dropped(Reason.DROP_MODE);
  }

  // "Anything else": BYPASS, frames too short to have an Ethernet header, and every non-match.
  const anythingElse: Outcome = { ret: 'redirect', redirect: toPeer, frameOut: frame, stats: counted([Verdict.TO_PEER]) };
  if (entry.mode === Mode.BYPASS || frame.length < ETH_HLEN) return anythingElse;

  const etherType = (frame[12]! << 8) | frame[13]!;
  const l3 = etherType === ETH_P_IP || (etherType === ETH_P_IPV6 && (entry.flags & PortFlag.IPV6_TO_DP) !== 0);
  const unicast = (frame[0]! & 1) === 0;
  // vex: the workload's MAC as destination; vin: as source (any unicast destination).
  const off = hook === 'vex' ? DA : SA;
  const match = l3 && unicast && sameMac(macAt(frame, off), entry.mac);
  if (!match) return anythingElse;

  const rewritten = withMac(frame, off, ucmac(id));
  const toDp: Emit = { ifindex: dpOf(state), peer: false, frame: rewritten };
  if (entry.mode === Mode.FWD) {
    const sent: Outcome = { ret: 'redirect', redirect: toDp, frameOut: rewritten, stats: counted([Verdict.TO_DP]) };
    // Flow offload: an IPv4 frame with a flow key asks the DP's decisions first (once something wrote neuv_flows).
    const flowsOn = ((state.configFlags ?? 0) & ConfigFlag.FLOWS) !== 0;
    const fk = flowsOn && etherType === ETH_P_IP ? flowKeyOfFrame(id, frame) : undefined;
    if (!fk) return sent;
    const key = flowKeyString(fk.key);
    const e = state.flows?.get(key);
    if (!e || (e.verdict !== FlowVerdict.ALLOW && e.verdict !== FlowVerdict.DENY)) return sent;
    const now = state.now ?? 0n;
    if (flowExpired(e, now)) return { ...sent, flow: { key, op: 'delete' } };
    if (e.verdict === FlowVerdict.ALLOW && fk.key.proto === IPPROTO_TCP && (fk.tcpFlags & (TCP_FIN | TCP_RST)) !== 0) {
      return { ...sent, flow: { key, op: 'delete' } }; // the flow ends: the DP sees its closing frames
    }
    if (e.verdict === FlowVerdict.ALLOW) {
      return { ret: 'redirect', redirect: toPeer, frameOut: frame, stats: counted([Verdict.FAST]), flow: { key, op: 'hit' } };
    }
    return { ret: 'shot', frameOut: frame, stats: counted([Verdict.FLOW_DROP]), flow: { key, op: 'hit' } };
  }
  // TAP: the copy is rewritten, the original restored and sent on.
  if (state.cloneOk === false) {
    return { ...anythingElse, reason: Reason.CLONE_FAILED };
  }
  return { ret: 'redirect', redirect: toPeer, copy: toDp, frameOut: frame, stats: counted([Verdict.COPY, Verdict.TO_PEER]) };
}

/** vbr-neuv ingress: frames the DP sends back. */
function decideVbr(state: ModelState, frame: Uint8Array): Outcome {
  const pass: Outcome = { ret: 'pass', frameOut: frame, reason: Reason.PASS_NO_PAIR };
  if (frame.length < ETH_HLEN) return pass;

  // DA is checked first; a UCMAC DA with no pair passes even if the SA is a UCMAC.
  let off: number;
  let dir: 0 | 1;
  if (isUcmac(macAt(frame, DA))) {
    off = DA;
    dir = Dir.TO_WL;
  } else if (isUcmac(macAt(frame, SA))) {
    off = SA;
    dir = Dir.FROM_WL;
  } else {
    return pass;
  }
  const id = (frame[off + 4]! << 8) | frame[off + 5]!;
  const pair = state.ids.get(id);
  if (!pair) return pass;

  const target = dir === Dir.TO_WL ? pair.vinIfindex : pair.vexIfindex;
  const dropped = (reason: number): Outcome => ({ ret: 'shot', frameOut: frame, stats: { id, dir, verdicts: [Verdict.DROP] }, reason });
  const entry = state.ports.get(target);
  if (!entry) return dropped(Reason.DROP_NO_PEER);
  if (entry.mode === Mode.TAP || entry.mode === Mode.BYPASS) return dropped(Reason.DROP_INJECT);
  if (entry.mode !== Mode.FWD) return dropped(Reason.DROP_MODE);

  const rewritten = withMac(frame, off, entry.mac);
  return {
    ret: 'redirect',
    // The target port itself receives: its own SELF_PEER flag decides (REDIRECT_PEER is about its pair-mate).
    redirect: { ifindex: target, peer: (entry.flags & PortFlag.SELF_PEER) !== 0, frame: rewritten },
    frameOut: rewritten,
    stats: { id, dir, verdicts: [Verdict.FROM_DP] },
  };
}
