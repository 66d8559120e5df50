/**
 * The structs of bpf/neuv.h as declared layouts (StructDecl: size, members'
 * offsets and sizes), the enums the BTF check compares, and the maps.
 */
import { StructDecl } from './fields';
import { ConfigFlag, Const, DIR_COUNT, Dir, FLOW_VERDICT_COUNT, FlowVerdict, Hook, Mode, PortFlag, REASON_COUNT, Reason, Role, STATS_VERDICT_COUNT, TraceFlag, VERDICT_COUNT, Verdict } from './enums';

export type { StructDecl } from './fields';

export const PortDecl: StructDecl = {
  name: 'neuv_port',
  size: 24,
  members: [
    { name: 'peer_ifindex', offset: 0, size: 4 },
    { name: 'flags', offset: 4, size: 4 },
    { name: 'id', offset: 8, size: 2 },
    { name: 'role', offset: 10, size: 1 },
    { name: 'mode', offset: 11, size: 1 },
    { name: 'mac', offset: 12, size: 6 },
    { name: 'pad', offset: 18, size: 2 },
    { name: 'lock', offset: 20, size: 4 },
  ],
};

/**
 * Flags every write of a neuv_ports entry carries: BPF_F_LOCK, so an existing
 * entry is updated in place (see struct neuv_port in bpf/neuv.h: a plain
 * update hands the replaced element to the next update at once, under a
 * program that may still be reading it).
 */
export const PORT_UPDATE = 4; /* BPF_F_LOCK */

export const IdDecl: StructDecl = {
  name: 'neuv_id',
  size: 8,
  members: [
    { name: 'vin_ifindex', offset: 0, size: 4 },
    { name: 'vex_ifindex', offset: 4, size: 4 },
  ],
};

export const CtrDecl: StructDecl = {
  name: 'neuv_ctr',
  size: 16,
  members: [
    { name: 'packets', offset: 0, size: 8 },
    { name: 'bytes', offset: 8, size: 8 },
  ],
};

export const StatsDecl: StructDecl = {
  name: 'neuv_stats',
  size: DIR_COUNT * STATS_VERDICT_COUNT * 16,
  members: [{ name: 'c', offset: 0, size: DIR_COUNT * STATS_VERDICT_COUNT * 16 }],
};

/** struct neuv_flow_key: pair id + normalised IPv4 5-tuple (addresses and ports in network order). */
export const FlowKeyDecl: StructDecl = {
  name: 'neuv_flow_key',
  size: 16,
  members: [
    { name: 'id', offset: 0, size: 2 },
    { name: 'proto', offset: 2, size: 1 },
    { name: 'pad', offset: 3, size: 1 },
    { name: 'addr_a', offset: 4, size: 4 },
    { name: 'addr_b', offset: 8, size: 4 },
    { name: 'port_a', offset: 12, size: 2 },
    { name: 'port_b', offset: 14, size: 2 },
  ],
};

/** struct neuv_flow: the value of neuv_flows. */
export const FlowDecl: StructDecl = {
  name: 'neuv_flow',
  size: 48,
  members: [
    { name: 'verdict', offset: 0, size: 1 },
    { name: 'pad', offset: 1, size: 7 },
    { name: 'deadline_ns', offset: 8, size: 8 },
    { name: 'idle_ns', offset: 16, size: 8 },
    { name: 'last_ns', offset: 24, size: 8 },
    { name: 'packets', offset: 32, size: 8 },
    { name: 'bytes', offset: 40, size: 8 },
  ],
};

export const FlowStatsDecl: StructDecl = {
  name: 'neuv_flow_stats',
  size: DIR_COUNT * FLOW_VERDICT_COUNT * 16,
  members: [{ name: 'c', offset: 0, size: DIR_COUNT * FLOW_VERDICT_COUNT * 16 }],
};

export const GlobalDecl: StructDecl = {
  name: 'neuv_global',
  size: REASON_COUNT * 8,
  members: [{ name: 'reason', offset: 0, size: REASON_COUNT * 8 }],
};

export const ConfigDecl: StructDecl = {
  name: 'neuv_config',
  size: 16,
  members: [
    { name: 'dp_ifindex', offset: 0, size: 4 },
    { name: 'flags', offset: 4, size: 4 },
    { name: 'trace_until', offset: 8, size: 8 },
  ],
};

/** struct neuv_home: where the datapath lives (the loader's record, src/home.ts). */
export const HomeDecl: StructDecl = {
  name: 'neuv_home',
  size: 32,
  members: [
    { name: 'netns_cookie', offset: 0, size: 8 },
    { name: 'netns_ino', offset: 8, size: 8 },
    { name: 'netns_dev', offset: 16, size: 8 },
    { name: 'vbr_ifindex', offset: 24, size: 4 },
    { name: 'pad', offset: 28, size: 4 },
  ],
};

export const DecisionDecl: StructDecl = {
  name: 'neuv_decision',
  size: 16,
  members: [
    { name: 'target', offset: 0, size: 4 },
    { name: 'id', offset: 4, size: 2 },
    { name: 'has_id', offset: 6, size: 1 },
    { name: 'dir', offset: 7, size: 1 },
    { name: 'v1', offset: 8, size: 1 },
    { name: 'v2', offset: 9, size: 1 },
    { name: 'reason', offset: 10, size: 1 },
    { name: 'mode', offset: 11, size: 1 },
    { name: 'hook', offset: 12, size: 1 },
    { name: 'flags', offset: 13, size: 1 },
    { name: 'action', offset: 14, size: 2 },
  ],
};

export const TraceDecl: StructDecl = {
  name: 'neuv_trace',
  size: 72,
  members: [
    { name: 'ts', offset: 0, size: 8 },
    { name: 'd', offset: 8, size: 16 },
    { name: 'ifindex', offset: 24, size: 4 },
    { name: 'len', offset: 28, size: 4 },
    { name: 'copy_ifindex', offset: 32, size: 4 },
    { name: 'lost', offset: 36, size: 4 },
    { name: 'before', offset: 40, size: 12 },
    { name: 'after', offset: 52, size: 12 },
    { name: 'proto', offset: 64, size: 2 },
    { name: 'pad', offset: 66, size: 6 },
  ],
};

export const STRUCTS: StructDecl[] = [
  PortDecl, IdDecl, CtrDecl, StatsDecl, GlobalDecl, ConfigDecl, DecisionDecl, TraceDecl, FlowKeyDecl, FlowDecl, FlowStatsDecl, HomeDecl,
];

/** Enums as this file knows them, by their C name; C names are upper-case with a prefix. */
export const ENUMS: Array<{ name: string; prefix: string; values: Record<string, number> }> = [
  { name: 'neuv_mode', prefix: 'NEUV_MODE_', values: { ...Mode, MAX: 5 } },
  { name: 'neuv_role', prefix: 'NEUV_ROLE_', values: Role },
  { name: 'neuv_dir', prefix: 'NEUV_DIR_', values: { ...Dir, MAX: DIR_COUNT } },
  { name: 'neuv_verdict', prefix: 'NEUV_V_', values: { ...Verdict, MAX: VERDICT_COUNT } },
  { name: 'neuv_reason', prefix: 'NEUV_R_', values: { ...Reason, MAX: REASON_COUNT } },
  { name: 'neuv_hook', prefix: 'NEUV_HOOK_', values: Hook },
  { name: 'neuv_flow_verdict', prefix: 'NEUV_FLOW_', values: FlowVerdict },
  { name: 'neuv_port_flag', prefix: 'NEUV_F_', values: PortFlag },
  { name: 'neuv_cfg_flag', prefix: 'NEUV_CFG_', values: ConfigFlag },
  { name: 'neuv_trace_flag', prefix: 'NEUV_TF_', values: TraceFlag },
  { name: 'neuv_const', prefix: 'NEUV_', values: Const },
];

/**
 * Map names and their key/value declarations (the key is a __u32 except for
 * neuv_flows, keyed by struct neuv_flow_key; the ring buffer neuv_trace has
 * no key, its records are struct neuv_trace).
 */
export const MAPS = {
  ports: { name: 'neuv_ports', value: PortDecl },
  ids: { name: 'neuv_ids', value: IdDecl },
  stats: { name: 'neuv_stats', value: StatsDecl },
  global: { name: 'neuv_global', value: GlobalDecl },
  config: { name: 'neuv_config', value: ConfigDecl },
  trace: { name: 'neuv_trace', value: TraceDecl },
  flows: { name: 'neuv_flows', value: FlowDecl },
  flowStats: { name: 'neuv_flow_stats', value: FlowStatsDecl },
  home: { name: 'neuv_home', value: HomeDecl },
} as const;
