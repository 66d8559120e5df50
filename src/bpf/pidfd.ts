/**
 * A process's death as an event (pidfd_open(2) and poll(2)): what lets
 * `watch` fail open the moment the enforcer DP dies instead of at its next
 * keep-alive. The poll runs on one of koffi's worker threads (fn.async), so
 * the event loop never blocks; an eventfd in the same poll set wakes it when
 * the waiter is closed first. One waiting PidFd holds one worker thread.
 */
import { KernelError } from '../errors';
import { errno, lib } from './lib';

const SYS_PIDFD_OPEN: Partial<Record<string, number>> = { x64: 434, arm64: 434 };
const POLLIN = 0x1;
const EFD_CLOEXEC = 0o2000000;
const ESRCH = 3;

/** struct pollfd[n]: { int fd; short events; short revents; }. */
function pollSet(fds: number[]): Buffer {
  const b = Buffer.alloc(8 * fds.length);
  fds.forEach((fd, i) => {
    b.writeInt32LE(fd, 8 * i);
    b.writeInt16LE(POLLIN, 8 * i + 4);
  });
  return b;
}

export class PidFd {
  private closed = false;
  private released = false;
  private waiting: Promise<'exited' | 'closed'> | undefined;
  private wake = -1;

  private constructor(
    private readonly fd: number,
    readonly pid: number,
  ) {}

  /** A pidfd for `pid`, or undefined when there is no such process (ESRCH). */
  static open(pid: number): PidFd | undefined {
    const nr = SYS_PIDFD_OPEN[process.arch];
    if (nr === undefined) throw new KernelError(`pidfd_open on ${process.arch}`, 38 /* ENOSYS */);
    const fd = Number(lib().syscall(nr, 'int', pid, 'unsigned int', 0));
    if (fd >= 0) return new PidFd(fd, pid);
    const e = errno();
    if (e === ESRCH) return undefined;
    throw new KernelError(`pidfd_open(${pid})`, e, e === 38 ? 'needs Linux >= 5.3' : undefined);
  }

  /** Whether the process has exited (poll without waiting). */
  exited(): boolean {
    if (this.released) return true;
    const set = pollSet([this.fd]);
    const r = lib().poll(set, 1, 0);
    return r > 0 && (set.readInt16LE(6) & POLLIN) !== 0;
  }

  /**
   * Resolves 'exited' when the process exits (at once if it has), 'closed'
   * when close() is called first. The same promise for every caller.
   */
  wait(): Promise<'exited' | 'closed'> {
    if (this.waiting) return this.waiting;
    if (this.closed) return Promise.resolve('closed');
    const l = lib();
    this.wake = l.eventfd(0, EFD_CLOEXEC);
    if (this.wake < 0) throw new KernelError('eventfd', errno());
    const set = pollSet([this.fd, this.wake]);
    this.waiting = new Promise((resolve, reject) => {
      let failures = 0;
      const again = (): void =>
        l.poll.async(set, 2, -1, (err, r) => {
          // errno belongs to the worker thread: a failed poll (EINTR) is simply tried again.
          if (!err && r <= 0 && !this.closed && ++failures < 100) return again();
          const exited = !err && r > 0 && (set.readInt16LE(6) & POLLIN) !== 0;
          this.release();
          if (err) return reject(err instanceof Error ? err : new Error(String(err)));
          resolve(exited && !this.closed ? 'exited' : 'closed');
        });
      again();
    });
    return this.waiting;
  }

  private release(): void {
    if (this.released) return;
    this.released = true;
    lib().close(this.fd);
    if (this.wake >= 0) lib().close(this.wake);
  }

  /** Stops a wait() (it resolves 'closed') and closes the fds. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.waiting) {
      const one = Buffer.alloc(8);
      one.writeBigUInt64LE(1n);
      lib().write(this.wake, one, 8); // the poll returns; its callback closes both fds
    } else {
      this.release();
    }
  }
}
