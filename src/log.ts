/**
 * Logging: one pino root logger for every module. Pretty on a terminal, JSON
 * lines otherwise. The level comes from --log-level, else NEUV_BPF_LOG_LEVEL,
 * else info. Logs go to stderr so command output on stdout stays data.
 */
import pino from 'pino';
import { UsageError } from './errors';

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

/**
 * The CLI's default: warnings and errors only, so stderr carries nothing but
 * the one error line when a command fails; results go to stdout.
 */
export const DEFAULT_LEVEL: LogLevel = 'warn';

/** Flag beats environment beats default. Throws a usage error on an unknown level. */
export function resolveLevel(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): LogLevel {
  const raw = flag ?? env.NEUV_BPF_LOG_LEVEL ?? DEFAULT_LEVEL;
  const v = raw.toLowerCase();
  if (!isLogLevel(v)) {
    throw new UsageError(`unknown log level '${raw}' (expected one of ${LOG_LEVELS.join(', ')})`);
  }
  return v;
}

function makeLogger(level: LogLevel, pretty: boolean): pino.Logger {
  if (pretty) {
    // pino-pretty synchronously on stderr: no worker thread, nothing lost on exit.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const pinoPretty = require('pino-pretty') as (o: object) => NodeJS.WritableStream;
    const stream = pinoPretty({
      destination: 2,
      sync: true,
      colorize: true,
      ignore: 'pid,hostname',
      translateTime: 'HH:MM:ss.l',
    });
    return pino({ level, base: undefined }, stream);
  }
  return pino({ level, base: undefined }, pino.destination({ fd: 2, sync: true }));
}

let root: pino.Logger = makeLogger(DEFAULT_LEVEL, false);

/** (Re)configures the root logger; children made before keep working via `log()`. */
export function configureLogging(level: LogLevel, pretty: boolean = process.stderr.isTTY === true): pino.Logger {
  root = makeLogger(level, pretty);
  return root;
}

/** The logger for a module: `log('loader').debug(...)`. Always the current root. */
export function log(module: string): pino.Logger {
  return root.child({ mod: module });
}

export function rootLogger(): pino.Logger {
  return root;
}
