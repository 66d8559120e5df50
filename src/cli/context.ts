/**
 * What every command module of src/cli/ shares: the context the global
 * options resolve to (Ctx), how a module registers its commands, JSON output,
 * and opening the datapath for one command. cli.ts imports the command
 * modules; they import this file, never cli.ts (no import cycle).
 */
import type { Command } from 'commander';
import { Datapath } from '../pairs';
import { bigintAsNumber } from '../format';
import { VTH, ifindexIfExists, packetSocketOn } from '../link';
import { log } from '../log';
import { ServiceClient, runningService } from '../service/client';

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
  /** A failure of the set-up the global options ask for, left to a command that handles it itself (oci-hook --on-failure open). */
  setupError?: unknown;
}

/** A command module adds its commands to the program; it gets the context lazily. */
export type CommandRegistrar = (program: Command, ctx: () => Ctx) => void;

export { bigintAsNumber };

/**
 * The one way a command prints data under --json: its result as indented
 * JSON, or with `line` one value per line (the streams of stats --watch,
 * trace and watch); counters (bigint) as numbers.
 */
export function printJson(ctx: Ctx, v: unknown, opts: { line?: boolean } = {}): void {
  ctx.out(opts.line ? JSON.stringify(v, bigintAsNumber) : JSON.stringify(v, bigintAsNumber, 2));
}

/**
 * A pair put in fwd with nothing reading vth-neuv (no DP: no packet socket
 * bound to it) gets its workload's traffic dropped until a DP runs: one
 * warning line on stderr, the command goes on (exit 0).
 */
export function warnIfNoDp(modes: Array<string | undefined>): void {
  if (!modes.includes('fwd')) return;
  const vth = ifindexIfExists(VTH);
  if (!vth || packetSocketOn(vth)) return;
  process.stderr.write(`neuv-bpf: warning: nothing reads ${VTH} (no packet socket bound to it: no DP runs); a pair in fwd gets none of its workload's IPv4 unicast through until one does\n`);
}

/** Opens the datapath at the context's pin root for fn, closing it afterwards. */
export async function withDatapath<T>(c: Ctx, fn: (dp: Datapath) => Promise<T>): Promise<T> {
  const dp = Datapath.open(c.pinRoot);
  try {
    return await fn(dp);
  } finally {
    dp.close();
  }
}

/**
 * Runs a command that changes the datapath through the service that owns
 * the pin root (`neuv-bpf serve`, when one answers on its socket: one owner
 * of the datapath, docs/api.md), else standalone. Both ways validate,
 * lock and refuse alike; `viaService` gets the typed client.
 */
export async function throughService<T>(c: Ctx, viaService: (s: ServiceClient) => Promise<T>, standalone: () => Promise<T>): Promise<T> {
  const socket = await runningService(c.pinRoot);
  if (!socket) return standalone();
  log('cli').debug({ socket }, 'through the service that owns the pin root');
  const s = new ServiceClient({ socket });
  try {
    return await viaService(s);
  } finally {
    s.close();
  }
}
