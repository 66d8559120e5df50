/** enums, flags and constants of bpf/neuv.h, and their names. */

/** enum neuv_const: constants shared with bpf/neuv.h (checked against BTF like the enums below). */
export const Const = {
  UCMAC_B0: 0x4e,
  UCMAC_B1: 0x65,
  UCMAC_B2: 0x75,
  UCMAC_B3: 0x56,
  VBR_IFINDEX: 10000000,
  VTH_IFINDEX: 10000001,
  STATS_VERDICTS: 5,
  FLOW_VERDICTS: 2,
  FLOWS_DEFAULT: 65536,
  TRACE_RING_SIZE: 256 * 1024,
  MAX_PORTS: 131072,
  MAX_IDS: 65536,
} as const;

export const UCMAC_PREFIX = [Const.UCMAC_B0, Const.UCMAC_B1, Const.UCMAC_B2, Const.UCMAC_B3] as const; // "NeuV"
export const VBR_IFINDEX = Const.VBR_IFINDEX;
export const VTH_IFINDEX = Const.VTH_IFINDEX;
export const MAX_PORTS = Const.MAX_PORTS;
export const MAX_IDS = Const.MAX_IDS;

export const Mode = { NONE: 0, FWD: 1, TAP: 2, BYPASS: 3, DROP: 4 } as const;
export type ModeValue = (typeof Mode)[keyof typeof Mode];
export const Role = { VIN: 1, VEX: 2 } as const;
export type RoleValue = (typeof Role)[keyof typeof Role];
export const Dir = { TO_WL: 0, FROM_WL: 1 } as const;
export const DIR_COUNT = 2;
export const Verdict = { TO_DP: 0, TO_PEER: 1, COPY: 2, FROM_DP: 3, DROP: 4, FAST: 5, FLOW_DROP: 6 } as const;
/** NEUV_V_MAX: every verdict, and "none" in a struct neuv_decision. */
export const VERDICT_COUNT = 7;
/** NEUV_STATS_VERDICTS: the verdicts struct neuv_stats counts (TO_DP..DROP; fixed, so a pinned map stays compatible). */
export const STATS_VERDICT_COUNT = Const.STATS_VERDICTS;
/** NEUV_FLOW_VERDICTS: the verdicts struct neuv_flow_stats counts (FAST, FLOW_DROP), from Verdict.FAST on. */
export const FLOW_VERDICT_COUNT = Const.FLOW_VERDICTS;
/** enum neuv_flow_verdict: struct neuv_flow.verdict. */
export const FlowVerdict = { NONE: 0, ALLOW: 1, DENY: 2 } as const;
export type FlowVerdictValue = (typeof FlowVerdict)[keyof typeof FlowVerdict];
/** NEUV_FLOWS_DEFAULT: max_entries of neuv_flows unless `load --flows N` says otherwise. */
export const FLOWS_DEFAULT = Const.FLOWS_DEFAULT;
export const Reason = {
  NONE: 0,
  PASS_NO_PAIR: 1,
  PASS_NO_PORT: 2,
  DROP_MODE: 3,
  DROP_INJECT: 4,
  DROP_ROLE: 5,
  DROP_NO_PEER: 6,
  CLONE_FAILED: 7,
  REWRITE_FAILED: 8,
} as const;
export const REASON_COUNT = 9;
/** enum neuv_port_flag: struct neuv_port.flags (NEUV_F_*). */
export const PortFlag = { IPV6_TO_DP: 1 << 0, REDIRECT_PEER: 1 << 1, QDISC_OURS: 1 << 2, SELF_PEER: 1 << 3 } as const;
/**
 * enum neuv_cfg_flag: neuv_config.flags (NEUV_CFG_*). With TRACE_ID, trace only the pair whose id is
 * flags & TRACE_ID_MASK. FLOWS: neuv_flows may hold entries (the programs look flows up only then; set
 * by whoever writes the map, never cleared).
 */
export const ConfigFlag = { TRACE_ID_MASK: 0xffff, TRACE_ID: 1 << 16, FLOWS: 1 << 17 } as const;
/** enum neuv_hook: the program that decided (VIN/VEX equal Role). */
export const Hook = { VIN: 1, VEX: 2, VBR: 3 } as const;
export type HookValue = (typeof Hook)[keyof typeof Hook];
export const HOOK_NAMES: Record<number, string> = { 1: 'vin', 2: 'vex', 3: 'vbr' };
/** enum neuv_trace_flag: struct neuv_decision.flags (NEUV_TF_*). */
export const TraceFlag = { PEER: 1 << 0, PARSED: 1 << 1, SHORT: 1 << 2, FLOW: 1 << 3, FLOW_EXPIRED: 1 << 4, FLOW_END: 1 << 5 } as const;
export const TRACE_RING_SIZE = Const.TRACE_RING_SIZE;

export const MODE_NAMES: Record<number, string> = { 0: 'none', 1: 'fwd', 2: 'tap', 3: 'bypass', 4: 'drop' };
export const VERDICT_NAMES = ['to_dp', 'to_peer', 'copy', 'from_dp', 'drop', 'fast', 'flow_drop'] as const;
export const DIR_NAMES = ['to_wl', 'from_wl'] as const;
export const REASON_NAMES = [
  'none',
  'pass_no_pair',
  'pass_no_port',
  'drop_mode',
  'drop_inject',
  'drop_role',
  'drop_no_peer',
  'clone_failed',
  'rewrite_failed',
] as const;

export function parseMode(s: string): ModeValue {
  const m = (Mode as Record<string, ModeValue>)[s.toUpperCase()];
  if (m === undefined || m === Mode.NONE) {
    throw new Error(`unknown mode '${s}' (expected fwd, tap, bypass or drop)`);
  }
  return m;
}
