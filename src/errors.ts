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

/** The one line printed for an error. */
export function oneLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return msg.split('\n')[0] ?? msg;
}
