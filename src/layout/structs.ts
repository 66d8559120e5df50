/**
 * The structs of bpf/neuv.h as declared layouts (generated.ts, from the
 * object's BTF) and the maps that hold them.
 */
import { FlowDecl, GlobalDecl, HomeDecl, IdDecl, ConfigDecl, FlowStatsDecl, PortDecl, StatsDecl, TraceDecl } from './generated';

export type { StructDecl } from './fields';
export { ConfigDecl, CtrDecl, DecisionDecl, ENUMS, FlowDecl, FlowKeyDecl, FlowStatsDecl, GlobalDecl, HomeDecl, IdDecl, PortDecl, STRUCTS, StatsDecl, TraceDecl } from './generated';

/**
 * Flags every write of a neuv_ports entry carries: BPF_F_LOCK, so an existing
 * entry is updated in place (see struct neuv_port in bpf/neuv.h: a plain
 * update hands the replaced element to the next update at once, under a
 * program that may still be reading it).
 */
export const PORT_UPDATE = 4; /* BPF_F_LOCK */

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
