/**
 * One of two writers of neuv_config at once (test/dp-config.test.ts), each
 * in a process of its own so that they really overlap. Both wait until
 * START (ms since the epoch), write as fast as they go until START + MS,
 * then print one JSON line.
 *
 *   config-writer trace PIN_ROOT START MS
 *     the tracer's lease write (writeLease, src/trace.ts) with trace_until
 *     1, 2, 3, ...; before each, checks that the entry still holds the last
 *     value it wrote (another writer's read-modify-write must not put back
 *     an older one): {"writes":N,"regressions":N}
 *   config-writer flows PIN_ROOT START MS
 *     clears NEUV_CFG_FLOWS (a raw write under the config lock), sets it
 *     again the way every writer of neuv_flows does (enableFlowLookups,
 *     src/dp-config.ts), waits until the tracer has written twice more, and
 *     checks that the bit survived: {"trials":N,"lost":N}
 */
import * as path from 'node:path';
import { MapFd, sleepSync } from '../../src/bpf';
import { enableFlowLookups, updateConfig } from '../../src/dp-config';
import { ConfigFlag, MAPS, decodeConfig, u32Key } from '../../src/layout';
import { writeLease } from '../../src/trace';

const [role, pinRoot, startArg, msArg] = process.argv.slice(2);
const start = Number(startArg);
const end = start + Number(msArg);
if (!pinRoot || !Number.isFinite(end)) throw new Error('usage: config-writer trace|flows PIN_ROOT START MS');
const config = MapFd.fromPin(path.join(pinRoot, MAPS.config.name));
const read = () => decodeConfig(config.lookup(u32Key(0))!);
while (Date.now() < start) sleepSync(1);

if (role === 'trace') {
  let writes = 0;
  let regressions = 0;
  while (Date.now() < end) {
    if (read().traceUntil < BigInt(writes)) regressions++;
    writeLease(pinRoot, config, BigInt(++writes), 0);
  }
  process.stdout.write(JSON.stringify({ writes, regressions }) + '\n');
} else if (role === 'flows') {
  let trials = 0;
  let lost = 0;
  while (Date.now() < end) {
    updateConfig(pinRoot, config, (c) => ({ ...c, flags: c.flags & ~ConfigFlag.FLOWS }));
    enableFlowLookups(pinRoot, config);
    const seen = read().traceUntil;
    while (read().traceUntil < seen + 2n && Date.now() < end);
    if (read().traceUntil < seen + 2n) break; // the tracer stopped: no verdict on this trial
    trials++;
    if (!(read().flags & ConfigFlag.FLOWS)) lost++;
  }
  process.stdout.write(JSON.stringify({ trials, lost }) + '\n');
} else {
  throw new Error(`unknown role ${role}`);
}
config.close();
