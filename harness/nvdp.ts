/**
 * NeuVector's real enforcer DP (the `dp/` of github.com/neuvector/neuvector)
 * for the tests, the demo and the benchmarks: found as a source tarball,
 * built once into build/nvdp/ (rebuilt when the tarball changes), started
 * in a network namespace with a private /tmp (tools/nvdp-run.c) and driven
 * through its control socket (./client.ts). docs/neuvector-dp.md.
 *
 * The tarball: $NEUV_BPF_NVDP_TARBALL, else the one vendored in
 * third_party/neuvector-dp/ (its README: where it comes from, its licenses).
 * The binary is never part of the repository. `make nvdp` builds it.
 */
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DpClient, packetSocketsOn } from '../src/dp/client';
import { PACKAGE_ROOT as ROOT } from '../src/root';

export const NVDP_DIR = path.join(ROOT, 'build', 'nvdp');
export const NVDP_BIN = path.join(NVDP_DIR, 'dp');
export const NVDP_RUN = path.join(ROOT, 'build', 'nvdp-run');
/** Where the repository keeps the DP's source tarball. */
export const NVDP_VENDOR_DIR = path.join(ROOT, 'third_party', 'neuvector-dp');
const STAMP = path.join(NVDP_DIR, 'tarball.sha256');

/** The DP's Debian build packages (scripts/deps.sh installs them). */
export const NVDP_BUILD_PACKAGES = [
  'libpcap-dev', 'libpcre2-dev', 'libjansson-dev', 'libjemalloc-dev', 'liburcu-dev',
  'libnetfilter-queue-dev', 'libnfnetlink-dev', 'libhyperscan-dev',
];

function newestMatch(dir: string): string | undefined {
  if (!fs.existsSync(dir)) return undefined;
  const hits = fs.readdirSync(dir).filter((f) => /^neuvector-dp-.*\.tar\.gz$/.test(f)).sort();
  return hits.length ? path.join(dir, hits[hits.length - 1]!) : undefined;
}

/** Where the DP source tarball is, or undefined (with the places looked at in `looked`). */
export function findTarball(env: NodeJS.ProcessEnv = process.env, looked: string[] = []): string | undefined {
  const e = env.NEUV_BPF_NVDP_TARBALL;
  if (e) {
    looked.push(e);
    return fs.existsSync(e) ? e : undefined;
  }
  looked.push(path.relative(ROOT, path.join(NVDP_VENDOR_DIR, 'neuvector-dp-*.tar.gz')));
  return newestMatch(NVDP_VENDOR_DIR);
}

/** Why the real DP cannot be used here, or undefined. Does not build. */
export function nvdpUnavailable(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const looked: string[] = [];
  if (!findTarball(env, looked)) return `NeuVector DP tarball not found (looked at ${looked.join(', ')}; set NEUV_BPF_NVDP_TARBALL)`;
  // Named from the repository: the reason lands in reports (BENCHMARKS.md), where this machine's paths do not belong.
  if (!fs.existsSync(NVDP_RUN)) return `${path.relative(ROOT, NVDP_RUN)} missing (make build)`;
  return undefined;
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/**
 * Builds the DP from the tarball into build/nvdp/dp unless the binary there
 * was built from the same tarball (sha256). Returns the binary's path.
 * Throws with the tail of the build output on failure.
 */
export function buildNvdp(o: { tarball?: string; log?: (s: string) => void } = {}): string {
  const looked: string[] = [];
  const tarball = o.tarball ?? findTarball(process.env, looked);
  if (!tarball) throw new Error(`NeuVector DP tarball not found (looked at ${looked.join(', ')})`);
  const sum = sha256(tarball);
  if (fs.existsSync(NVDP_BIN) && fs.existsSync(STAMP) && fs.readFileSync(STAMP, 'utf8').trim() === sum) return NVDP_BIN;
  fs.mkdirSync(NVDP_DIR, { recursive: true });
  const src = path.join(NVDP_DIR, `src.${process.pid}`);
  fs.rmSync(src, { recursive: true, force: true });
  fs.mkdirSync(src);
  o.log?.(`building NeuVector's DP from ${tarball} into ${NVDP_DIR}`);
  try {
    const run = (cmd: string, args: string[]) => {
      // No parallel make (its Makefiles race under -j) and no jobserver inherited from an outer make.
      const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, MAKEFLAGS: '', MFLAGS: '', MAKELEVEL: '' }, maxBuffer: 64 << 20 });
      if (r.status !== 0) {
        const tail = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim().split('\n').slice(-15).join('\n');
        throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.error?.message}); missing build packages? (${NVDP_BUILD_PACKAGES.join(' ')}):\n${tail}`);
      }
    };
    run('tar', ['xzf', tarball, '-C', src]);
    if (!fs.existsSync(path.join(src, 'dp', 'Makefile'))) throw new Error(`${tarball} has no dp/Makefile`);
    run('make', ['-C', path.join(src, 'dp')]);
    const tmp = `${NVDP_BIN}.${process.pid}`;
    fs.copyFileSync(path.join(src, 'dp', 'dp'), tmp);
    fs.chmodSync(tmp, 0o755);
    fs.renameSync(tmp, NVDP_BIN);
    fs.writeFileSync(STAMP, sum + '\n');
  } finally {
    fs.rmSync(src, { recursive: true, force: true });
  }
  return NVDP_BIN;
}

export interface NvDpOptions {
  /** The enforcer netns: a name under /run/netns or a path. */
  netns: string;
  /** The port the DP reads (default vth-neuv); undefined with `noPort` to open none. */
  iface?: string;
  /** Open no port (ctrl_add_srvc_port is up to the caller). */
  noPort?: boolean;
  /** Data threads (-n, default 1). */
  threads?: number;
  /** The binary (default: build/nvdp/dp, built if needed). */
  bin?: string;
  /** How long to wait for its control socket and ring (ms, default 10000). */
  timeoutMs?: number;
}

function nsPath(ns: string): string {
  return ns.includes('/') ? ns : `/run/netns/${ns}`;
}

/** The ifindex of iface in a netns (sysfs would show the netns of its mount, not this one). */
export function ifindexIn(netns: string, iface: string): number {
  const r = spawnSync('nsenter', [`--net=${nsPath(netns)}`, '--', 'ip', '-j', 'link', 'show', 'dev', iface], { encoding: 'utf8' });
  const [l] = r.status === 0 ? (JSON.parse(r.stdout) as Array<{ ifindex: number }>) : [];
  if (!l) throw new Error(`${iface} not found in netns ${netns}`);
  return l.ifindex;
}

/** One running DP. */
export class NvDp {
  private exited = false;
  private output = '';

  private constructor(
    readonly child: ChildProcess,
    readonly pid: number,
    readonly netns: string,
    readonly iface: string,
    /** A control client bound in the DP's /tmp. */
    readonly client: DpClient,
  ) {
    child.on('exit', () => (this.exited = true));
    const keep = (d: Buffer) => (this.output = (this.output + d.toString()).slice(-8192));
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
  }

  /** /proc/<pid>/root: the DP's filesystem root (its /tmp is private). */
  get root(): string {
    return `/proc/${this.pid}/root`;
  }

  /** The last 8 KiB it printed (its debug log goes to stdout). */
  get log(): string {
    return this.output;
  }

  alive(): boolean {
    return !this.exited && this.child.exitCode === null && this.child.signalCode === null;
  }

  /**
   * Starts the DP (`dp -s 1 -n N`: standalone, no agent) in netns with a
   * private /tmp; waits for its control socket to answer a keep-alive, then
   * (unless noPort) opens its ring on iface and waits until the ring's
   * socket is bound there.
   */
  static async start(o: NvDpOptions): Promise<NvDp> {
    const bin = o.bin ?? buildNvdp();
    if (!fs.existsSync(NVDP_RUN)) throw new Error(`${NVDP_RUN} not found (make build)`);
    const iface = o.iface ?? 'vth-neuv';
    const threads = o.threads ?? 1;
    const child = spawn(NVDP_RUN, ['--netns', nsPath(o.netns), '--', bin, '-s', '1', '-n', String(threads)], { stdio: ['ignore', 'pipe', 'pipe'] });
    if (!child.pid) throw new Error(`could not start ${NVDP_RUN}`);
    child.on('error', () => undefined);
    const end = Date.now() + (o.timeoutMs ?? 10000);
    const sock = `/proc/${child.pid}/root/tmp/dp_listen.sock`;
    let out = '';
    const grab = (d: Buffer) => (out = (out + d.toString()).slice(-4096));
    child.stdout!.on('data', grab);
    child.stderr!.on('data', grab);
    const fail = (why: string): never => {
      if (child.exitCode === null) child.kill('SIGKILL');
      throw new Error(`NeuVector DP in ${o.netns}: ${why}${out ? `; it printed: ${out.trim().split('\n').slice(-5).join(' | ')}` : ''}`);
    };
    while (!fs.existsSync(sock)) {
      if (child.exitCode !== null || child.signalCode !== null) fail(`exited (${child.exitCode ?? child.signalCode})`);
      if (Date.now() > end) fail('no control socket');
      await new Promise((r) => setTimeout(r, 20));
    }
    const client = DpClient.open({ root: `/proc/${child.pid}` + '/root' });
    const dp = new NvDp(child, child.pid, o.netns, iface, client);
    dp.output = out;
    try {
      for (;;) {
        try {
          await client.keepAlive(500);
          break;
        } catch (e) {
          if (!dp.alive()) fail('exited');
          if (Date.now() > end) fail(`no keep-alive reply: ${(e as Error).message}`);
        }
      }
      if (!o.noPort) await dp.openPort(iface, Math.max(1000, end - Date.now()));
    } catch (e) {
      dp.kill();
      throw e;
    }
    return dp;
  }

  /** ctrl_add_srvc_port, repeated until the DP's ring socket is bound on iface (its data thread may start late). */
  async openPort(iface = this.iface, timeoutMs = 5000): Promise<void> {
    const ifindex = ifindexIn(this.netns, iface);
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.client.addSrvcPort(iface);
      await this.client.sync();
      if (packetSocketsOn(this.pid, ifindex) > 0) return;
      if (Date.now() > end) throw new Error(`NeuVector DP did not open its ring on ${iface}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** VmRSS in KiB, and user+system CPU time in clock ticks (from /proc). */
  usage(): { rssKiB: number; cpuTicks: number } {
    const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { rssKiB: rss, cpuTicks: Number(f[11]) + Number(f[12]) };
  }

  /** SIGKILL, at once (the DP crashing). */
  kill(): void {
    this.client.close();
    if (this.alive()) this.child.kill('SIGKILL');
  }

  /** SIGTERM, then SIGKILL after 2 s; resolves once it is gone. */
  async stop(): Promise<void> {
    this.client.close();
    if (!this.alive()) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.alive() && this.child.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(t);
  }
}
