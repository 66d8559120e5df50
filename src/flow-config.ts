/**
 * The datapath-wide switch of flow lookups (NEUV_CFG_FLOWS in neuv_config),
 * shared by the flow API (src/flows.ts) and the loader.
 */
import { MapFd } from './bpf';
import { ConfigFlag, decodeConfig, encodeConfig, u32Key } from './layout';
import { log } from './log';

/**
 * Sets NEUV_CFG_FLOWS in neuv_config.flags if it is clear: the vin/vex
 * programs look neuv_flows up only once it is set (a node that never
 * offloads pays nothing for the feature). Every writer of neuv_flows calls
 * this before writing an entry; nothing clears the bit (that would race with
 * a writer). Returns true if it was clear. The read-modify-write can lose to
 * a concurrent writer of another field (the tracer's lease); the next offload
 * sets it again.
 */
export function enableFlowLookups(config: MapFd): boolean {
  const key = u32Key(0);
  const v = config.lookup(key);
  const c = v ? decodeConfig(v) : { dpIfindex: 0, flags: 0, traceUntil: 0n };
  if (c.flags & ConfigFlag.FLOWS) return false;
  config.update(key, encodeConfig({ ...c, flags: (c.flags | ConfigFlag.FLOWS) >>> 0 }));
  log('flows').debug('flow lookups enabled in the datapath (neuv_config NEUV_CFG_FLOWS)');
  return true;
}
