/**
 * The writer side of the map race tests, in a process of its own so it runs
 * on another CPU than the test's BPF_PROG_TEST_RUN loop. Each form runs as
 * fast as it goes for MS milliseconds, then prints {"switches":N}.
 *
 *   flipper mode PIN_ROOT NETNS VIN MIN MS
 *     switches the pair of VIN between tap and bypass through the Datapath
 *     API (test/pairs.test.ts: the vex program never reads another port's
 *     entry), past MS until MIN switches are done (a slow machine switches
 *     more slowly), but not past 10 x MS;
 *   flipper seed PIN_ROOT VIN_IFINDEX VEX_IFINDEX ID MS
 *     writes and removes a FWD pair's entries the way adopt does before it
 *     attaches anything (src/migrate/adopt.ts seed/unseed; test/migrate.test.ts:
 *     neuv_vbr never finds the id without its ports).
 */
import { Datapath } from '../../src/pairs';
import { DiscoveredPair, openMaps, seed, unseed } from '../../src/migrate';

async function flipModes(pinRoot: string, netns: string, vin: string, min: number, ms: number): Promise<number> {
  const dp = Datapath.open(pinRoot, { netns });
  const start = Date.now();
  let n = 0;
  try {
    for (let t = 0; t < ms * 10 && (t < ms || n < min); t = Date.now() - start) {
      await dp.setMode({ in: vin }, n % 2 ? 'bypass' : 'tap');
      n++;
    }
  } finally {
    dp.close();
  }
  return n;
}

function seedLoop(pinRoot: string, vinIfindex: number, vexIfindex: number, id: number, end: number): number {
  const m = openMaps(pinRoot);
  // What seed() reads of a discovered pair; no links: no redirect_peer flags.
  const p = { in: 'vin', ex: 'vex', vinIfindex, vexIfindex, id, mac: '02:00:00:00:00:01', mode: 'fwd' } as DiscoveredPair;
  let n = 0;
  try {
    // The entries stay about as long as they are gone (unseed waits for an RCU grace period), so the
    // reader sees both states.
    const hold = (ns: bigint) => {
      const until = process.hrtime.bigint() + ns;
      while (process.hrtime.bigint() < until);
    };
    let gone = 20000n;
    while (Date.now() < end) {
      const s = seed(m, p, new Map());
      hold(gone);
      const t = process.hrtime.bigint();
      unseed(m, s);
      gone = process.hrtime.bigint() - t;
      n++;
    }
  } finally {
    m.close();
  }
  return n;
}

async function main(): Promise<void> {
  const [what, ...a] = process.argv.slice(2);
  let n: number;
  if (what === 'mode' && a.length === 5) n = await flipModes(a[0]!, a[1]!, a[2]!, Number(a[3]), Number(a[4]));
  else if (what === 'seed' && a.length === 5) n = seedLoop(a[0]!, Number(a[1]), Number(a[2]), Number(a[3]), Date.now() + Number(a[4]));
  else throw new Error('usage: flipper mode PIN_ROOT NETNS VIN MIN MS | flipper seed PIN_ROOT VIN_IFINDEX VEX_IFINDEX ID MS');
  process.stdout.write(JSON.stringify({ switches: n }) + '\n');
}

main().catch((e) => {
  process.stderr.write(`flipper: ${(e as Error).message}\n`);
  process.exit(1);
});
