/**
 * The one builder of throwaway networks in private namespaces, for the demo,
 * the kernel suites and the benchmarks: Net (netns, processes inside, all
 * undone by destroy()), veth(), addAddrs() and staticNeighbours() (whatever
 * they make goes with its netns), Netns (commands inside one, ip and tc
 * batches). makeNet()/makeNetns() register a Net's destroy() with the
 * cleanup stack before it makes anything. harness/topology.ts builds the
 * demo's Topology on it, harness/pair.ts a port pair.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { netnsPath } from '../src/netns';
import { onCleanup, sh, ShOptions, uniqueName } from './proc';

// ================================================================ the builder: netns, veths, addresses, neighbours

/** A network namespace: its name and commands run inside it. */
export interface Netns {
  name: string;
  /** Runs a command inside the namespace (argument array, no shell). */
  exec(cmd: string, args: string[], opts?: ShOptions): string;
  /** `ip -n NAME ...` */
  ip(...args: string[]): string;
  /** `ip -n NAME -b -`: many commands in one process; throws on the first that fails. */
  ipBatch(lines: string[]): void;
  /** `tc -n NAME -b -`: the same for tc (each command an argument array). */
  tcBatch(lines: string[][]): void;
  /** Deletes it now (a no-op on a view of a netns someone else owns). */
  del(): void;
}

/** A Netns handle on a namespace that exists already (del does nothing). */
export function nsView(name: string): Netns {
  return handle(name, ['-n', name], (cmd, args) => ['ip', ['netns', 'exec', name, cmd, ...args]]);
}

/** A Netns handle on the namespace this process is in (an unshared sandbox has no name; del does nothing). */
export function nsHere(): Netns {
  return handle('this netns', [], (cmd, args) => [cmd, args]);
}

function handle(name: string, n: string[], inside: (cmd: string, args: string[]) => [string, string[]]): Netns {
  const batch = (tool: string, lines: string[]) => void (lines.length && sh(tool, [...n, '-b', '-'], { input: lines.join('\n') + '\n' }));
  return {
    name,
    exec: (cmd, args, opts) => sh(...inside(cmd, args), opts),
    ip: (...args) => sh('ip', [...n, ...args]),
    ipBatch: (lines) => batch('ip', lines),
    tcBatch: (lines) => batch('tc', lines.map((l) => l.join(' '))),
    del: () => undefined,
  };
}

/** A device's ifindex and MAC. */
export function linkOf(ns: Netns, dev: string): { ifindex: number; address: string } {
  const [l] = JSON.parse(ns.ip('-j', 'link', 'show', 'dev', dev)) as Array<{ ifindex: number; address: string }>;
  if (!l) throw new Error(`no ${dev} in ${ns.name}`);
  return l;
}

/** One end of a veth pair: its netns, name, and the ifindex and MTU to ask for. */
export interface VethEnd {
  ns: Netns;
  name: string;
  index?: number;
  mtu?: number;
}

/** An address on a device, for staticNeighbours. */
export interface Host {
  ns: Netns;
  dev: string;
  addr: string;
}

/**
 * A veth pair: `a` made in its netns, its peer `b` moved to its own; both
 * up unless `up: false`. `ipv6: false` turns IPv6 off on both ends first
 * (no router solicitations or DAD in the counters). Gone with its netns.
 */
export function veth(a: VethEnd, b: VethEnd, o: { ipv6?: boolean; up?: boolean } = {}): { a: { ifindex: number; address: string }; b: { ifindex: number; address: string } } {
  const opts = (e: VethEnd) => [...(e.index ? ['index', String(e.index)] : []), ...(e.mtu ? ['mtu', String(e.mtu)] : [])];
  a.ns.ip('link', 'add', a.name, ...opts(a), 'type', 'veth', 'peer', 'name', b.name, ...opts(b), ...(b.ns.name !== a.ns.name ? ['netns', b.ns.name] : []));
  for (const e of [a, b]) {
    if (o.ipv6 === false) e.ns.exec('sysctl', ['-qw', `net.ipv6.conf.${e.name}.disable_ipv6=1`], { allowFail: true });
    if (o.up !== false) e.ns.ip('link', 'set', 'dev', e.name, 'up');
  }
  return { a: linkOf(a.ns, a.name), b: linkOf(b.ns, b.name) };
}

/** Addresses (CIDR) on a device; IPv6 ones without DAD. */
export function addAddrs(ns: Netns, dev: string, ...cidrs: string[]): void {
  for (const c of cidrs) ns.ip('addr', 'add', c, 'dev', dev, ...(c.includes(':') ? ['nodad'] : []));
}

/** Each side gets a permanent neighbour entry for the other's address and MAC (no ARP timing). */
export function staticNeighbours(x: Host, y: Host): void {
  const [mx, my] = [linkOf(x.ns, x.dev).address, linkOf(y.ns, y.dev).address];
  x.ns.ip('neigh', 'replace', y.addr, 'lladdr', my, 'dev', x.dev, 'nud', 'permanent');
  y.ns.ip('neigh', 'replace', x.addr, 'lladdr', mx, 'dev', y.dev, 'nud', 'permanent');
}

/**
 * The one builder of the demo's, the tests' and the benchmarks' networks:
 * with veth(), addAddrs() and staticNeighbours() above (whatever they make
 * goes with its netns), it creates the namespaces, starts processes inside,
 * and undoes it all with destroy() (makeNet() registers that with the
 * cleanup stack).
 */
export class Net {
  private readonly namespaces: string[] = [];
  private readonly children: ChildProcess[] = [];
  private destroyed = false;

  /**
   * Creates a netns (lo up); `dad: false` turns IPv6 duplicate address
   * detection off for its devices, `ipv6: false` IPv6 itself (no DAD, router
   * solicitations or link-local addresses in any counter).
   */
  ns(name: string, o: { dad?: boolean; ipv6?: boolean } = {}): Netns {
    sh('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    const ns: Netns = {
      ...nsView(name),
      del: () => {
        sh('ip', ['netns', 'del', name], { allowFail: true });
        this.namespaces.splice(this.namespaces.indexOf(name), 1);
      },
    };
    ns.ip('link', 'set', 'lo', 'up');
    const v6 = o.ipv6 === false ? 'disable_ipv6=1' : o.dad === false ? 'accept_dad=0' : undefined;
    if (v6) ns.exec('sysctl', ['-qw', ...['default', 'all'].map((k) => `net.ipv6.conf.${k}.${v6}`)]);
    return ns;
  }

  /**
   * Spawns `cmd args` inside a netns; the process is killed by destroy().
   * `nsenter`: entered with nsenter, not `ip netns exec`, which mounts a
   * fresh /sys and so hides the bpffs (and its pins) at /sys/fs/bpf.
   */
  spawnIn(ns: string, cmd: string, args: string[], o: { nsenter?: boolean } = {}): ChildProcess {
    // stdin is a pipe from us: children that watch it (the echo server) end when we do.
    const argv = o.nsenter ? ['nsenter', `--net=${netnsPath(ns)}`, cmd, ...args] : ['ip', 'netns', 'exec', ns, cmd, ...args];
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    child.on('error', () => undefined);
    this.children.push(child);
    return child;
  }

  /** Kills what it spawned, deletes every netns it made. Idempotent, synchronous (safe in a signal handler). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    for (const ns of this.namespaces.reverse()) sh('ip', ['netns', 'del', ns], { allowFail: true });
  }
}

/** A Net destroyed by runCleanups(), registered before it makes anything. */
export function makeNet(): Net {
  const net = new Net();
  onCleanup(() => net.destroy(), 'a Net');
  return net;
}

/** A private network namespace (lo up, uniqueName()), removed by runCleanups() or its del(). */
export function makeNetns(prefix = 'nbt', o: { dad?: boolean; ipv6?: boolean } = {}): Netns {
  return makeNet().ns(uniqueName(prefix), o);
}

/**
 * trafgen options that leave the machine alone: no global socket-memory sysctl
 * raised (trafgen puts it back only on a normal exit, not after SIGKILL) and
 * no IRQ affinity touched. Long options: this build's getopt string lacks -A.
 */
export const TRAFGEN_QUIET = ['--no-sock-mem', '--notouch-irq'];
