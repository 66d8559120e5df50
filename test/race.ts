/**
 * The reader side of the map race tests (pairs-race, migrate): the real
 * programs under BPF_PROG_TEST_RUN while test/tools/flipper.js rewrites map
 * entries from another process.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import { CLONE_NEWNET, setns, testRun } from '../src/bpf';
import { SKB_CTX_IFINDEX, SKB_CTX_SIZE } from '../harness/prog-fixture';
import { onCleanup, ROOT } from './helpers';
import { collectOutput } from '../harness/proc';

const EINTR = osConstants.errno.EINTR;

export interface RaceResult {
  /** Program runs done while the writer ran. */
  runs: number;
  /** What the writer reported (its loop count). */
  switches: number;
  /** How many batches ended with each return value (the last run of a batch). */
  retvals: Map<number, number>;
}

/**
 * Runs the program `prog` on `frame` (ctx ifindex `ifindex`, looked up in
 * netns `ns`) in batches of `repeat` BPF_PROG_TEST_RUN runs on this CPU for
 * as long as test/tools/flipper.js `writerArgs` `ms` rewrites map entries
 * from another process (`ms` or more: until the writer exits, so a writer
 * slow to start, as in an emulated VM, still overlaps the whole run): the
 * reader side of the map race tests. The runs of a batch share one skb: a program that rewrites the
 * frame sees its own rewrite from the second run on (use repeat 1 there).
 */
export async function raceTestRun(prog: { fd: number }, ns: string, ifindex: number, frame: Buffer, writerArgs: string[], ms: number, repeat = 100000): Promise<RaceResult> {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist', 'test', 'tools', 'flipper.js'), ...writerArgs, String(ms)], { stdio: ['ignore', 'pipe', 'pipe'] });
  onCleanup(() => child.kill('SIGKILL'));
  const flipper = collectOutput(child);
  const ctx = Buffer.alloc(SKB_CTX_SIZE); // test_run leaves ingress_ifindex 0: the program finds the port by ifindex
  ctx.writeUInt32LE(ifindex, SKB_CTX_IFINDEX);
  // The ifindex in ctx is looked up in the netns of the calling thread: enter it for each batch.
  const target = fs.openSync(`/var/run/netns/${ns}`, 'r');
  const home = fs.openSync('/proc/thread-self/ns/net', 'r');
  const retvals = new Map<number, number>();
  let runs = 0;
  try {
    await new Promise((r) => setTimeout(r, 200));
    let turned = Date.now();
    while (!flipper.exited) {
      setns(target, CLONE_NEWNET, ns);
      try {
        const v = testRun(prog.fd, frame, { ctxIn: ctx, repeat }).retval;
        retvals.set(v, (retvals.get(v) ?? 0) + 1);
        runs += repeat;
      } catch (e) {
        // A signal (the writer's SIGCHLD) stops a repeat loop part way: that batch is not counted.
        if ((e as { errno?: number }).errno !== EINTR) throw e;
      } finally {
        setns(home, CLONE_NEWNET, 'the original network namespace');
      }
      // Now and then let the event loop read the writer's pipes and see it exit.
      if (Date.now() - turned >= 20) {
        await new Promise((r) => setImmediate(r));
        turned = Date.now();
      }
    }
  } finally {
    fs.closeSync(target);
    fs.closeSync(home);
  }
  const r = await flipper.done;
  if (r.code !== 0) throw new Error(`flipper ${writerArgs[0]} exited ${r.code ?? r.signal}: ${r.stderr}`);
  return { runs, switches: (JSON.parse(r.stdout) as { switches: number }).switches, retvals };
}
