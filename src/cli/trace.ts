/**
 * `neuv-bpf trace`: switch the datapath trace on, stream one line (or JSON
 * line) per frame decision, switch it off again on exit (Ctrl-C, SIGTERM,
 * SIGHUP, a closed stdout, --count/--duration reached). A thin shell over
 * TraceSession (src/trace.ts).
 */
import { CommandRegistrar, Ctx, printJson } from './context';
import { log } from '../log';
import { TraceEnd, TraceFilter, boundedTrace, formatView, traceRequest } from '../trace';
import { PORT_ID_HEX, TRACE_COUNT, TRACE_DURATION } from '../numbers';
import { integerOption, secondsOption } from './options';
import { onStopSignal } from '../signals';

interface TraceCmdOpts {
  pair?: number | string;
  in?: string;
  count?: number | string;
  duration?: number | string;
}

const OPTION_NAMES = { pair: '--pair', in: '--in', count: '--count', duration: '--duration' };

export function filterFrom(o: TraceCmdOpts): TraceFilter {
  return traceRequest({ pair: o.pair, in: o.in }, OPTION_NAMES).filter;
}

/** Runs a trace until a signal, the count or the duration; resolves with what was seen. */
export async function runTrace(c: Ctx, o: TraceCmdOpts): Promise<{ records: number; lost: number }> {
  const req = traceRequest(o, OPTION_NAMES);
  const lg = log('trace');
  const t = boundedTrace({
    pinRoot: c.pinRoot,
    ...req,
    onView: (v) => (c.json ? printJson(c, v, { line: true }) : c.out(formatView(v))),
    onLost: (n) => lg.warn({ lost: n }, `${n} trace records lost: the reader fell behind (filter with --pair or --in)`),
  });
  const offSignals = onStopSignal((sig) => t.stop(sig));
  // `trace | head`: the reader went away. Stays installed: writes already queued fail later.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EPIPE') throw e;
    t.stop('stdout closed', true);
  });
  lg.info({ pinRoot: c.pinRoot, pair: t.id }, `tracing ${t.id === undefined ? 'every frame' : `pair ${t.id}`}; Ctrl-C stops`);
  let end: TraceEnd;
  try {
    end = await t.done;
  } finally {
    offSignals();
  }
  lg.info({ records: end.records, lost: end.lost, why: end.why }, `trace off: ${end.records} records${end.lost ? `, ${end.lost} lost` : ''}`);
  return { records: end.records, lost: end.lost };
}

export const registerTraceCommands: CommandRegistrar = (program, ctx) => {
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
};
