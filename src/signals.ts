/**
 * SIGINT, SIGTERM and SIGHUP, for every command in one place.
 *
 * A command that changes the kernel in steps (intercept, release, load,
 * adopt, handback, pair add, ...) holds these signals: the handler only
 * notes the first one, and the command goes on to its next safe point
 * (safePoint(): between two steps of intercept or release, while waiting
 * for a lock), where an InterruptedError rolls it back through its undo
 * stack, or to its end. The CLI (src/cli.ts) then prints one line saying
 * which and exits 128 + the signal's number (130, 143, 129). A command
 * killed half-way would leave a container without eth0 until `repair`.
 *
 * bin/neuv-bpf holds them from its first line, so a signal during start-up
 * is not lost either; the CLI releases them (and re-raises one that came)
 * for the commands that do not hold them. Long-running commands (trace,
 * watch, stats --watch, demo) stop on them instead: onStopSignal().
 */
import * as os from 'node:os';
import { NeuvError } from './errors';

export const STOP_SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

let caught: NodeJS.Signals | undefined;
let held = false;
let rollbackFailures = 0;
const note = (sig: NodeJS.Signals) => {
  caught ??= sig;
};

/** From now on a stop signal is only noted (see caughtSignal and safePoint). */
export function holdSignals(): void {
  if (held) return;
  held = true;
  for (const s of STOP_SIGNALS) process.on(s, note);
}

/**
 * Back to the default action. With `raise`, a signal noted meanwhile is
 * raised again now: the process dies of it (a command that does not hold
 * signals, interrupted while the CLI started).
 */
export function releaseSignals(raise = false): void {
  for (const s of STOP_SIGNALS) process.removeListener(s, note);
  held = false;
  const sig = caught;
  caught = undefined;
  if (raise && sig) process.kill(process.pid, sig);
}

/** Whether stop signals are held now. */
export function signalsHeld(): boolean {
  return held;
}

/** The first stop signal noted while they were held. */
export function caughtSignal(): NodeJS.Signals | undefined {
  return caught;
}

/** The exit code of a process stopped by sig: 128 + its number (SIGINT 130, SIGTERM 143, SIGHUP 129). */
export function signalExitCode(sig: NodeJS.Signals): number {
  return 128 + (os.constants.signals[sig] ?? 15);
}

/** Thrown at a safe point after a stop signal: the command rolls back what it did and stops. */
export class InterruptedError extends NeuvError {
  constructor(readonly signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
    this.name = 'InterruptedError';
  }
}

/** A point where stopping is safe (the undo stack covers everything done so far): throws if a signal came. */
export function safePoint(): void {
  if (caught) throw new InterruptedError(caught);
}

/** An undo step failed (src/undo.ts): an interrupted command then says its rollback was incomplete. */
export function noteRollbackFailure(): void {
  rollbackFailures++;
}

export function rollbackFailureCount(): number {
  return rollbackFailures;
}

/**
 * For long-running commands that stop on a signal (trace, watch, stats
 * --watch, demo): calls fn on SIGINT, SIGTERM or SIGHUP; returns the
 * function that removes the handlers again.
 */
export function onStopSignal(fn: (sig: NodeJS.Signals) => void): () => void {
  for (const s of STOP_SIGNALS) process.on(s, fn);
  return () => {
    for (const s of STOP_SIGNALS) process.removeListener(s, fn);
  };
}
