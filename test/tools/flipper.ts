/**
 * flipper PIN_ROOT NETNS VIN MS: switches the pair of VIN between tap and
 * bypass through the Datapath API as fast as it goes for MS milliseconds,
 * then prints {"switches":N}. The writer side of the mode-switch race test
 * (test/pairs.test.ts), in a process of its own so it runs on another CPU
 * than the BPF_PROG_TEST_RUN loop.
 */
import { Datapath } from '../../src/pairs';

async function main(): Promise<void> {
  const [pinRoot, netns, vin, ms] = process.argv.slice(2);
  if (!pinRoot || !netns || !vin || !ms) throw new Error('usage: flipper PIN_ROOT NETNS VIN MS');
  const dp = Datapath.open(pinRoot, { netns });
  let n = 0;
  const end = Date.now() + Number(ms);
  try {
    while (Date.now() < end) {
      await dp.setMode({ in: vin }, n % 2 ? 'bypass' : 'tap');
      n++;
    }
  } finally {
    dp.close();
  }
  process.stdout.write(JSON.stringify({ switches: n }) + '\n');
}

main().catch((e) => {
  process.stderr.write(`flipper: ${(e as Error).message}\n`);
  process.exit(1);
});
