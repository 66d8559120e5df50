/**
 * Port pairs: the typed API the CLI is a thin shell over (Datapath), for an
 * enforcer agent to embed.
 *
 *   spec.ts       public types, spec validation, `pair add --file`, id allocation
 *   entries.ts    a pair's map entries: contents, write and removal order
 *   state.ts      what the maps say about pairs; add's plan
 *   show.ts       show: pairs, hooks, counters, inconsistencies
 *   datapath.ts   Datapath: add, mode, del, show, stats under the pin root's lock
 */
export * from './spec';
export { Datapath } from './datapath';
export { portAttachKind } from './state';
