/**
 * enums, flags and constants of bpf/neuv.h (generated.ts, from the object's
 * BTF) and what is derived from them: their value types, lower-case names
 * and the constants under their short names.
 */
import { Const, Dir, FlowVerdict, Hook, Mode, Reason, Role, Verdict } from './generated';

export { ConfigFlag, Const, DIR_COUNT, Dir, FlowVerdict, Hook, MODE_COUNT, Mode, PortFlag, REASON_COUNT, Reason, Role, TraceFlag, VERDICT_COUNT, Verdict } from './generated';

export const UCMAC_PREFIX = [Const.UCMAC_B0, Const.UCMAC_B1, Const.UCMAC_B2, Const.UCMAC_B3] as const; // "NeuV"
export const VBR_IFINDEX = Const.VBR_IFINDEX;
export const VTH_IFINDEX = Const.VTH_IFINDEX;
export const MAX_PORTS = Const.MAX_PORTS;
export const MAX_IDS = Const.MAX_IDS;
/** NEUV_STATS_VERDICTS: the verdicts struct neuv_stats counts (TO_DP..DROP; fixed, so a pinned map stays compatible). */
export const STATS_VERDICT_COUNT = Const.STATS_VERDICTS;
/** NEUV_FLOW_VERDICTS: the verdicts struct neuv_flow_stats counts (FAST, FLOW_DROP), from Verdict.FAST on. */
export const FLOW_VERDICT_COUNT = Const.FLOW_VERDICTS;
/** NEUV_FLOWS_DEFAULT: max_entries of neuv_flows unless `load --flows N` says otherwise. */
export const FLOWS_DEFAULT = Const.FLOWS_DEFAULT;
export const TRACE_RING_SIZE = Const.TRACE_RING_SIZE;

type ValueOf<T> = T[keyof T];
export type ModeValue = ValueOf<typeof Mode>;
export type RoleValue = ValueOf<typeof Role>;
export type HookValue = ValueOf<typeof Hook>;
export type FlowVerdictValue = ValueOf<typeof FlowVerdict>;

/** An enum's members in lower case, indexed by value (VERDICT_NAMES[Verdict.TO_PEER] is 'to_peer'). */
function namesOf<E extends Record<string, number>>(e: E): ReadonlyArray<Lowercase<Extract<keyof E, string>>> {
  const out: Array<Lowercase<Extract<keyof E, string>>> = [];
  for (const [k, v] of Object.entries(e)) out[v] = k.toLowerCase() as Lowercase<Extract<keyof E, string>>;
  return out;
}

export const MODE_NAMES: Record<number, string> = namesOf(Mode);
export const HOOK_NAMES: Record<number, string> = namesOf(Hook);
export const VERDICT_NAMES = namesOf(Verdict);
export const DIR_NAMES = namesOf(Dir);
export const REASON_NAMES = namesOf(Reason);

export function parseMode(s: string): ModeValue {
  const m = (Mode as Record<string, ModeValue>)[s.toUpperCase()];
  if (m === undefined || m === Mode.NONE) {
    throw new Error(`unknown mode '${s}' (expected fwd, tap, bypass or drop)`);
  }
  return m;
}
