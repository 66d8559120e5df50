/**
 * The stub enforcer DP (build/stub-dp, tools/stub-dp.c) on vth-neuv in a
 * netns, started one way for the demo, the kernel suites and the
 * benchmarks: StubDp.start(), stopped by runCleanups() (or stop()), its
 * counts (frames per pair, direction and kind: "udp/8080", "icmp"...) read
 * fresh with counts(). It writes every frame of a pair back to the
 * datapath, so FWD forwards through it, and drops what --drop-port names.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { netnsPath } from '../src/netns';
import { onCleanup, STUB_DP, TIME_SCALE, waitFor } from './proc';

export interface StubKind {
  frames: number;
  dropped: number;
}
export interface StubDir {
  frames: number;
  bytes: number;
  sent: number;
  dropped: number;
  kinds: Record<string, StubKind>;
}
export interface StubCounts {
  seq: number;
  rx: number;
  sent: number;
  dropped: number;
  ignored: number;
  truncated: number;
  send_errors: number;
  /** Flow offload (--pin-root): flows offloaded, DENY entries written, failed writes, flows tracked. */
  offloaded?: number;
  denied?: number;
  offload_errors?: number;
  flows?: number;
  pairs: Record<string, { id: number; to_wl: StubDir; from_wl: StubDir }>;
}

export interface StubDpOptions {
  /** TCP and UDP ports it drops (--drop-port). */
  dropPorts?: number[];
  /** More of its options (--pin-root, --offload-after ...). */
  args?: string[];
  /** Enter the netns with nsenter: `ip netns exec` mounts a fresh /sys, which hides the bpffs its --pin-root is on. */
  nsenter?: boolean;
  /** How often it writes its counts when they changed (default 50 ms; counts() asks for a write anyway). */
  intervalMs?: number;
  /**
   * A command it runs under: ['nice', '-n', '-15'] (favoured as an
   * enforcer's DP would be, so a busy machine does not starve it), or the
   * benchmarks' SCHED_FIFO (chrt).
   */
  under?: string[];
  /** The binary (default build/stub-dp; the benchmarks pass their run's copy). */
  bin?: string;
}

/** build/stub-dp running on vth-neuv in a netns. */
export class StubDp {
  private constructor(
    readonly child: ChildProcess,
    /** Where it writes its counts (--out). */
    readonly file: string,
    private readonly dir: string,
  ) {}

  /** Starts it in netns `ns` (a name); resolves once it reads vth-neuv (its --out file exists). Stopped by runCleanups(). */
  static async start(ns: string, o: StubDpOptions = {}): Promise<StubDp> {
    const bin = o.bin ?? STUB_DP;
    if (!fs.existsSync(bin)) throw new Error(`${bin} not found (make build)`);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'neuv-stubdp-'));
    const file = path.join(dir, 'counts.json');
    const args = ['--out', file, '--interval-ms', String(o.intervalMs ?? 50), ...(o.dropPorts ?? []).flatMap((p) => ['--drop-port', String(p)]), ...(o.args ?? [])];
    const enter = o.nsenter ? ['nsenter', `--net=${netnsPath(ns)}`] : ['ip', 'netns', 'exec', ns];
    const argv = [...enter, ...(o.under ?? []), bin, ...args];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    child.on('error', () => undefined);
    const s = new StubDp(child, file, dir);
    onCleanup(() => s.stop(), `stub DP in ${ns}`);
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    await waitFor(`the stub DP in ${ns} to bind`, () => {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`stub-dp in ${ns} exited: ${err.trim()}`);
      return fs.existsSync(file);
    }, 10000 * TIME_SCALE);
    return s;
  }

  /** Fresh counts: asks it to write them now (SIGUSR1) and waits up to timeoutMs for that write. T adds what its options add. */
  async counts<T extends StubCounts = StubCounts>(timeoutMs = 3000): Promise<T> {
    const read = (): T | undefined => {
      try {
        return JSON.parse(fs.readFileSync(this.file, 'utf8')) as T;
      } catch {
        return undefined;
      }
    };
    const before = read()?.seq ?? 0;
    this.child.kill('SIGUSR1');
    return waitFor('fresh stub-dp counts', () => {
      const c = read();
      return c && c.seq > before ? c : undefined;
    }, timeoutMs, 5);
  }

  /** Frames of a kind ("udp/8080", "icmp", ...) over every pair and direction, or of one UCMAC/direction. */
  static frames(c: StubCounts, kind: string, ucmac?: string, dir?: 'to_wl' | 'from_wl'): { frames: number; dropped: number } {
    let frames = 0;
    let dropped = 0;
    for (const [mac, p] of Object.entries(c.pairs)) {
      if (ucmac && mac !== ucmac) continue;
      for (const d of ['to_wl', 'from_wl'] as const) {
        if (dir && d !== dir) continue;
        const k = p[d].kinds[kind];
        frames += k?.frames ?? 0;
        dropped += k?.dropped ?? 0;
      }
    }
    return { frames, dropped };
  }

  /** Kills it and removes its counts (idempotent). */
  stop(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
