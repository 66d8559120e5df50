/**
 * neuv-bpf command line: a thin shell over the typed API in src/. Global
 * options are applied once (log level, netns, pin root) before any command
 * runs; every failure is one line on stderr and a distinct exit code.
 */
import { Command, CommanderError, Option } from 'commander';
import { Ctx, CommandRegistrar, GlobalOpts } from './cli/context';
import { ErrorReport, ExitCode, UsageError, errorReport, formatError } from './errors';
import { configureLogging, log, resolveLevel, LOG_LEVELS } from './log';
import { enterNetns } from './link';
import { checkPinRoot, checkPrivileges, pinRootFrom } from './pins';
import { checkHome } from './home';
import { register as registerVersion } from './cli/version';
import { registerLoadCommands } from './cli/load';
import { registerPairCommands } from './cli/pair';
import { register as registerTrace } from './cli/trace';
import { startCommandTrace, stopCommandTrace } from './trace';
import { registerInterceptCommands } from './cli/intercept';
import { registerDemoCommands } from './cli/demo';
import { registerRepairCommands } from './cli/repair';
import { registerMigrateCommands } from './cli/migrate';
import { registerFlowCommands } from './cli/flow';
import { registerWatchCommands } from './cli/watch';
import { registerServeCommands } from './cli/serve';

export type { Ctx, CommandRegistrar, GlobalOpts } from './cli/context';

/**
 * Command modules (src/cli/*.ts), in the order their commands appear in --help.
 * Add one line per module.
 */
const registrars: CommandRegistrar[] = [
  // COMMAND MODULES
  registerLoadCommands,
  registerVersion,
  registerPairCommands,
  registerTrace,
  registerInterceptCommands,
  registerDemoCommands,
  registerRepairCommands,
  registerMigrateCommands,
  registerFlowCommands,
  registerWatchCommands,
  registerServeCommands,
];

export { printJson } from './cli/context';

/** Commands that run without root (everything else needs CAP_BPF + CAP_NET_ADMIN). */
export const UNPRIVILEGED = new Set<string>(['version']);
/** Commands that do not act on the pin root's datapath, so run in any netns (every other refuses outside its home). */
const HOMELESS = new Set<string>(['version', 'demo', 'discover']);

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
      if (!UNPRIVILEGED.has(actionCommand.name())) {
        checkPrivileges();
        checkPinRoot(ctx.pinRoot);
      }
      if (g.netns) enterNetns(g.netns);
      if (!HOMELESS.has(actionCommand.name())) checkHome(ctx.pinRoot); // before anything else: src/home.ts
      log('cli').debug({ command: actionCommand.name(), logLevel: level, pinRoot: ctx.pinRoot, netns: g.netns }, 'start');
      // --log-level trace: the datapath trace rides along (records as trace-level log lines).
      if (level === 'trace' && actionCommand.name() !== 'trace' && !UNPRIVILEGED.has(actionCommand.name())) startCommandTrace(ctx.pinRoot);
    })
    .hook('postAction', () => stopCommandTrace());

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
    if (e instanceof CommanderError && (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help')) {
      return (process.exitCode = ExitCode.OK);
    }
    return (process.exitCode = printError(e, jsonWanted(argv)));
  } finally {
    stopCommandTrace();
  }
}

/** --json given as a word of its own (before any "--"): errors are JSON then, even one commander found before any option was applied. */
function jsonWanted(argv: string[]): boolean {
  const end = argv.indexOf('--');
  return argv.slice(2, end < 0 ? undefined : end).includes('--json');
}

/**
 * The CLI's one error printer: any failure as one line on stderr
 * ("neuv-bpf: ..." or a JSON object, at most MAX_ERROR_BYTES), its details
 * (a stack, a raw library message) only in the debug log. Returns the exit code.
 */
export function printError(e: unknown, json: boolean): number {
  const r: ErrorReport =
    e instanceof CommanderError
      ? // commander adds "(Did you mean ...?)" on a line of its own: formatError keeps it on the line
        { error: e.message.replace(/^error: /, ''), code: ExitCode.USAGE }
      : errorReport(e);
  process.stderr.write(formatError(r, json) + '\n');
  const verifierLog = (e as { verifierLog?: string } | undefined)?.verifierLog;
  if (verifierLog) {
    // After the one error line, at any level: the end of the refused program's verifier log (not under --json: one object).
    const tail = verifierTail(verifierLog);
    if (tail.length && !json) process.stderr.write(tail.join('\n') + '\n');
    log('cli').debug({ verifierLog }, 'verifier log');
  }
  if (!(e instanceof UsageError) && !(e instanceof CommanderError)) log('cli').debug({ err: e }, 'failure details');
  return r.code;
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
