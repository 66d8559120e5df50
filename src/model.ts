/**
 * Reference model of the datapath, written from DATAPATH.md section 3 (and the
 * decisions recorded with the BPF task), not from bpf/neuv.bpf.c. It is the
 * oracle of the differential test: for a map state, a hook, an ingress
 * ifindex and a frame, what the program must return, where the frame goes,
 * what the skb holds afterwards and which counters move.
 *
 * Pure: no kernel, no I/O, inputs never mutated.
 */
import { Dir, Mode, PortFlag, Reason, Role, VBR_IFINDEX, Verdict } from './layout';
import { isUcmac, ucmac } from './mac';

export interface PortEntry {
  ifindex: number;
  peerIfindex: number;
  flags: number;
  id: number;
  role: 1 | 2;
  mode: number;
  mac: Uint8Array /* 6 */;
}

export interface ModelState {
  /** neuv_ports, by ingress ifindex. */
  ports: Map<number, PortEntry>;
  /** neuv_ids, by port id. */
  ids: Map<number, { vinIfindex: number; vexIfindex: number }>;
  /** neuv_config.dp_ifindex; 0 means NEUV_VBR_IFINDEX. */
  dpIfindex: number;
  /**
   * Whether bpf_clone_redirect to the DP succeeds (the DP port exists and is
   * up). Not a map: a fact of the environment. Default true.
   */
  cloneOk?: boolean;
}

export type Hook = 'vin' | 'vex' | 'vbr';

export interface Emit {
  ifindex: number;
  peer: boolean /* via redirect_peer */;
  frame: Uint8Array;
}

export interface Outcome {
  ret: 'ok' | 'shot' | 'redirect'; // TC_ACT_OK=0, TC_ACT_SHOT=2, TC_ACT_REDIRECT=7
  redirect?: Emit; // where the (possibly rewritten) frame goes
  copy?: Emit; // TAP clone
  frameOut: Uint8Array; // the skb data after the program (what BPF_PROG_TEST_RUN data_out shows)
  /** Counters bumped in neuv_stats[id] (only if that entry exists: the program never creates one). */
  stats?: { id: number; dir: 0 | 1; verdicts: number[] /* verdict indexes incremented, e.g. [COPY, TO_PEER] */ };
  reason?: number; // neuv_reason incremented in neuv_global, if any
}

export const TC_ACT_OK = 0;
export const TC_ACT_SHOT = 2;
export const TC_ACT_REDIRECT = 7;

/** The TC_ACT_* value of an outcome's ret. */
export function retval(ret: Outcome['ret']): number {
  return ret === 'ok' ? TC_ACT_OK : ret === 'shot' ? TC_ACT_SHOT : TC_ACT_REDIRECT;
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
  if (!entry) return { ret: 'ok', frameOut: frame, reason: Reason.PASS_NO_PORT };

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
    return { ret: 'redirect', redirect: toDp, frameOut: rewritten, stats: counted([Verdict.TO_DP]) };
  }
  // TAP: the copy is rewritten, the original restored and sent on.
  if (state.cloneOk === false) {
    return { ...anythingElse, reason: Reason.CLONE_FAILED };
  }
  return { ret: 'redirect', redirect: toPeer, copy: toDp, frameOut: frame, stats: counted([Verdict.COPY, Verdict.TO_PEER]) };
}

/** vbr-neuv ingress: frames the DP sends back. */
function decideVbr(state: ModelState, frame: Uint8Array): Outcome {
  const pass: Outcome = { ret: 'ok', frameOut: frame, reason: Reason.PASS_NO_PAIR };
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
