/**
 * An undo stack: every step that changes the kernel registers how to take it
 * back; on failure the undos run in reverse, each failure logged and the rest
 * still run, so a failed command leaves the kernel as it found it.
 */
import { log } from './log';
import { noteRollbackFailure } from './signals';

export class Undo {
  private steps: Array<{ what: string; fn: () => unknown }> = [];
  constructor(private readonly scope: string) {}

  push(what: string, fn: () => unknown): void {
    this.steps.push({ what, fn });
  }

  /** Runs the undos in reverse, awaiting any that return a promise. Returns how many failed. */
  async run(): Promise<number> {
    let failures = 0;
    for (const s of this.steps.reverse()) {
      try {
        await s.fn();
        this.ok(s.what);
      } catch (e) {
        failures++;
        this.failed(s.what, e);
      }
    }
    this.steps = [];
    return failures;
  }

  /** Runs the undos in reverse for synchronous steps (throws if one returns a promise). */
  runSync(): void {
    for (const s of this.steps.reverse()) {
      try {
        const r = s.fn();
        if (r instanceof Promise) throw new Error('asynchronous undo step in runSync');
        this.ok(s.what);
      } catch (e) {
        this.failed(s.what, e);
      }
    }
    this.steps = [];
  }

  /** Success: keep everything, forget the undos. */
  clear(): void {
    this.steps = [];
  }

  private ok(what: string): void {
    log(this.scope).debug({ undo: what }, 'rolled back');
  }

  private failed(what: string, e: unknown): void {
    noteRollbackFailure();
    log(this.scope).warn({ undo: what, err: (e as Error).message }, 'rollback step failed');
  }
}
