/**
 * neuv-bpf command line: a thin shell over the typed API in src/. Global
 * options are applied once (log level, netns, pin root) before any command
 * runs; every failure is one line on stderr and a distinct exit code.
 */
import { Command, CommanderError, HelpContext } from 'commander';
import { Ctx, CommandRegistrar, GlobalOpts } from './cli/context';
import { ErrorReport, ExitCode, UsageError, errorReport, formatError, oneLine } from './errors';
import { configureLogging, log, resolveLevel, LOG_LEVELS } from './log';
import { enterNetns } from './link';
import { checkPinRoot, checkPrivileges, pinRootFrom } from './pins';
import { checkHome, homeGone } from './home';
import { registerVersionCommands } from './cli/version';
import { registerLoadCommands } from './cli/load';
import { registerPairCommands } from './cli/pair';
import { registerTraceCommands } from './cli/trace';
import { startCommandTrace, stopCommandTrace } from './trace';
import { InterruptedError, caughtSignal, holdSignals, releaseSignals, rollbackFailureCount, safePoint, signalExitCode } from './signals';
import { registerInterceptCommands } from './cli/intercept';
import { registerDemoCommands } from './cli/demo';
import { registerRepairCommands } from './cli/repair';
import { registerMigrateCommands } from './cli/migrate';
import { registerFlowCommands } from './cli/flow';
import { registerWatchCommands } from './cli/watch';
import { registerServeCommands } from './cli/serve';
import { registerOciHookCommands } from './cli/oci-hook';

export type { Ctx, CommandRegistrar, GlobalOpts } from './cli/context';

/**
 * Command modules (src/cli/*.ts), in the order their commands appear in --help.
 * Add one line per module.
 */
const registrars: CommandRegistrar[] = [
  // COMMAND MODULES
  registerLoadCommands,
  registerVersionCommands,
  registerPairCommands,
  registerTraceCommands,
  registerInterceptCommands,
  registerDemoCommands,
  registerRepairCommands,
  registerMigrateCommands,
  registerFlowCommands,
  registerWatchCommands,
  registerServeCommands,
  registerOciHookCommands,
];

export { printJson } from './cli/context';

/** Commands that run without root (everything else needs CAP_BPF + CAP_NET_ADMIN). */
export const UNPRIVILEGED = new Set<string>(['version']);
/** Commands that do not act on the pin root's datapath, so run in any netns (every other refuses outside its home). */
const HOMELESS = new Set<string>(['version', 'demo', 'discover']);

type Opts = Record<string, string | boolean | undefined>;
const targetOf = (o: Opts) => `${o.port ?? 'eth0'} of ${o.pid !== undefined ? `pid ${o.pid}` : `netns ${o.containerNetns}`}`;

/**
 * The commands that change the kernel in steps hold SIGINT, SIGTERM and
 * SIGHUP (src/signals.ts): one arriving lets the command roll back at its
 * next safe point or finish, then the CLI says which in one line, naming
 * the command as given here, and exits 128 + the signal's number.
 */
export const HOLDS_SIGNALS: Record<string, (o: Opts) => string> = {
  load: () => 'load',
  unload: () => 'unload',
  intercept: (o) => `intercept of ${targetOf(o)}`,
  release: (o) => `release of ${targetOf(o)}`,
  adopt: () => 'adopt',
  handback: () => 'handback',
  repair: () => 'repair',
  'pair add': (o) => (o.file !== undefined ? `pair add --file ${o.file}` : `pair add ${o.in}/${o.ex}`),
  'pair del': () => 'pair del',
  'pair mode': () => 'pair mode',
  'oci-hook': () => 'oci-hook',
};

/** A command's name with its parents' ("pair add"). */
function commandPath(c: Command): string {
  const names: string[] = [];
  for (let x: Command | null = c; x?.parent; x = x.parent) names.unshift(x.name());
  return names.join(' ');
}

/**
 * What the running command holds signals for ("intercept of eth0 of pid 12"),
 * set once its options are parsed; undefined for a command that does not.
 */
let holding: string | undefined;
/** Set by main(): a program built for a test process (buildProgram) leaves its signals alone. */
let isMain = false;

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
    .option('--log-level <level>', `log level: ${LOG_LEVELS.join(', ')}, in any case (env NEUV_BPF_LOG_LEVEL, the same spellings)`)
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
      const describe = HOLDS_SIGNALS[commandPath(actionCommand)];
      if (!isMain) {
        /* not the CLI process */
      } else if (describe) {
        holdSignals();
        holding = describe(actionCommand.opts<Opts>());
        safePoint(); // a signal during start-up: stop before anything changed
      } else releaseSignals(true); // the default action (trace, watch, demo install their own)
      const g = thisCommand.opts<GlobalOpts>();
      const level = resolveLevel(g.logLevel);
      configureLogging(level);
      const json = Boolean(g.json ?? actionCommand.opts<{ json?: boolean }>().json);
      ctx = { pinRoot: pinRootFrom(g.bpffs), json, out };
      const c = ctx;
      const setUp = () => {
        if (!UNPRIVILEGED.has(actionCommand.name())) {
          checkPrivileges();
          checkPinRoot(c.pinRoot);
        }
        if (g.netns) enterNetns(g.netns);
        // Before anything else (src/home.ts); `unload --force` of a pin root whose netns is gone is the way out.
        const orphan = actionCommand.name() === 'unload' && actionCommand.opts<{ force?: boolean }>().force === true && homeGone(c.pinRoot);
        if (!HOMELESS.has(actionCommand.name()) && !orphan) checkHome(c.pinRoot);
      };
      if (actionCommand.name() === 'oci-hook' && actionCommand.opts<Opts>().onFailure === 'open') {
        // Fail-open covers the set-up too (no enforcer netns, no datapath): the hook counts it and lets the container start.
        try {
          setUp();
        } catch (e) {
          c.setupError = e;
        }
      } else setUp();
      log('cli').debug({ command: actionCommand.name(), logLevel: level, pinRoot: ctx.pinRoot, netns: g.netns }, 'start');
      // --log-level trace: the datapath trace rides along (records as trace-level log lines).
      if (level === 'trace' && actionCommand.name() !== 'trace' && !UNPRIVILEGED.has(actionCommand.name())) startCommandTrace(ctx.pinRoot);
    })
    .hook('postAction', () => stopCommandTrace());

  for (const r of registrars) r(program, getCtx);
  requireSubcommands(program);
  return program;
}

/**
 * A command that only groups others (pair, flow, and the program itself)
 * run without one: one usage line, exit 2, instead of commander's help on
 * stderr and exit 0.
 */
function requireSubcommands(c: Command): void {
  if (c.commands.length === 0) return;
  const help = c.help.bind(c);
  c.help = ((context?: HelpContext) => {
    if (!context?.error) return help(context);
    const path = commandPath(c);
    const names = c.commands.map((s) => s.name()).filter((n) => n !== 'help');
    throw new UsageError(path
      ? `${path} needs a subcommand: ${names.join(', ')} (neuv-bpf ${path} --help)`
      : `no command given (neuv-bpf --help lists them)`);
  }) as Command['help'];
  for (const s of c.commands) requireSubcommands(s);
}

/** Runs the CLI; returns the exit code (also set on process.exitCode). */
export async function main(argv: string[] = process.argv): Promise<number> {
  const program = buildProgram();
  holding = undefined;
  isMain = true;
  try {
    await program.parseAsync(argv);
    const sig = holding ? caughtSignal() : undefined;
    if (sig) return (process.exitCode = interruptedLine(sig, 'finished', undefined));
    return (process.exitCode = ExitCode.OK);
  } catch (e) {
    const sig = holding ? caughtSignal() : undefined;
    if (sig) return (process.exitCode = interruptedLine(sig, 'rolled back', e));
    if (e instanceof CommanderError && (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help')) {
      return (process.exitCode = ExitCode.OK);
    }
    return (process.exitCode = printError(e, jsonWanted(argv)));
  } finally {
    stopCommandTrace();
    // A command that held signals keeps them held until the process exits: one coming now is too late to change its outcome.
    if (!holding) releaseSignals(true);
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

/**
 * The one line of a command interrupted while it held signals: finished, or
 * rolled back (with the failure that made it roll back, when that was not
 * the signal itself: a step's child process killed by it). Returns the exit code.
 */
function interruptedLine(sig: NodeJS.Signals, outcome: 'finished' | 'rolled back', err: unknown): number {
  const what = holding!;
  const why = err === undefined || err instanceof InterruptedError ? '' : ` (after: ${oneLine(err)})`;
  const line = outcome === 'finished'
    ? `finished ${what}`
    : rollbackFailureCount()
      ? `rolled back ${what} only in part${why}: neuv-bpf repair finishes it from the journal`
      : `rolled back ${what}${why}`;
  process.stderr.write(`neuv-bpf: interrupted by ${sig}: ${line}\n`);
  if (err !== undefined) log('cli').debug({ err }, 'interrupted');
  return signalExitCode(sig);
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
