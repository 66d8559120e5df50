/**
 * `neuv-bpf trace`: switch the datapath trace on, stream one line (or JSON
 * line) per frame decision, switch it off again on exit (Ctrl-C, SIGTERM,
 * SIGHUP, a closed stdout, --count/--duration reached). A thin shell over
 * TraceSession (src/trace.ts).
 */
import type { Command } from 'commander';
import type { Ctx } from './context';
import { UsageError } from '../errors';
import { log } from '../log';
import { IfNames, TraceFilter, TraceSession, formatView, monoToWall, viewRecord } from '../trace';
import { PORT_ID_HEX, TRACE_COUNT, TRACE_DURATION, parseDecimal, parseInteger } from '../numbers';
import { integerOption, secondsOption } from './options';
import { onStopSignal } from '../signals';

interface TraceCmdOpts {
  pair?: number | string;
  in?: string;
  count?: number | string;
  duration?: number | string;
}

export function filterFrom(o: TraceCmdOpts): TraceFilter {
  if (o.pair !== undefined && o.in !== undefined) throw new UsageError('give at most one of --pair ID and --in VIN');
  if (o.pair !== undefined) return { id: parseInteger(o.pair, '--pair', PORT_ID_HEX) };
  if (o.in !== undefined) return { in: o.in };
  return { all: true };
}

/** Runs a trace until a signal, the count or the duration; resolves with what was seen. */
export async function runTrace(c: Ctx, o: TraceCmdOpts): Promise<{ records: number; lost: number }> {
  const filter = filterFrom(o);
  const count = o.count !== undefined ? parseInteger(o.count, '--count', TRACE_COUNT) : Infinity;
  const duration = o.duration !== undefined ? parseDecimal(o.duration, '--duration', TRACE_DURATION) : undefined;
  const names = new IfNames();
  const wall = monoToWall();
  const lg = log('trace');
  let finish!: (why: string) => void;
  const done = new Promise<string>((resolve) => (finish = resolve));
  let seen = 0;
  let stdoutGone = false;
  const session = TraceSession.start({
    pinRoot: c.pinRoot,
    filter,
    onRecord: (r) => {
      if (seen >= count || stdoutGone) return;
      seen++;
      const v = viewRecord(r, names, wall);
      c.out(c.json ? JSON.stringify(v) : formatView(v));
      if (seen >= count) finish('count');
    },
    onLost: (n) => lg.warn({ lost: n }, `${n} trace records lost: the reader fell behind (filter with --pair or --in)`),
  });
  const offSignals = onStopSignal((sig) => finish(sig));
  // `trace | head`: the reader went away. Stays installed: writes already queued fail later.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    stdoutGone = true;
    finish('stdout closed');
  });
  const timer = duration !== undefined ? setTimeout(() => finish('duration'), duration * 1000) : undefined;
  lg.info({ pinRoot: c.pinRoot, pair: session.id }, `tracing ${session.id === undefined ? 'every frame' : `pair ${session.id}`}; Ctrl-C stops`);
  let why: string;
  try {
    why = await done;
  } finally {
    if (timer) clearTimeout(timer);
    offSignals();
    session.stop();
  }
  lg.info({ records: seen, lost: session.lost, why }, `trace off: ${seen} records${session.lost ? `, ${session.lost} lost` : ''}`);
  return { records: seen, lost: session.lost };
}

export function register(program: Command, ctx: () => Ctx): void {
  program
    .command('trace')
    .description('stream per-frame datapath decisions (hook, pair, mode, action, target, MACs before/after) while tracing is on; off again on exit')
    .addOption(integerOption('--pair <id>', 'only frames of this pair id (decimal or 0x hex)', PORT_ID_HEX))
    .option('--in <vin>', 'only frames of the pair that has this port (a vin, or its vex)')
    .addOption(integerOption('--count <n>', `stop after n records (1..${TRACE_COUNT.max})`, TRACE_COUNT))
    .addOption(secondsOption('--duration <seconds>', `stop after this many seconds (${TRACE_DURATION.min}..${TRACE_DURATION.max})`, TRACE_DURATION))
    .option('--json', 'one JSON object per line')
    .action(async (o: TraceCmdOpts) => {
      await runTrace(ctx(), o);
    });
}
