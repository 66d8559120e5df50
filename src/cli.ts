/**
 * neuv-bpf command line: a thin shell over the typed API in src/. Global
 * options are applied once (log level, netns, pin root) before any command
 * runs; every failure is one line on stderr and a distinct exit code.
 */
import { Command, CommanderError, Option } from 'commander';
import { ExitCode, UsageError, exitCodeOf, oneLine } from './errors';
import { configureLogging, log, resolveLevel, LOG_LEVELS } from './log';
import { enterNetns } from './link';
import { checkPrivileges, load, pinRootFrom, unload } from './loader';
import { withLock } from './lock';
import { register as registerVersion } from './cli-version';
import { registerPairCommands } from './cli-pair';
import { register as registerTrace } from './cli-trace';
import { startCommandTrace, stopCommandTrace } from './trace';
import { registerInterceptCommands } from './cli-intercept';
import { registerDemoCommands } from './cli-demo';
import { registerRepairCommands } from './cli-repair';
import { registerMigrateCommands } from './cli-migrate';
import { registerFlowCommands } from './cli-flow';
import { registerWatchCommands } from './cli-watch';

export interface GlobalOpts {
  netns?: string;
  bpffs?: string;
  logLevel?: string;
  json?: boolean;
}

/** What every command gets: resolved global options. */
export interface Ctx {
  pinRoot: string;
  json: boolean;
  out: (s: string) => void;
}

/** A command module adds its commands to the program; it gets the context lazily. */
export type CommandRegistrar = (program: Command, ctx: () => Ctx) => void;

/**
 * Command modules (src/cli-*.ts), in the order their commands appear in --help.
 * Add one line per module.
 */
const registrars: CommandRegistrar[] = [
  // COMMAND MODULES
  registerVersion,
  registerPairCommands,
  registerTrace,
  registerInterceptCommands,
  registerDemoCommands,
  registerRepairCommands,
  registerMigrateCommands,
  registerFlowCommands,
  registerWatchCommands,
];

export function printJson(ctx: Ctx, v: unknown): void {
  ctx.out(JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? Number(x) : x), 2));
}

/** Commands that run without root (everything else needs CAP_BPF + CAP_NET_ADMIN). */
export const UNPRIVILEGED = new Set<string>(['version']);

export function buildProgram(out: (s: string) => void = (s) => process.stdout.write(s + '\n')): Command {
  let ctx: Ctx | undefined;
  const getCtx = (): Ctx => {
    if (!ctx) throw new Error('internal: global options not applied');
    return ctx;
  };
  const program = new Command('neuv-bpf')
    .description('eBPF dataplane for container traffic interception (replaces the NeuVector tc pipe)')
    .option('--netns <name|path>', 'enter this network namespace first (like ip -n)')
    .option('--bpffs <dir>', 'pin root (env NEUV_BPF_PIN_ROOT)', undefined)
    .addOption(new Option('--log-level <level>', 'log level (env NEUV_BPF_LOG_LEVEL)').choices(LOG_LEVELS))
    .option('--json', 'machine-readable output where the output is data')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => process.stdout.write(s),
      writeErr: (s) => process.stderr.write(s),
      outputError: () => {
        /* printed once by main() */
      },
    })
    .hook('preAction', (thisCommand, actionCommand) => {
      const g = thisCommand.opts<GlobalOpts>();
      const level = resolveLevel(g.logLevel);
      configureLogging(level);
      const json = Boolean(g.json ?? actionCommand.opts<{ json?: boolean }>().json);
      ctx = { pinRoot: pinRootFrom(g.bpffs), json, out };
      if (!UNPRIVILEGED.has(actionCommand.name())) checkPrivileges();
      if (g.netns) enterNetns(g.netns);
      log('cli').debug({ command: actionCommand.name(), logLevel: level, pinRoot: ctx.pinRoot, netns: g.netns }, 'start');
      // --log-level trace: the datapath trace rides along (records as trace-level log lines).
      if (level === 'trace' && actionCommand.name() !== 'trace' && !UNPRIVILEGED.has(actionCommand.name())) startCommandTrace(ctx.pinRoot);
    })
    .hook('postAction', () => stopCommandTrace());

  program
    .command('load')
    .description('create vbr-neuv/vth-neuv if missing, load and pin the BPF object, attach vbr-neuv (idempotent; a rerun replaces the programs in place and keeps the maps)')
    .option('--jumbo', 'MTU 9000 on vbr-neuv/vth-neuv instead of 2048')
    .option('--obj <file>', 'BPF object to load (default: build/neuv.bpf.o of this package)')
    .option('--flows <n>', 'size of the flow offload map neuv_flows (default 65536, or the size it is pinned with; changing it needs unload)')
    .option('--json', 'print the result as JSON')
    .action(async (o: { jumbo?: boolean; obj?: string; flows?: string }) => {
      const c = getCtx();
      if (o.flows !== undefined && !/^[0-9]+$/.test(o.flows)) throw new UsageError(`--flows '${o.flows}' is not a number of entries`);
      const flows = o.flows === undefined ? undefined : Number(o.flows);
      const r = await withLock(c.pinRoot, () => load({ pinRoot: c.pinRoot, objPath: o.obj, jumbo: o.jumbo, flows }));
      if (c.json) printJson(c, r);
      else {
        c.out(`${r.replaced ? 'replaced programs in place' : 'loaded'}: pin root ${r.pinRoot}, programs vin=${r.progIds.vin} vex=${r.progIds.vex} vbr=${r.progIds.vbr}` +
          (r.reattached ? `, ${r.reattached} port hooks swapped` : '') + (r.created ? ', created vbr-neuv/vth-neuv' : ''));
      }
    });

  program
    .command('unload')
    .description('detach from every port, unpin everything, delete vbr-neuv/vth-neuv')
    .option('--json', 'print the result as JSON')
    .action(async () => {
      const c = getCtx();
      const r = await withLock(c.pinRoot, () => unload(c.pinRoot));
      if (c.json) printJson(c, r);
      else c.out(r.wasLoaded ? `unloaded: ${r.detached} hooks detached, ${r.removed.length} pins removed` : 'nothing was loaded');
    });

  for (const r of registrars) r(program, getCtx);
  return program;
}

/** Runs the CLI; returns the exit code (also set on process.exitCode). */
export async function main(argv: string[] = process.argv): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return (process.exitCode = ExitCode.OK);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
        return (process.exitCode = ExitCode.OK);
      }
      process.stderr.write(`neuv-bpf: ${e.message.replace(/^error: /, '').replace(/\s*\n+/g, ' ')}\n`); // one line: commander adds "(Did you mean ...?)" on a line of its own
      return (process.exitCode = ExitCode.USAGE);
    }
    const code = exitCodeOf(e);
    process.stderr.write(`neuv-bpf: ${oneLine(e)}\n`);
    const verifierLog = (e as { verifierLog?: string }).verifierLog;
    if (verifierLog) {
      // After the one error line, at any level: the end of the refused program's verifier log.
      const tail = verifierTail(verifierLog);
      if (tail.length) process.stderr.write(tail.join('\n') + '\n');
      log('cli').debug({ verifierLog }, 'verifier log');
    }
    if (!(e instanceof UsageError)) log('cli').debug({ err: e }, 'failure details');
    return (process.exitCode = code);
  } finally {
    stopCommandTrace();
  }
}

/** An instruction line of a verifier log: "12: (71) r1 = *(u8 *)(r1 +20)". */
const INSN_LINE = /^\d+: \([0-9a-f]{2}\)/;

/**
 * The last `max` lines of the first refused program's verifier log (between
 * libbpf's BEGIN/END PROG LOAD LOG markers), under a header naming the
 * program, with the failing instruction (the last instruction line) marked
 * '>>'. Empty when the output holds no verifier log.
 */
export function verifierTail(libbpfOutput: string, max = 20): string[] {
  const m = /prog '([^']+)': -- BEGIN PROG LOAD LOG --\n([\s\S]*?)(?:\n-- END PROG LOAD LOG --|$)/.exec(libbpfOutput);
  if (!m) return [];
  const lines = m[2]!.split('\n').filter((l) => l.trim().length > 0);
  const tail = lines.slice(-max);
  let failing = -1;
  for (let i = tail.length - 1; i >= 0; i--) {
    if (INSN_LINE.test(tail[i]!)) {
      failing = i;
      break;
    }
  }
  const skipped = lines.length - tail.length;
  return [
    `verifier log of ${m[1]}${skipped ? ` (last ${tail.length} of ${lines.length} lines; --log-level debug for all of it)` : ''}:`,
    ...tail.map((l, i) => (i === failing ? '>> ' : '   ') + l),
  ];
}

if (require.main === module) {
  void main();
}
