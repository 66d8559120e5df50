/**
 * One lock per pin root so two neuv-bpf invocations never interleave their
 * changes. flock(2) on a file under /run/neuv-bpf: the kernel drops it when
 * the holder dies (even by SIGKILL), so a stale lock cannot block anyone.
 * (bpffs refuses regular files, so the lock cannot live in the pin root.)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LOCK_EX, LOCK_NB, LOCK_UN, flock, rcuGraceAfterDeletes } from './bpf';
import { ExitCode, NeuvError } from './errors';
import { log } from './log';

export const LOCK_DIR = process.env.NEUV_BPF_LOCK_DIR ?? '/run/neuv-bpf';

export function lockPath(pinRoot: string): string {
  return path.join(LOCK_DIR, pinRoot.replace(/\//g, '_') + '.lock');
}

/**
 * Runs fn while holding the pin root's lock; waits up to timeoutMs for it.
 * If fn deleted map entries, an RCU grace period passes before the lock is
 * released (rcuGraceAfterDeletes in src/bpf.ts: no insert after ours reuses an
 * element a program may still be reading).
 */
export async function withLock<T>(pinRoot: string, fn: () => Promise<T> | T, timeoutMs = 30000): Promise<T> {
  fs.mkdirSync(LOCK_DIR, { recursive: true, mode: 0o700 });
  const p = lockPath(pinRoot);
  const fd = fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    const start = Date.now();
    let waited = false;
    while (!flock(fd, LOCK_EX | LOCK_NB, p)) {
      if (!waited) log('lock').info({ lock: p }, 'another neuv-bpf holds the lock; waiting');
      waited = true;
      if (Date.now() - start > timeoutMs) {
        throw new NeuvError(`another neuv-bpf process holds ${p} for more than ${timeoutMs / 1000} s`, ExitCode.CONFLICT);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    try {
      return await fn();
    } finally {
      rcuGraceAfterDeletes(); // still holding the lock
    }
  } finally {
    try {
      flock(fd, LOCK_UN, p);
    } finally {
      fs.closeSync(fd);
    }
  }
}
