/**
 * neuv_config's writes: one entry, written whole, several writers.
 *
 * The loader owns dp_ifindex, the tracer trace_until and the trace filter
 * bits of flags, whoever writes neuv_flows NEUV_CFG_FLOWS, repair dp_ifindex
 * again. Each changes only its own field, but a map update writes the whole
 * 16-byte value, so each change is a read-modify-write: two of them at once
 * lose one (the tracer's lease renewal putting back the flags it read before
 * the flow API set NEUV_CFG_FLOWS, which then stays clear and every offloaded
 * flow goes to the DP; or the flow API putting back a lease the tracer had
 * just ended). The value cannot hold a bpf_spin_lock (its size is fixed: a
 * newer object reuses the pinned map), so the writers take an flock of their
 * own around the lookup and the update: configLockPath(pinRoot), held for
 * microseconds (not the pin root's lock, which a command holds for its whole
 * run). The programs never write the entry and take no lock: nothing changes
 * per frame. Writers in C (tools/stub-dp.c, examples/flow-offload.c) take the
 * same lock (docs/flow-offload.md).
 */
import * as fs from 'node:fs';
import { LOCK_EX, LOCK_NB, LOCK_UN, MapFd, flock, sleepSync } from './bpf';
import { ConflictError } from './errors';
import { Config, ConfigFlag, decodeConfig, encodeConfig, u32Key } from './layout';
import { lockDirFile, openLockDirFile } from './lock';
import { log } from './log';

/** How long a writer waits for another (which holds the lock for one lookup and one update). */
const WAIT_MS = 5000;

/** The lock of pinRoot's neuv_config: `<LOCK_DIR>/<pinRootStem(pinRoot)>.config.lock`. */
export function configLockPath(pinRoot: string): string {
  return lockDirFile(pinRoot, 'config.lock');
}

/**
 * Applies fn to neuv_config's entry (zeros if the map has none) under the
 * config lock, and writes what it returns; undefined writes nothing. Returns
 * the entry as it is after.
 */
export function updateConfig(pinRoot: string, config: MapFd, fn: (c: Config) => Config | undefined): Config {
  const p = configLockPath(pinRoot);
  const fd = openLockDirFile(pinRoot, 'config.lock');
  try {
    const start = Date.now();
    while (!flock(fd, LOCK_EX | LOCK_NB, p)) {
      if (Date.now() - start > WAIT_MS) throw new ConflictError(`another process holds ${p} for more than ${WAIT_MS / 1000} s`);
      sleepSync(1);
    }
    try {
      const key = u32Key(0);
      const v = config.lookup(key);
      const cur = v ? decodeConfig(v) : { dpIfindex: 0, flags: 0, traceUntil: 0n };
      const next = fn({ ...cur });
      if (!next) return cur;
      config.update(key, encodeConfig({ ...next, flags: next.flags >>> 0 }));
      return next;
    } finally {
      flock(fd, LOCK_UN, p);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Sets NEUV_CFG_FLOWS in neuv_config.flags if it is clear: the vin/vex
 * programs look neuv_flows up only once it is set (a node that never
 * offloads pays nothing for the feature). Every writer of neuv_flows calls
 * this before writing an entry; nothing clears the bit. Returns true if it
 * was clear.
 */
export function enableFlowLookups(pinRoot: string, config: MapFd): boolean {
  // Set stays set (every writer keeps it under the lock): no lock needed to see that.
  const v = config.lookup(u32Key(0));
  if (v && decodeConfig(v).flags & ConfigFlag.FLOWS) return false;
  let set = false;
  updateConfig(pinRoot, config, (c) => {
    if (c.flags & ConfigFlag.FLOWS) return undefined;
    set = true;
    return { ...c, flags: c.flags | ConfigFlag.FLOWS };
  });
  if (set) log('flows').debug('flow lookups enabled in the datapath (neuv_config NEUV_CFG_FLOWS)');
  return set;
}
