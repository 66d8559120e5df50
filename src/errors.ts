/**
 * Typed errors: every failure the CLI reports is one of these, with a context
 * ("attach vex1234-eth0 ingress"), the errno name when the kernel refused, a
 * human sentence, and an exit code per failure class.
 */
import { constants as osConstants } from 'node:os';

/** Exit codes per failure class (documented in docs/datapath.md §6). */
export const ExitCode = {
  OK: 0,
  FAILURE: 1, // anything not classified below
  USAGE: 2, // bad arguments or input (malformed MAC, bad name, unknown command)
  PERMISSION: 3, // not root / missing CAP_BPF or CAP_NET_ADMIN
  NOT_FOUND: 4, // unknown interface, netns, object file, pair
  CONFLICT: 5, // duplicate pair or id, interface in use
  KERNEL: 6, // the kernel or verifier refused, or a feature is missing
  WRONG_NETNS: 7, // the pin root's datapath lives in another network namespace (--netns)
  UNSAFE: 8, // a path we use is not what we made: a symlink, another owner, writable by others (src/safefs.ts)
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** Human sentences for the errnos the kernel gives us most. */
const errnoText: Record<string, string> = {
  EPERM: 'Operation not permitted',
  EACCES: 'Permission denied',
  ENOENT: 'No such file or directory',
  ESRCH: 'No such process',
  EINTR: 'Interrupted system call',
  EIO: 'Input/output error',
  E2BIG: 'Argument list too long',
  EBADF: 'Bad file descriptor',
  EAGAIN: 'Resource temporarily unavailable',
  ENOMEM: 'Cannot allocate memory',
  EFAULT: 'Bad address',
  EBUSY: 'Device or resource busy',
  EEXIST: 'File exists',
  ENODEV: 'No such device',
  ENOTDIR: 'Not a directory',
  EINVAL: 'Invalid argument',
  ENOSPC: 'No space left on device',
  ERANGE: 'Result out of range',
  ENOTSUP: 'Operation not supported',
  EOPNOTSUPP: 'Operation not supported',
  ENOTSOCK: 'Not a socket',
  ENOSYS: 'Function not implemented',
  ENOTEMPTY: 'Directory not empty',
  ENOLINK: 'Link has been severed',
  ENXIO: 'No such device or address',
  ENOEXEC: 'Exec format error',
  ETIMEDOUT: 'Connection timed out',
};

export function errnoName(errno: number): string {
  const e = Math.abs(errno);
  if (e === 95) return 'EOPNOTSUPP';
  return errnoNames.get(e) ?? `errno ${e}`;
}

export function errnoSentence(errno: number): string {
  const name = errnoName(errno);
  return errnoText[name] ?? name;
}

/** What a refused operation usually means, to append as a hint. */
function errnoHint(errno: number): string | undefined {
  switch (errnoName(errno)) {
    case 'EPERM':
    case 'EACCES':
      return 'needs root (CAP_BPF and CAP_NET_ADMIN)';
    default:
      return undefined;
  }
}

export class NeuvError extends Error {
  readonly code: ExitCodeValue;
  readonly errno?: number;
  constructor(message: string, code: ExitCodeValue = ExitCode.FAILURE, opts?: { cause?: unknown; errno?: number }) {
    super(message, opts?.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'NeuvError';
    this.code = code;
    if (opts?.errno !== undefined) this.errno = Math.abs(opts.errno);
  }
}

export class UsageError extends NeuvError {
  constructor(message: string) {
    super(message, ExitCode.USAGE);
    this.name = 'UsageError';
  }
}

export class NotFoundError extends NeuvError {
  constructor(message: string) {
    super(message, ExitCode.NOT_FOUND);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends NeuvError {
  constructor(message: string) {
    super(message, ExitCode.CONFLICT);
    this.name = 'ConflictError';
  }
}

/** Run in a network namespace other than the one the pin root's datapath lives in (src/home.ts). */
export class WrongNetnsError extends NeuvError {
  constructor(message: string) {
    super(message, ExitCode.WRONG_NETNS);
    this.name = 'WrongNetnsError';
  }
}

/**
 * A kernel (or libbpf) refusal: "attach vbr-neuv ingress: Operation not
 * permitted (EPERM): needs root (CAP_BPF and CAP_NET_ADMIN)".
 */
export class KernelError extends NeuvError {
  constructor(context: string, errno: number, hint?: string, codeOverride?: ExitCodeValue) {
    const e = Math.abs(errno);
    const h = hint ?? errnoHint(e);
    const name = errnoName(e);
    const code = codeOverride ??
      (name === 'EPERM' || name === 'EACCES'
        ? ExitCode.PERMISSION
        : name === 'ENOENT' || name === 'ENODEV'
          ? ExitCode.NOT_FOUND
          : ExitCode.KERNEL);
    super(`${context}: ${errnoSentence(e)} (${name})${h ? `: ${h}` : ''}`, code, { errno: e });
    this.name = 'KernelError';
  }
}

/** Returns the exit code to use for any thrown value. */
export function exitCodeOf(err: unknown): number {
  if (err instanceof NeuvError) return err.code;
  return ExitCode.FAILURE;
}


// ---------------------------------------------------------------- the error line

/** Longest error line the CLI prints, in bytes, "neuv-bpf: " included (docs/datapath.md §6). */
export const MAX_ERROR_BYTES = 1000;
/** Longest run of characters without a space an error line keeps (a value echoed back). */
export const MAX_ECHO_CHARS = 100;

/** Cuts s to at most maxBytes bytes of UTF-8 (never inside a character), "..." marking a cut. */
function cutBytes(s: string, maxBytes: number): string {
  if (Buffer.byteLength(s) <= maxBytes) return s;
  const b = Buffer.from(s.slice(0, maxBytes)); // at most 4 bytes per code unit: enough
  let end = maxBytes - 3;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // back to a character's first byte
  return b.subarray(0, end).toString() + '...';
}

/** A value to echo in a message, cut to `max` characters with "..." (never inside a surrogate pair). */
export function cutValue(s: string, max = MAX_ECHO_CHARS): string {
  if (s.length <= max) return s;
  const end = /[\ud800-\udbff]/.test(s[max - 1]!) ? max - 1 : max;
  return `${s.slice(0, end)}...`;
}

/**
 * A message as one bounded line: line breaks become spaces, other control
 * characters \xNN (an interface name can hold an escape sequence), every
 * run of more than MAX_ECHO_CHARS characters without a space is cut, and the
 * whole is at most maxBytes bytes. The one place where error lines are bounded.
 */
export function boundedLine(msg: string, maxBytes = MAX_ERROR_BYTES): string {
  // Linear scans only (a message may echo megabytes of --file input).
  const flat = msg
    .replace(/[\r\n\t]+/g, ' ')
    .replace(/ {2,}/g, ' ')
    .replace(new RegExp(`[^ ]{${MAX_ECHO_CHARS + 1},}`, 'g'), (w) => cutValue(w))
    // eslint-disable-next-line no-control-regex
    .replace(/[\x00-\x08\x0b-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  return cutBytes(flat.trim(), maxBytes);
}

/** What the CLI reports for a failure: the line (without "neuv-bpf: "), the exit code, the errno name if the kernel refused. */
export interface ErrorReport {
  error: string;
  code: number;
  errno?: string;
}

/**
 * Any thrown value as an ErrorReport. Our typed errors keep their message;
 * anything else (a bug: a Node or koffi error that escaped) becomes one
 * generic line, since its raw message and stack are not for the user (the
 * caller logs them at debug level).
 */
export function errorReport(err: unknown): ErrorReport {
  if (err instanceof NeuvError) {
    return { error: err.message, code: err.code, ...(err.errno !== undefined ? { errno: errnoName(err.errno) } : {}) };
  }
  const sys = err as Partial<NodeJS.ErrnoException> | undefined;
  if (sys && typeof sys.code === 'string' && /^E[A-Z0-9]+$/.test(sys.code) && typeof sys.errno === 'number') {
    const what = typeof sys.syscall === 'string' ? ` in ${sys.syscall}` : '';
    return {
      error: `unexpected failure${what}: ${errnoSentence(sys.errno)} (${sys.code}) (--log-level debug logs the details)`,
      code: ExitCode.FAILURE,
      errno: sys.code,
    };
  }
  const name = err instanceof Error && /^[A-Za-z]{1,40}$/.test(err.name) ? err.name : 'error';
  return { error: `internal error (${name}): a bug in neuv-bpf, not a refusal of the input (--log-level debug logs the details)`, code: ExitCode.FAILURE };
}

/**
 * The text the CLI writes to stderr for a failure: "neuv-bpf: <line>", or
 * under --json one JSON object {"error", "code", "errno"?} on one line, both
 * at most MAX_ERROR_BYTES bytes.
 */
export function formatError(r: ErrorReport, json: boolean): string {
  if (!json) return boundedLine(`neuv-bpf: ${r.error}`);
  let max = MAX_ERROR_BYTES - 40;
  for (;;) {
    const s = JSON.stringify({ error: boundedLine(r.error, max), code: r.code, ...(r.errno ? { errno: r.errno } : {}) });
    if (Buffer.byteLength(s) <= MAX_ERROR_BYTES) return s;
    max -= Math.max(10, Buffer.byteLength(s) - MAX_ERROR_BYTES); // JSON escapes made it longer
  }
}

/** An error's message as one bounded line (boundedLine); a bug's raw message is not shown: use errorReport for what to print. */
export function oneLine(err: unknown): string {
  return boundedLine(errorReport(err).error);
}
