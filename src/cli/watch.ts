/**
 * `neuv-bpf watch --dp WHICH [--fail closed|open]`: supervise the enforcer
 * DP and apply the node's failure policy until SIGINT/SIGTERM, one line (or
 * JSON line) per change. A thin shell over DpWatch (src/dp/watch.ts). Its
 * options are also `serve`'s (addDpWatchOptions): one supervisor, two hosts.
 */
import * as os from 'node:os';
import type { Command } from 'commander';
import { CommandRegistrar, printJson } from './context';
import { UsageError } from '../errors';
import { DpWatch, FAIL_POLICIES, FailPolicy, WatchEvent, WatchOptions, dpLocator } from '../dp/watch';
import { log } from '../log';
import { Range } from '../numbers';
import { integerOption } from './options';

/** Keep-alive period and reply timeout. */
const KEEPALIVE_MS: Range = { min: 10, max: 60000, unit: 'milliseconds' };

/**
 * The watcher's nice value: -10, so that on a loaded node the DP's death wakes
 * it (and the koffi worker thread polling the DP's pidfd, created after this
 * and inheriting it) ahead of ordinary work: about 10 times the CPU share of
 * a nice-0 thread. Its own CPU is a few ms per event. Not for the library's
 * DpWatch: an agent embedding it decides its own priority.
 */
export const WATCH_NICE = -10;

/**
 * Raises this process to WATCH_NICE, for the two hosts of DpWatch (`watch`,
 * and `serve --dp`): called before anything starts a worker thread (Linux's
 * nice is per thread; threads created after inherit it), so the pidfd's poll
 * runs at it. A refusal (no CAP_SYS_NICE) is logged, not fatal.
 */
export function raiseWatcherPriority(who: string): void {
  try {
    os.setPriority(WATCH_NICE);
  } catch (e) {
    log(who).warn(`could not raise the DP watcher's priority (nice ${WATCH_NICE}): ${(e as Error).message}`);
  }
}

/** How often the watcher says pairs are still held in BYPASS: a minute; NEUV_BPF_WATCH_HELD_MS for the tests. */
function heldLogMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.NEUV_BPF_WATCH_HELD_MS);
  return Number.isInteger(v) && v >= 10 ? v : 60000;
}

/**
 * The supervisor's options, for `watch` (prefix '') and `serve` (prefix
 * 'dp-': --dp-interval, --no-dp-ring...): one set of names, ranges and
 * defaults. `required`: watch needs --dp; for serve it turns supervision on.
 */
export function addDpWatchOptions(cmd: Command, prefix: '' | 'dp-', required: boolean): Command {
  return (
    cmd
      // Checked in the action, not with requiredOption: commander reports a
      // missing required option before an unknown one, and a typo must be named.
      .option(
        '--dp <which>',
        `${required ? 'required' : 'supervise the DP'}: 'local' (the DP shares this /tmp: the process holding /tmp/dp_listen.sock) or a pid file, re-read when the DP is gone (a DP with a private /tmp); not a bare pid, which cannot follow a restart`,
      )
      .option('--fail <policy>', `closed or open${required ? '' : ' (with --dp)'}`, 'closed')
      .addOption(integerOption(`--${prefix}interval <ms>`, 'keep-alive period (10..60000)', KEEPALIVE_MS, 200))
      .addOption(integerOption(`--${prefix}timeout <ms>`, 'keep-alive reply timeout (10..60000)', KEEPALIVE_MS, 300))
      .option(`--no-${prefix}ring`, "do not require the DP's packet socket on vth-neuv")
      .option(`--no-${prefix}keep-alive`, "send no keep-alives (a DP without NeuVector's control socket, such as the stub DP): its exit and its ring tell")
  );
}

/** The parsed options of addDpWatchOptions (commander's camel case: interval, or dpInterval with the prefix). */
export type DpWatchCmdOpts = { dp?: string; fail: string } & Record<string, unknown>;

/** WatchOptions (pin root and callbacks aside) from addDpWatchOptions' options; undefined without --dp. */
export function dpWatchOptions(o: DpWatchCmdOpts, prefix: '' | 'dp-'): Omit<WatchOptions, 'pinRoot'> | undefined {
  if (!(FAIL_POLICIES as readonly string[]).includes(o.fail)) throw new UsageError(`--fail '${o.fail}' is not one of ${FAIL_POLICIES.join(', ')}`);
  if (o.dp === undefined) {
    if (o.fail !== 'closed') throw new UsageError('--fail open needs --dp: which DP to supervise');
    return undefined;
  }
  const opt = (s: string) => o[prefix ? 'dp' + s[0]!.toUpperCase() + s.slice(1) : s];
  return {
    locate: dpLocator(o.dp),
    policy: o.fail as FailPolicy,
    intervalMs: opt('interval') as number,
    timeoutMs: opt('timeout') as number,
    checkRing: opt('ring') as boolean,
    keepAlive: opt('keepAlive') as boolean,
    heldLogMs: heldLogMs(),
  };
}

/** One event as a line of text. */
export function watchEventLine(e: WatchEvent, policy: FailPolicy): string {
  const at = new Date(e.time).toISOString();
  if (e.state === 'held') return `${at} ${e.switched.length} pairs held in bypass (ids ${e.switched.join(',')}) ${e.why}`;
  if (e.state === 'waiting') return `${at} ${e.why}`;
  const sw = e.switched.length ? `; ${e.switched.length} pairs to ${e.state === 'down' ? 'bypass' : 'fwd'} in ${e.switchMs.toFixed(1)} ms (ids ${e.switched.join(',')})` : '';
  return `${at} DP ${e.state}: ${e.why}${sw}${e.state === 'down' && policy === 'closed' ? ' (fail-closed: FWD pairs stay black-holed)' : ''}`;
}

export const registerWatchCommands: CommandRegistrar = (program, ctx) => {
  const cmd = program
    .command('watch')
    .description("supervise the enforcer DP (its exit through a pidfd, keep-alives on its control socket, its ring on vth-neuv) and apply the node's failure policy: closed (FWD pairs wait for it) or open (FWD pairs go to BYPASS while it is gone, back to FWD when it is back); waits for a DP first and follows it across restarts");
  addDpWatchOptions(cmd, '', true)
    .option('--json', 'one JSON line per event')
    .action(async (o: DpWatchCmdOpts) => {
      const c = ctx();
      if (o.dp === undefined) throw new UsageError("watch needs --dp: 'local' or a pid file");
      const wo = dpWatchOptions(o, '')!;
      const policy = wo.policy!;
      raiseWatcherPriority('watch');
      const w = DpWatch.start({ ...wo, pinRoot: c.pinRoot, onEvent: (e) => (c.json ? printJson(c, { ...e, policy }, { line: true }) : c.out(watchEventLine(e, policy))) });
      await new Promise<void>((resolve) => {
        for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, () => resolve());
      });
      await w.stop();
    });
};
