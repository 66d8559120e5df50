/**
 * neuv-bpf as a library: the typed API the CLI is a thin shell over, for an
 * enforcer agent in Node to embed.
 *
 *   import { load, Datapath } from 'neuv-bpf';
 *   await load({ pinRoot: '/sys/fs/bpf/neuv' });
 *   const dp = Datapath.open('/sys/fs/bpf/neuv');
 *   const p = await dp.addPair({ in: 'vin1-eth0', ex: 'vex1-eth0', mac: '02:42:ac:11:00:02', mode: 'tap' });
 *   await dp.setMode({ id: p.id }, 'fwd');
 *   dp.close();
 */
export { load, unload } from './loader';
export { DEFAULT_PIN_ROOT, checkPrivileges, isLoaded } from './pins';
export type { LoadOptions, LoadResult, UnloadResult } from './loader';
export {
  Datapath,
  ADD_MODES,
  MODES,
  DEFAULT_ADD_MODE,
  parsePairLines,
  validateSpec,
  allocateIds,
  delivered,
} from './pairs';
export type {
  AddModeName,
  ModeName,
  PairSpec,
  PairSelector,
  PairAdded,
  ModeChange,
  PairDeleted,
  PairView,
  PortView,
  ShowResult,
  StatsSnapshot,
  PairStats,
  PairCounters,
  CounterSet,
  DatapathOptions,
} from './pairs';
export {
  Mode,
  Role,
  Dir,
  Verdict,
  Reason,
  PortFlag,
  MODE_NAMES,
  DIR_NAMES,
  VERDICT_NAMES,
  REASON_NAMES,
  FlowVerdict,
  FLOWS_DEFAULT,
  UCMAC_PREFIX,
  VBR_IFINDEX,
  VTH_IFINDEX,
  MAX_IDS,
  MAX_PORTS,
} from './layout';
export type { ModeValue, RoleValue, PortEntry, IdEntry, Stats, Ctr, Config, FlowKey, FlowEntry, FlowTuple } from './layout';
export { ucmac, bcmac, formatMac, parseMac, isUcmac } from './mac';
export { Flows, offloadFlow, revokeFlow, listFlows, clearPairFlows, flowKeyFromSpec } from './flows';
export type { FlowSpec, OffloadOptions, OffloadResult, FlowView, Endpoint, FlowVerdictName } from './flows';
export {
  NeuvError,
  UsageError,
  NotFoundError,
  ConflictError,
  KernelError,
  ExitCode,
  exitCodeOf,
} from './errors';
export type { ExitCodeValue } from './errors';
export { DpClient, DpTimeoutError } from './dp/client';
export type { DpEndpoint, DpApp, DpSession, PolicyRule, PolicyConfig, SessionCount, DeviceCounter } from './dp/client';
export { ServiceClient, ServiceError, defaultSocketPath } from './service/client';
export type { Json, Health, ServiceTarget, InterceptRequest, ServiceClientOptions } from './service/client';
export { UnsafePathError } from './safefs';
