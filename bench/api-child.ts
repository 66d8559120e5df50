/**
 * The API side of the control-plane figures (bench/control.ts), in a process
 * of its own so it can run at the same scheduling class as the CLI and
 * NeuVector's tc processes:
 *
 *   node dist/bench/api-child.js PIN_ROOT NETNS SPECS.jsonl [SWITCH_ID SWITCHES]
 *
 * Opens the Datapath (not timed), times one addPairs of every spec of the
 * file (mode fwd), then SWITCHES setMode calls alternating tap/fwd on
 * SWITCH_ID, and prints {"addMs": n, "addCpuMs": n, "setModeMs": [...]} on
 * stdout (CPU: this process and the children it waited for). Node.js
 * start-up and module loading are not in the figures.
 */
import * as fs from 'node:fs';
import { Datapath, PairSpec } from '../src/pairs';
import { childCpuMs } from './rss-preload';

async function main(argv: string[]): Promise<void> {
  const [pins, netns, file, switchId, switches] = argv;
  if (!pins || !netns || !file) throw new Error('usage: api-child PIN_ROOT NETNS SPECS.jsonl [SWITCH_ID SWITCHES]');
  const specs = fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as PairSpec);
  const dp = Datapath.open(pins, { netns });
  try {
    const now = () => Number(process.hrtime.bigint()) / 1e6;
    const t0 = now();
    const c0 = process.cpuUsage();
    const k0 = childCpuMs();
    await dp.addPairs(specs);
    const addMs = now() - t0;
    const c1 = process.cpuUsage(c0);
    const addCpuMs = (c1.user + c1.system) / 1000 + childCpuMs() - k0;
    const setModeMs: number[] = [];
    for (let i = 0; i < Number(switches ?? 0); i++) {
      const t1 = now();
      await dp.setMode({ id: Number(switchId) }, i % 2 ? 'fwd' : 'tap');
      setModeMs.push(now() - t1);
    }
    process.stdout.write(JSON.stringify({ addMs, addCpuMs, setModeMs }) + '\n');
  } finally {
    dp.close();
  }
}

main(process.argv.slice(2)).catch((e) => {
  process.stderr.write(`api-child: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
