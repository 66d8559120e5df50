/**
 * One of two writers of neuv_config at once (test/config.test.ts), each
 * in a process of its own so that they really overlap. dp_ifindex is the
 * test's signal: each prints "ready", waits until it reads 1 (the test's
 * go), and both stop when it reads 2 (written by the flows writer when it is
 * done) or after MS milliseconds; then each prints one JSON line.
 *
 *   config-writer trace PIN_ROOT MS
 *     the tracer's lease write (writeLease, src/trace.ts) with trace_until
 *     1, 2, 3, ...; before each, checks that the entry still holds the last
 *     value it wrote (another writer's read-modify-write must not put back
 *     an older one): {"writes":N,"regressions":N}
 *   config-writer flows PIN_ROOT MS TRIALS
 *     TRIALS times: clears NEUV_CFG_FLOWS (a raw write under the config
 *     lock), sets it again the way every writer of neuv_flows does
 *     (enableFlowLookups, src/config.ts), waits until the tracer has
 *     written twice more, and checks that the bit survived:
 *     {"trials":N,"lost":N}
 */
import { sleepSync } from '../../src/bpf';
import { enableFlowLookups, updateConfig } from '../../src/config';
import { ConfigFlag, decodeConfig, u32Key } from '../../src/layout';
import { Pins } from '../../src/pins';
import { writeLease } from '../../src/trace';

const [role, pinRoot, msArg, trialsArg] = process.argv.slice(2);
const ms = Number(msArg);
if (!pinRoot || !Number.isFinite(ms)) throw new Error('usage: config-writer trace|flows PIN_ROOT MS [TRIALS]');
const config = Pins.open(pinRoot, ['config']).config;
const read = () => decodeConfig(config.lookup(u32Key(0))!);
process.stdout.write('ready\n');
const ready = Date.now();
while (read().dpIfindex !== 1) {
  if (Date.now() - ready > ms) throw new Error('no go from the test');
  sleepSync(1);
}
const end = Date.now() + ms;
const going = () => Date.now() < end && read().dpIfindex === 1;

if (role === 'trace') {
  let writes = 0;
  let regressions = 0;
  while (going()) {
    if (read().traceUntil < BigInt(writes)) regressions++;
    writeLease(pinRoot, config, BigInt(++writes), 0);
  }
  process.stdout.write(JSON.stringify({ writes, regressions }) + '\n');
} else if (role === 'flows') {
  let trials = 0;
  let lost = 0;
  while (trials < Number(trialsArg) && going()) {
    updateConfig(pinRoot, config, (c) => ({ ...c, flags: c.flags & ~ConfigFlag.FLOWS }));
    enableFlowLookups(pinRoot, config);
    const seen = read().traceUntil;
    while (read().traceUntil < seen + 2n && going());
    if (read().traceUntil < seen + 2n) break; // the tracer stopped: no verdict on this trial
    trials++;
    if (!(read().flags & ConfigFlag.FLOWS)) lost++;
  }
  updateConfig(pinRoot, config, (c) => ({ ...c, dpIfindex: 2 })); // done: the tracer stops
  process.stdout.write(JSON.stringify({ trials, lost }) + '\n');
} else {
  throw new Error(`unknown role ${role}`);
}
config.close();
