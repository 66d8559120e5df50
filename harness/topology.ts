/**
 * The demo's topology, shared with the kernel suites, on the builder in
 * harness/net.ts: Topology (a Net with a host netns with a bridge,
 * containers with IPv4 + IPv6, an enforcer netns), and the echo server and
 * probe client this file runs as a child (`node topology.js serve|probe`).
 * `neuv-bpf demo` (harness/demo.ts) is built on it; so are test/topology.ts
 * and the suites that send real traffic.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { netnsPath } from '../src/netns';
import { addAddrs, Net, veth } from './net';
import { sh, TIME_SCALE, waitFor } from './proc';

const SELF = __filename;

// ================================================================ topology

export interface TopologyOptions {
  /** Prefix of every netns name (unique per run, e.g. neuvdemo-<pid>). */
  prefix: string;
  /** Number of containers (default 2). */
  containers?: number;
  /** Add a static (PERMANENT) neighbour entry in each container (default true). */
  staticNeighbour?: boolean;
}

export interface ContainerNs {
  index: number;
  /** Netns name (under /var/run/netns). */
  ns: string;
  path: string;
  /** The host-side peer of its eth0, in the host netns. */
  hostPort: string;
  ip4: string;
  ip6: string;
  /** MAC of its eth0. */
  mac: string;
}

export const SUBNET4 = '10.77.0';
export const SUBNET6 = 'fd77:';
export const HOST_IP4 = `${SUBNET4}.1`;
export const HOST_IP6 = `${SUBNET6}:1`;
export const BCAST4 = `${SUBNET4}.255`;
export const MCAST_GROUP = '239.7.7.7';

/**
 * The demo/test topology, on a Net: a host netns with a bridge, N containers
 * each with a veth on the bridge, IPv4 + IPv6 and default routes, and an
 * empty enforcer netns. IPv6 DAD is off everywhere (no tentative addresses),
 * the bridge floods multicast (no snooping), containers answer ICMP echo sent
 * to broadcast/multicast.
 */
export class Topology extends Net {
  readonly host: string;
  readonly enforcer: string;
  readonly containers: ContainerNs[] = [];

  private constructor(readonly prefix: string) {
    super();
    this.host = `${prefix}-host`;
    this.enforcer = `${prefix}-enf`;
  }

  /** Builds the topology; on failure removes what it made and rethrows. */
  static create(o: TopologyOptions): Topology {
    const t = new Topology(o.prefix);
    try {
      t.build(o.containers ?? 2, o.staticNeighbour !== false);
    } catch (e) {
      t.destroy();
      throw e;
    }
    return t;
  }

  ip(ns: string, ...args: string[]): string {
    return sh('ip', ['-n', ns, ...args]);
  }

  /** Runs a command inside a netns (argument array). */
  exec(ns: string, cmd: string, args: string[], opts: { allowFail?: boolean } = {}): string {
    return sh('ip', ['netns', 'exec', ns, cmd, ...args], opts);
  }

  private build(n: number, staticNeighbour: boolean): void {
    const host = this.ns(this.host, { dad: false });
    this.ns(this.enforcer, { dad: false });
    host.ip('link', 'add', 'br0', 'type', 'bridge', 'mcast_snooping', '0');
    addAddrs(host, 'br0', `${HOST_IP4}/24`, `${HOST_IP6}/64`);
    host.ip('link', 'set', 'br0', 'up');
    for (let i = 1; i <= n; i++) {
      const c = this.ns(`${this.prefix}-c${i}`, { dad: false });
      c.exec('sysctl', ['-qw', 'net.ipv4.icmp_echo_ignore_broadcasts=0']);
      const hostPort = `c${i}h`;
      const { b: eth0 } = veth({ ns: host, name: hostPort }, { ns: c, name: 'eth0' });
      host.ip('link', 'set', hostPort, 'master', 'br0');
      const ip4 = `${SUBNET4}.${10 + i}`;
      const ip6 = `${SUBNET6}:${10 + i}`;
      addAddrs(c, 'eth0', `${ip4}/24`, `${ip6}/64`);
      c.ip('route', 'add', 'default', 'via', HOST_IP4);
      c.ip('-6', 'route', 'add', 'default', 'via', HOST_IP6, 'dev', 'eth0');
      if (staticNeighbour) c.ip('neigh', 'add', `${SUBNET4}.99`, 'lladdr', '02:00:00:00:00:99', 'dev', 'eth0', 'nud', 'permanent');
      this.containers.push({ index: i, ns: c.name, path: netnsPath(c.name), hostPort, ip4, ip6, mac: eth0.address });
    }
  }
}

// ================================================================ echo server (child: node topology.js serve ...)

/** The ports of the echo server: TCP and UDP echo, and UDP ports that only count (broadcast, multicast). */
export const PORTS = { tcp: 8080, tcpHost: 8081, udp: 8080, udpArp: 8082, blocked: 9999, bcast: 7777, mcast: 7778 } as const;

/**
 * Echo server: TCP echo on --tcp ports, UDP echo on --udp ports (IPv4 and
 * IPv6), UDP "count only" on --count ports (IPv4, broadcast included) and on
 * --mcast GROUP:PORT (joined). Prints {"ready":true}, then one JSON line per
 * counted datagram: {"got":"udp/7777","from":"10.77.0.11"}.
 */
async function serve(argv: string[]): Promise<void> {
  const list = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 && argv[i + 1] ? argv[i + 1]!.split(',').filter(Boolean) : [];
  };
  const print = (v: unknown) => process.stdout.write(JSON.stringify(v) + '\n');
  const waits: Array<Promise<void>> = [];
  for (const p of list('--tcp').map(Number)) {
    for (const host of ['0.0.0.0', '::']) {
      const srv = net.createServer((s) => {
        s.on('error', () => undefined);
        s.pipe(s);
      });
      waits.push(new Promise((r, j) => srv.once('error', j).listen({ port: p, host, ipv6Only: host === '::' }, r)));
    }
  }
  for (const p of list('--udp').map(Number)) {
    for (const type of ['udp4', 'udp6'] as const) {
      const s = dgram.createSocket({ type, ipv6Only: type === 'udp6' });
      s.on('message', (m, r) => s.send(m, r.port, r.address));
      waits.push(new Promise((r, j) => s.once('error', j).bind(p, type === 'udp4' ? '0.0.0.0' : '::', r)));
    }
  }
  for (const p of list('--count').map(Number)) {
    const s = dgram.createSocket('udp4');
    s.on('message', (_m, r) => print({ got: `udp/${p}`, from: r.address }));
    waits.push(new Promise((r, j) => s.once('error', j).bind(p, '0.0.0.0', r)));
  }
  for (const gp of list('--mcast')) {
    const [group, port] = gp.split(':');
    const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
    s.on('message', (_m, r) => print({ got: `mcast/${port}`, from: r.address }));
    waits.push(
      new Promise((r, j) =>
        s.once('error', j).bind(Number(port), '0.0.0.0', () => {
          s.addMembership(group!);
          r();
        }),
      ),
    );
  }
  await Promise.all(waits);
  print({ ready: true });
  // The parent holds our stdin: when it goes (even by SIGKILL), so do we.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}

/**
 * Starts the echo server in a container; resolves once it listens. Counted
 * datagrams land in `counts`. `what`: 'echo' (TCP/UDP echo and the broadcast
 * counter, the default) or 'mcast' (only the multicast group). A multicast
 * membership belongs to the device a socket joined on, and intercept
 * replaces the container's eth0, so the demo starts the multicast listener
 * after intercepting.
 */
export async function startServer(t: Topology, ns: string, what: 'echo' | 'mcast' = 'echo'): Promise<{ child: ChildProcess; counts: Map<string, number> }> {
  const args =
    what === 'echo'
      ? ['--tcp', `${PORTS.tcp},${PORTS.tcpHost},${PORTS.blocked}`, '--udp', `${PORTS.udp},${PORTS.udpArp},${PORTS.blocked}`, '--count', String(PORTS.bcast)]
      : ['--mcast', `${MCAST_GROUP}:${PORTS.mcast}`];
  const child = t.spawnIn(ns, process.execPath, [SELF, 'serve', ...args]);
  const counts = new Map<string, number>();
  let ready = false;
  let buf = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const v = JSON.parse(buf.slice(0, i)) as { ready?: boolean; got?: string };
      buf = buf.slice(i + 1);
      if (v.ready) ready = true;
      if (v.got) counts.set(v.got, (counts.get(v.got) ?? 0) + 1);
    }
  });
  await waitFor(`the echo server in ${ns}`, () => {
    if (child.exitCode !== null) throw new Error(`echo server in ${ns} exited: ${err.trim()}`);
    return ready;
  }, 10000 * TIME_SCALE);
  return { child, counts };
}

// ================================================================ probe client (child: node topology.js probe JSON)

export type ProbeSpec =
  | { t: 'tcp'; host: string; port: number; timeoutMs?: number }
  | { t: 'udp'; host: string; port: number; count?: number; timeoutMs?: number }
  | { t: 'send'; host: string; port: number; count?: number; broadcast?: boolean; multicast?: boolean };

export interface ProbeResult {
  ok: boolean;
  sent: number;
  received: number;
  duplicates: number;
  error?: string;
}

function probeTcp(host: string, port: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const msg = 'neuv-demo\n';
    const s = net.connect({ host, port });
    let got = '';
    const done = (ok: boolean, error?: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ ok, sent: 1, received: ok ? 1 : 0, duplicates: 0, error });
    };
    const timer = setTimeout(() => done(false, 'timeout'), timeoutMs);
    s.on('connect', () => s.write(msg));
    s.on('data', (d) => {
      got += d.toString();
      if (got === msg) done(true);
    });
    s.on('error', (e) => done(false, (e as NodeJS.ErrnoException).code ?? e.message));
  });
}

function probeUdp(host: string, port: number, count: number, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const s = dgram.createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
    const seen = new Map<number, number>();
    const finish = () => {
      clearTimeout(timer);
      s.close();
      const dups = [...seen.values()].reduce((a, n) => a + n - 1, 0);
      resolve({ ok: seen.size === count, sent: count, received: seen.size, duplicates: dups });
    };
    const timer = setTimeout(finish, timeoutMs);
    s.on('message', (m) => {
      const n = Number(/^seq (\d+)$/.exec(m.toString())?.[1] ?? -1);
      if (n < 0) return;
      seen.set(n, (seen.get(n) ?? 0) + 1);
      // All in: wait a little more only to see duplicates.
      if (seen.size === count) {
        clearTimeout(timer);
        setTimeout(finish, 50);
      }
    });
    s.on('error', () => undefined);
    s.bind(0, () => {
      for (let i = 0; i < count; i++) s.send(`seq ${i}`, port, host);
    });
  });
}

function probeSend(spec: Extract<ProbeSpec, { t: 'send' }>): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const count = spec.count ?? 3;
    s.bind(0, () => {
      if (spec.broadcast) s.setBroadcast(true);
      if (spec.multicast) {
        s.setMulticastTTL(1);
        s.setMulticastLoopback(false);
      }
      let n = 0;
      const next = () => {
        if (n === count) {
          s.close();
          resolve({ ok: true, sent: count, received: 0, duplicates: 0 });
          return;
        }
        s.send(`seq ${n++}`, spec.port, spec.host, next);
      };
      next();
    });
  });
}

async function probe(argv: string[]): Promise<void> {
  const specs = JSON.parse(argv[0] ?? '[]') as ProbeSpec[];
  const out: ProbeResult[] = [];
  for (const p of specs) {
    if (p.t === 'tcp') out.push(await probeTcp(p.host, p.port, p.timeoutMs ?? 1000));
    else if (p.t === 'udp') out.push(await probeUdp(p.host, p.port, p.count ?? 3, p.timeoutMs ?? 700));
    else out.push(await probeSend(p));
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** Runs probes from inside a netns (one child process for the whole list). */
export function runProbes(ns: string, specs: ProbeSpec[]): Promise<ProbeResult[]> {
  return new Promise((resolve, reject) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, SELF, 'probe', JSON.stringify(specs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`probe in ${ns} exited ${code}: ${err.trim()}`));
      else resolve(JSON.parse(out) as ProbeResult[]);
    });
  });
}

/** `ping` from a netns: replies received out of count. */
export function ping(t: Topology, ns: string, to: string, count = 3): number {
  const out = t.exec(ns, 'ping', ['-c', String(count), '-i', '0.05', '-W', '1', '-q', to], { allowFail: true });
  return Number(/(\d+) received/.exec(out)?.[1] ?? 0);
}

// ================================================================ child entry points

if (require.main === module) {
  const [cmd, ...rest] = process.argv.slice(2);
  const main = cmd === 'serve' ? serve : cmd === 'probe' ? probe : undefined;
  if (!main) {
    process.stderr.write('usage: node topology.js serve|probe ...\n');
    process.exitCode = 2;
  } else {
    main(rest).catch((e: Error) => {
      process.stderr.write(`${e.message}\n`);
      process.exitCode = 1;
    });
  }
}
