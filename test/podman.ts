/**
 * Rootful podman for the container suite (test/containers.test.ts), kept
 * away from any other podman use on the machine: its own storage root,
 * run root and network config directory under /tmp, its own image (imported
 * offline from build/containers/rootfs.tar), its own bridge network with a
 * unique name, bridge and subnets (IPv4 and IPv6), all removed at cleanup.
 *
 * What podman needs here (Debian 12's podman 4.3, see docs/containers.md):
 * netavark (its network backend when installed and no CNI container exists;
 * forced with --network-backend), runc (crun 1.8 refuses a hybrid cgroup
 * v1/v2 hierarchy with controllers on the v2 side), cgroupfs (no systemd),
 * file events, and rlimits within our hard limits (without CAP_SYS_RESOURCE
 * podman's defaults are refused by the runtime).
 *
 * netavark turns IP forwarding on and adds its iptables chains on the first
 * network setup; restoreHost() puts the forwarding sysctls back and removes
 * the chains when they were not there before.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT, onCleanup, sh, uniqueName } from './helpers';

export const ROOTFS = path.join(ROOT, 'build', 'containers', 'rootfs.tar');
const IPT = ['/usr/sbin/iptables', '/usr/sbin/ip6tables'];
const SYSCTLS = ['net/ipv4/ip_forward', 'net/ipv4/conf/default/forwarding', 'net/ipv6/conf/all/forwarding', 'net/ipv6/conf/default/forwarding'];

/** Why the suite cannot run here, or undefined. */
export function podmanUnavailable(): string | undefined {
  for (const [bin, pkg] of [['podman', 'podman'], ['runc', 'runc'], ['/usr/lib/podman/netavark', 'netavark'], ['/usr/sbin/iptables', 'iptables']]) {
    const found = bin.startsWith('/') ? fs.existsSync(bin) : (process.env.PATH ?? '').split(':').some((d) => d && fs.existsSync(path.join(d, bin)));
    if (!found) return `${bin} not installed (Debian package ${pkg}: make deps)`;
  }
  if (!fs.existsSync(ROOTFS)) return `${ROOTFS} missing (make build)`;
  return undefined;
}

/**
 * A podman suite's before(): its Podman set up (the test image imported and
 * the network made; `setUp: false` for a suite that loads its own image), or
 * the suite skipped with the reason when podman cannot run here (a failure
 * under NEUV_BPF_REQUIRE_KERNEL=1).
 */
export function podmanForSuite(ctx: Mocha.Context, suite: string, o: { setUp?: boolean } = {}): Podman {
  const why = podmanUnavailable();
  if (why) {
    if (process.env.NEUV_BPF_REQUIRE_KERNEL === '1') throw new Error(`${suite} cannot run but NEUV_BPF_REQUIRE_KERNEL=1: ${why}`);
    // eslint-disable-next-line no-console
    console.log(`      (skipped: ${why})`);
    ctx.skip();
  }
  const pm = new Podman();
  if (o.setUp !== false) pm.setUp();
  return pm;
}

interface HostState {
  sysctls: Map<string, string>;
  /** Per iptables binary and table: whether netavark's chains were there already. */
  chains: Map<string, boolean>;
}

function iptRules(ipt: string, table: string): string[] {
  return sh(ipt, ['-t', table, '-S'], { allowFail: true }).split('\n').filter(Boolean);
}

/** Splits an `iptables -S` line into arguments (double quotes group words). */
export function iptArgs(line: string): string[] {
  const out: string[] = [];
  const re = /"([^"]*)"|(\S+)/g;
  for (let m = re.exec(line); m; m = re.exec(line)) out.push(m[1] ?? m[2]!);
  return out;
}

export class Podman {
  readonly dir: string;
  readonly image: string;
  readonly network: string;
  readonly bridge: string;
  readonly subnet4: string;
  readonly subnet6: string;
  private readonly host: HostState;
  /** The global options of every call (private storage, network config, events; the runtime): what `serve --runtime-arg` gets too. */
  readonly base: string[];
  private networkMade = false;
  private imageMade = false;

  constructor() {
    const id = uniqueName('nbp');
    this.dir = fs.mkdtempSync(`/tmp/${id}-`);
    this.image = `localhost/${id}:test`;
    this.network = id;
    this.bridge = id.slice(0, 15);
    this.base = [
      '--root', path.join(this.dir, 'root'), '--runroot', path.join(this.dir, 'run'),
      '--network-config-dir', path.join(this.dir, 'networks'), '--network-backend', 'netavark',
      '--cgroup-manager', 'cgroupfs', '--events-backend', 'file', '--runtime', 'runc',
    ];
    // A /24 and a /64 no route on this host covers yet.
    const routes = sh('ip', ['-4', 'route', 'show', 'table', 'all']);
    let x = 20 + (process.pid % 200);
    while (routes.includes(`10.89.${x}.`)) x = 20 + ((x + 1) % 200);
    this.subnet4 = `10.89.${x}`;
    this.subnet6 = `fd00:89:${x.toString(16)}:`;
    this.host = {
      sysctls: new Map(SYSCTLS.map((s) => [s, fs.readFileSync(`/proc/sys/${s}`, 'utf8').trim()])),
      chains: new Map(IPT.flatMap((ipt) => ['filter', 'nat'].map((t) => [`${ipt} ${t}`, iptRules(ipt, t).some((l) => /NETAVARK/.test(l))] as [string, boolean]))),
    };
  }

  /** Runs podman with our private dirs; throws with its stderr unless allowFail. */
  run(args: string[], opts: { allowFail?: boolean } = {}): { code: number; stdout: string; stderr: string } {
    const r = spawnSync('podman', [...this.base, ...args], { encoding: 'utf8', timeout: 120000 });
    const res = { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
    if (res.code !== 0 && !opts.allowFail) throw new Error(`podman ${args.join(' ')} failed (${res.code}): ${res.stderr.trim()}`);
    return res;
  }

  /** run() without waiting: for containers started side by side. */
  runAsync(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const c = spawn('podman', [...this.base, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve) => {
      c.on('error', (e) => resolve({ code: -1, stdout, stderr: stderr + e.message }));
      c.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    });
  }

  /** podman with our private dirs and these arguments, as a child process (podman events). */
  spawn(args: string[]): ChildProcess {
    return spawn('podman', [...this.base, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  }

  /** Imports the image and makes the network (bridge renamed to ours in its config). */
  setUp(): void {
    this.run(['import', ROOTFS, this.image]);
    this.imageMade = true;
    this.run(['network', 'create', '--ipv6', '--disable-dns', '--subnet', `${this.subnet4}.0/24`, '--subnet', `${this.subnet6}:/64`, this.network]);
    this.networkMade = true;
    const f = path.join(this.dir, 'networks', `${this.network}.json`);
    const cfg = JSON.parse(fs.readFileSync(f, 'utf8')) as { network_interface: string };
    cfg.network_interface = this.bridge;
    fs.writeFileSync(f, JSON.stringify(cfg, null, 2));
  }

  /** Loads an image archive (podman load, e.g. make image's OCI archive) into our storage; returns its name. */
  load(archive: string): string {
    const out = this.run(['load', '-q', '-i', archive]).stdout;
    this.imageMade = true;
    const name = /Loaded image(?:\(s\))?: *(\S+)/.exec(out)?.[1];
    if (!name) throw new Error(`podman load ${archive}: no image name in ${JSON.stringify(out)}`);
    return name;
  }

  /** Starts a container running the echo server (TCP and UDP 8080); `opts`: more options of podman run (--annotation ...). */
  start(name: string, opts: string[] = []): void {
    this.run([
      'run', '-d', '--name', name, '--network', this.network, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      ...opts, this.image, '/bin/echo-server', '8080',
    ]);
  }

  /**
   * podman's API service on a socket of ours (`podman system service`, its
   * Docker-compatible API and libpod's), with our private dirs; stopped at
   * cleanup. Resolves with the socket once it answers GET /_ping.
   */
  async apiService(): Promise<string> {
    const socket = path.join(this.dir, 'api.sock');
    const c = this.spawn(['system', 'service', '--time=0', `unix://${socket}`]);
    let err = '';
    c.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    c.stdout!.resume();
    onCleanup(() => {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    });
    const ping = () => new Promise<boolean>((resolve) => {
      const req = http.get({ socketPath: socket, path: '/_ping', agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
    });
    const end = Date.now() + 30000;
    while (!(await ping())) {
      if (c.exitCode !== null || Date.now() > end) throw new Error(`podman system service did not answer on ${socket}: ${err.trim()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    return socket;
  }

  /**
   * podman run --rm of udp-burst (tools/udp-burst.c): COUNT datagrams to
   * DST:PORT, one every INTERVAL_US, from its first instruction; `hooks`:
   * its --hooks-dir (an empty one: no hook), `mode`: its io.neuv-bpf.mode.
   */
  burst(name: string, o: { hooks: string; mode?: string; dst: string; port: number; count: number; intervalUs: number }): Promise<{ code: number; stdout: string; stderr: string }> {
    onCleanup(() => this.run(['rm', '-f', '-t', '0', name], { allowFail: true }));
    return this.runAsync([
      '--hooks-dir', o.hooks, 'run', '--rm', '--name', name, '--network', this.network, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=4096:4096',
      ...(o.mode ? ['--annotation', `io.neuv-bpf.mode=${o.mode}`] : []), this.image, '/bin/udp-burst', o.dst, String(o.port), String(o.count), String(o.intervalUs),
    ]);
  }

  inspect(name: string): { pid: number; sandbox: string; ip4: string; ip6: string } {
    const [c] = JSON.parse(this.run(['inspect', name]).stdout) as Array<{
      State: { Pid: number };
      NetworkSettings: { SandboxKey: string; Networks: Record<string, { IPAddress: string; GlobalIPv6Address: string }> };
    }>;
    const n = c!.NetworkSettings.Networks[this.network]!;
    return { pid: c!.State.Pid, sandbox: c!.NetworkSettings.SandboxKey, ip4: n.IPAddress, ip6: n.GlobalIPv6Address };
  }

  /** Removes every container, the network and the image; puts the host's forwarding and iptables back. */
  tearDown(): void {
    this.run(['rm', '-af', '-t', '0'], { allowFail: true });
    if (this.networkMade) this.run(['network', 'rm', '-f', this.network], { allowFail: true });
    if (this.imageMade) this.run(['rmi', '-af'], { allowFail: true });
    sh('ip', ['link', 'del', this.bridge], { allowFail: true });
    this.restoreHost();
    // Storage may still be mounted (overlay's home): unmount what is under our dir, then remove it.
    const mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(this.dir + '/'));
    for (const m of mounts.sort().reverse()) sh('umount', ['-l', m], { allowFail: true });
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private restoreHost(): void {
    for (const [s, v] of this.host.sysctls) {
      try {
        if (fs.readFileSync(`/proc/sys/${s}`, 'utf8').trim() !== v) fs.writeFileSync(`/proc/sys/${s}`, v);
      } catch {
        /* best effort */
      }
    }
    for (const ipt of IPT) {
      for (const table of ['filter', 'nat']) {
        if (this.host.chains.get(`${ipt} ${table}`)) continue; // there before us: someone else's
        const rules = iptRules(ipt, table);
        // Jumps from the built-in chains first, then netavark's chains themselves.
        for (const l of rules) {
          const a = iptArgs(l);
          if (a[0] === '-A' && !/^NETAVARK/.test(a[1]!) && /NETAVARK/.test(l)) sh(ipt, ['-t', table, '-D', ...a.slice(1)], { allowFail: true });
        }
        const chains = rules.map((l) => /^-N (NETAVARK\S*)$/.exec(l)?.[1]).filter((c): c is string => !!c);
        for (const c of chains) sh(ipt, ['-t', table, '-F', c], { allowFail: true });
        for (const c of chains) sh(ipt, ['-t', table, '-X', c], { allowFail: true });
      }
    }
  }
}

/** A datagram of udp-burst (tools/udp-burst.c) as the peer got it. */
export interface Got {
  src: string;
  seq: number;
  /** When the sender started and sent this one (CLOCK_REALTIME, ns). */
  t0: bigint;
  t: bigint;
}

/** The peer: a UDP socket on the podman network's gateway (this netns), recording every udp-burst datagram. */
export async function burstPeer(addr: string, port: number): Promise<{ got: Got[]; from: (ip: string) => Got[] }> {
  const s = dgram.createSocket('udp4');
  const got: Got[] = [];
  s.on('message', (m, r) => {
    if (m.length === 24 && m.readUInt32BE(0) === 0x4e425542) got.push({ src: r.address, seq: m.readUInt32BE(4), t0: m.readBigUInt64BE(8), t: m.readBigUInt64BE(16) });
  });
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, addr, () => resolve());
  });
  onCleanup(() => s.close());
  return { got, from: (ip) => got.filter((g) => g.src === ip) };
}

/** A hooks.d directory with the hook as make install-hook writes it, for this node; `env` added to the hook's. */
export function hooksDir(n: { enf: string; pins: string }, args: string[], env: string[] = [], o: { times?: string } = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-hooks-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  const r = spawnSync(process.execPath, [path.join(ROOT, 'scripts', 'install-hook.js'), '--hooks-dir', dir, '--netns', n.enf, '--bpffs', n.pins, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const f = r.stdout.trim();
  const h = JSON.parse(fs.readFileSync(f, 'utf8')) as { hook: { args: string[]; env: string[] }; stages: string[] };
  assert.deepEqual(h.stages, ['createRuntime', 'poststop']);
  h.hook.env.push(...env);
  if (!o.times) {
    fs.writeFileSync(f, JSON.stringify(h));
    return dir;
  }
  // Each hook timed (test/tools/hook-timer.ts): one file per stage, so each line says which.
  fs.rmSync(f);
  for (const stage of h.stages) {
    const args = [h.hook.args[0]!, '-r', path.join(ROOT, 'dist', 'test', 'tools', 'hook-timer.js'), ...h.hook.args.slice(1)];
    const env = [...h.hook.env, `NEUV_BPF_TEST_HOOK_TIMES=${o.times}`, `NEUV_BPF_TEST_HOOK_STAGE=${stage}`];
    fs.writeFileSync(path.join(dir, `${stage}-${path.basename(f)}`), JSON.stringify({ ...h, hook: { ...h.hook, args, env }, stages: [stage] }));
  }
  return dir;
}

/** The hook times hooksDir's `times` file holds: per stage, max and p99 in ms, and how many. */
export function hookTimes(file: string): Record<string, { n: number; max: number; p99: number; p50: number; failed: number }> {
  const lines = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim().split('\n').filter(Boolean) : [];
  const by = new Map<string, Array<{ ms: number; code: number }>>();
  for (const l of lines) {
    const x = JSON.parse(l) as { stage: string; ms: number; code: number };
    by.set(x.stage, [...(by.get(x.stage) ?? []), x]);
  }
  const out: ReturnType<typeof hookTimes> = {};
  for (const [stage, xs] of by) {
    const ms = xs.map((x) => x.ms).sort((a, b) => a - b);
    const at = (q: number) => ms[Math.min(ms.length - 1, Math.ceil(q * ms.length) - 1)]!;
    out[stage] = { n: ms.length, max: ms.at(-1)!, p99: at(0.99), p50: at(0.5), failed: xs.filter((x) => x.code !== 0).length };
  }
  return out;
}

/** An empty hooks.d directory: containers started without the hook. */
export function noHooks(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nbt-hooks-'));
  onCleanup(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}
