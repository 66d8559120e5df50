/**
 * `neuv-bpf watch --dp WHICH [--fail closed|open]`: supervise the enforcer
 * DP and apply the node's failure policy until SIGINT/SIGTERM, one line (or
 * JSON line) per change. A thin shell over DpWatch (src/dp/watch.ts).
 */
import * as fs from 'node:fs';
import type { Command } from 'commander';
import type { Ctx } from './context';
import { UsageError } from '../errors';
import { DpWatch, FAIL_POLICIES, FailPolicy, WatchEvent } from '../dp/watch';

interface WatchCmdOpts {
  dp?: string;
  fail: string;
  interval: string;
  timeout: string;
  ring: boolean;
}

function ms(v: string, what: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > 60000) throw new UsageError(`${what} '${v}' is not a whole number of milliseconds in ${min}..60000`);
  return n;
}

/**
 * Where the DP's /tmp is: 'local' (it shares ours, as NeuVector's agent and
 * DP do), a pid (its /proc/<pid>/root), or a pid file read at every probe (a
 * restarted DP writes its new pid there).
 */
export function dpRootFrom(dp: string): string | (() => string | undefined) {
  if (dp === 'local') return '';
  if (/^[0-9]+$/.test(dp)) {
    const pid = Number(dp);
    if (!Number.isSafeInteger(pid) || pid < 1) throw new UsageError(`--dp ${dp} is not a process id`);
    return () => (fs.existsSync(`/proc/${pid}`) ? `/proc/${pid}/root` : undefined);
  }
  if (!dp.startsWith('/')) throw new UsageError(`--dp '${dp}' is not 'local', a pid or the absolute path of a pid file`);
  return () => {
    let text: string;
    try {
      text = fs.readFileSync(dp, 'utf8').trim();
    } catch {
      return undefined;
    }
    return /^[0-9]+$/.test(text) && fs.existsSync(`/proc/${text}`) ? `/proc/${text}/root` : undefined;
  };
}

function line(e: WatchEvent, policy: FailPolicy): string {
  const sw = e.switched.length ? `; ${e.switched.length} pairs to ${e.state === 'down' ? 'bypass' : 'fwd'} in ${e.switchMs.toFixed(1)} ms (ids ${e.switched.join(',')})` : '';
  return `${new Date(e.time).toISOString()} DP ${e.state}: ${e.why}${sw}${e.state === 'down' && policy === 'closed' ? ' (fail-closed: FWD pairs stay black-holed)' : ''}`;
}

export function registerWatchCommands(program: Command, ctx: () => Ctx): void {
  program
    .command('watch')
    .description("supervise the enforcer DP (keep-alives on its control socket, its ring on vth-neuv) and apply the node's failure policy: closed (FWD pairs wait for it) or open (FWD pairs go to BYPASS while it is gone)")
    // Checked in the action, not with requiredOption: commander reports a
    // missing required option before an unknown one, and a typo must be named.
    .option('--dp <which>', "required: 'local' (the DP shares this /tmp), its pid, or a pid file (a DP with a private /tmp)")
    .option('--fail <policy>', 'closed or open', 'closed')
    .option('--interval <ms>', 'keep-alive period', '200')
    .option('--timeout <ms>', 'keep-alive reply timeout', '300')
    .option('--no-ring', "do not require the DP's packet socket on vth-neuv")
    .option('--json', 'one JSON line per event')
    .action(async (o: WatchCmdOpts) => {
      const c = ctx();
      if (o.dp === undefined) throw new UsageError("watch needs --dp: 'local', the DP's pid, or a pid file");
      if (!(FAIL_POLICIES as readonly string[]).includes(o.fail)) throw new UsageError(`--fail '${o.fail}' is not one of ${FAIL_POLICIES.join(', ')}`);
      const policy = o.fail as FailPolicy;
      const dpRoot = dpRootFrom(o.dp);
      const interval = ms(o.interval, '--interval', 10);
      const timeout = ms(o.timeout, '--timeout', 10);
      const w = DpWatch.start({
        pinRoot: c.pinRoot, dpRoot, policy, intervalMs: interval, timeoutMs: timeout, checkRing: o.ring,
        onEvent: (e) => c.out(c.json ? JSON.stringify({ ...e, policy }) : line(e, policy)),
      });
      await new Promise<void>((resolve) => {
        for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(s, () => resolve());
      });
      await w.stop();
    });
}
