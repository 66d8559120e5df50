/**
 * `neuv-bpf watch --dp WHICH [--fail closed|open]`: supervise the enforcer
 * DP and apply the node's failure policy until SIGINT/SIGTERM, one line (or
 * JSON line) per change. A thin shell over DpWatch (src/dp/watch.ts).
 */
import type { Command } from 'commander';
import type { Ctx } from './context';
import { UsageError } from '../errors';
import { DpProcess, DpWatch, FAIL_POLICIES, FailPolicy, WatchEvent, dpByControlSocket, dpFromPidFile } from '../dp/watch';
import { Range } from '../numbers';
import { integerOption } from './options';

interface WatchCmdOpts {
  dp?: string;
  fail: string;
  interval: number;
  timeout: number;
  ring: boolean;
  keepAlive: boolean;
}

/** Keep-alive period and reply timeout. */
const KEEPALIVE_MS: Range = { min: 10, max: 60000, unit: 'milliseconds' };

/**
 * Where the DP is, asked again whenever there is none, so a restarted DP is
 * followed: 'local' (it shares our /tmp, as NeuVector's agent and DP do: the
 * process holding /tmp/dp_listen.sock) or a pid file (a restarted DP, or its
 * supervisor, writes its new pid there). A bare pid is refused: it cannot
 * follow a restart, and the pairs failed open would stay in BYPASS for good.
 */
export function dpLocator(dp: string): () => DpProcess | undefined {
  if (dp === 'local') return dpByControlSocket;
  if (/^[0-9]+$/.test(dp)) {
    throw new UsageError(`--dp ${dp}: a pid does not follow a restarted DP (the pairs failed open would stay in BYPASS for good); give a pid file the DP's supervisor rewrites, or 'local'`);
  }
  if (!dp.startsWith('/')) throw new UsageError(`--dp '${dp}' is not 'local' or the absolute path of a pid file`);
  return () => dpFromPidFile(dp);
}

/** How often the watcher says pairs are still held in BYPASS: a minute; NEUV_BPF_WATCH_HELD_MS for the tests. */
function heldLogMs(env: NodeJS.ProcessEnv = process.env): number {
  const v = Number(env.NEUV_BPF_WATCH_HELD_MS);
  return Number.isInteger(v) && v >= 10 ? v : 60000;
}

function line(e: WatchEvent, policy: FailPolicy): string {
  const at = new Date(e.time).toISOString();
  if (e.state === 'held') return `${at} ${e.switched.length} pairs held in bypass (ids ${e.switched.join(',')}) ${e.why}`;
  if (e.state === 'waiting') return `${at} ${e.why}`;
  const sw = e.switched.length ? `; ${e.switched.length} pairs to ${e.state === 'down' ? 'bypass' : 'fwd'} in ${e.switchMs.toFixed(1)} ms (ids ${e.switched.join(',')})` : '';
  return `${at} DP ${e.state}: ${e.why}${sw}${e.state === 'down' && policy === 'closed' ? ' (fail-closed: FWD pairs stay black-holed)' : ''}`;
}

export function registerWatchCommands(program: Command, ctx: () => Ctx): void {
  program
    .command('watch')
    .description("supervise the enforcer DP (its exit through a pidfd, keep-alives on its control socket, its ring on vth-neuv) and apply the node's failure policy: closed (FWD pairs wait for it) or open (FWD pairs go to BYPASS while it is gone, back to FWD when it is back); waits for a DP first and follows it across restarts")
    // Checked in the action, not with requiredOption: commander reports a
    // missing required option before an unknown one, and a typo must be named.
    .option('--dp <which>', "required: 'local' (the DP shares this /tmp: the process holding /tmp/dp_listen.sock) or a pid file, re-read when the DP is gone (a DP with a private /tmp); not a bare pid, which cannot follow a restart")
    .option('--fail <policy>', 'closed or open', 'closed')
    .addOption(integerOption('--interval <ms>', 'keep-alive period (10..60000)', KEEPALIVE_MS, 200))
    .addOption(integerOption('--timeout <ms>', 'keep-alive reply timeout (10..60000)', KEEPALIVE_MS, 300))
    .option('--no-ring', "do not require the DP's packet socket on vth-neuv")
    .option('--no-keep-alive', "send no keep-alives (a DP without NeuVector's control socket, such as the stub DP): its exit and its ring tell")
    .option('--json', 'one JSON line per event')
    .action(async (o: WatchCmdOpts) => {
      const c = ctx();
      if (o.dp === undefined) throw new UsageError("watch needs --dp: 'local' or a pid file");
      if (!(FAIL_POLICIES as readonly string[]).includes(o.fail)) throw new UsageError(`--fail '${o.fail}' is not one of ${FAIL_POLICIES.join(', ')}`);
      const policy = o.fail as FailPolicy;
      const locate = dpLocator(o.dp);
      const interval = o.interval;
      const timeout = o.timeout;
      const w = DpWatch.start({
        pinRoot: c.pinRoot, locate, policy, intervalMs: interval, timeoutMs: timeout, checkRing: o.ring, keepAlive: o.keepAlive, heldLogMs: heldLogMs(),
        onEvent: (e) => c.out(c.json ? JSON.stringify({ ...e, policy }) : line(e, policy)),
      });
      await new Promise<void>((resolve) => {
        for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, () => resolve());
      });
      await w.stop();
    });
}
