/**
 * A container port and what hangs off it (addresses, routes, neighbours):
 * read as a PortSnapshot, and recreated on another device from one
 * (iproute2 argument arrays).
 */
import { NeuvError, NotFoundError } from '../errors';
import { validateIfName } from '../link';
import { log } from '../log';
import { NsRunner } from './runner';
import type { AddrJson } from './netlink';

export type { AddrJson };

interface NextHopJson {
  gateway?: string;
  via?: { family: string; host: string };
  dev?: string;
  weight?: number;
  flags?: string[];
}

export interface RouteJson extends NextHopJson {
  type?: string;
  dst: string;
  tos?: string;
  table?: string;
  protocol?: string;
  scope?: string;
  metric?: number;
  prefsrc?: string;
  pref?: string;
  metrics?: Array<Record<string, number | string>>;
  nexthops?: NextHopJson[];
  nhid?: number;
  expires?: number;
}

export interface NeighJson {
  dst: string;
  dev?: string;
  lladdr?: string;
  state?: string[];
  router?: boolean | null;
  proxy?: boolean | null;
}

/** Everything about a container port that intercept and release carry over to its replacement. */
export interface PortSnapshot {
  name: string;
  ifindex: number;
  kind: string | undefined;
  mac: string;
  mtu: number;
  txqlen: number | undefined;
  alias: string | undefined;
  up: boolean;
  addrGenMode: string | undefined;
  numTxQueues: number | undefined;
  numRxQueues: number | undefined;
  /** The veth peer's ifindex (in the peer's netns). */
  peerIfindex: number | undefined;
  addrs: AddrJson[];
  /** Routes through the port that the kernel does not recreate (not proto kernel), IPv4 then IPv6. */
  routes: Array<{ family: 4 | 6; route: RouteJson }>;
  /** Neighbour entries of the port with a link-layer address (not FAILED/INCOMPLETE). */
  neighbours: NeighJson[];
}

function usesDev(r: RouteJson, dev: string): boolean {
  return r.dev === dev || (r.nexthops ?? []).some((n) => n.dev === dev);
}

/**
 * Every route of both families and the neighbours of dev, as `ip -j -4|-6
 * route show table all` and `ip -j neigh show dev DEV` list them: one
 * `ip -j -batch -` child running the three (a batch line takes no -4/-6:
 * `root 0.0.0.0/0` and `root ::/0` select the family), or the three
 * children if that one fails. A child costs 50-120 ms on a loaded node.
 */
async function routesAndNeighbours(ns: NsRunner, dev: string): Promise<[RouteJson[], RouteJson[], NeighJson[]]> {
  validateIfName(dev); // a line of the batch: no space or newline in it
  const r = await ns.cmd('ip', ['-j', '-batch', '-'], {
    allowFail: true, input: `route show table all root 0.0.0.0/0\nroute show table all root ::/0\nneigh show dev ${dev}\n`,
  });
  const lines = r.stdout.split('\n').filter((l) => l.trim());
  if (r.code === 0 && lines.length === 3) {
    try {
      return lines.map((l) => JSON.parse(l)) as [RouteJson[], RouteJson[], NeighJson[]];
    } catch {
      /* not as expected: one command at a time */
    }
  }
  log('intercept').debug({ dev, code: r.code }, 'ip -batch gave no three lists; one command at a time');
  return Promise.all([
    ns.ipJson<RouteJson[]>('-4', 'route', 'show', 'table', 'all'),
    ns.ipJson<RouteJson[]>('-6', 'route', 'show', 'table', 'all'),
    ns.ipJson<NeighJson[]>('neigh', 'show', 'dev', dev),
  ]);
}

/** Reads a port and what hangs off it (addresses, routes, neighbours) in a netns. */
export async function snapshotPort(ns: NsRunner, name: string): Promise<PortSnapshot> {
  const l = await ns.link(name);
  if (!l) throw new NotFoundError(`interface ${name} not found in ${ns.desc}`);
  const addrs = await ns.addrs(name);
  const [r4, r6, neigh] = await routesAndNeighbours(ns, name);
  const routes: PortSnapshot['routes'] = [];
  for (const [family, rs] of [[4, r4], [6, r6]] as const) {
    for (const r of rs) {
      if (!usesDev(r, name) || r.protocol === 'kernel') continue;
      if (r.nhid !== undefined) {
        log('intercept').warn({ route: r }, 'route through a nexthop object: not carried over');
        continue;
      }
      routes.push({ family, route: r });
    }
  }
  const neighbours = neigh.filter((n) => {
    const s = n.state ?? [];
    return n.lladdr && !s.includes('FAILED') && !s.includes('INCOMPLETE');
  });
  return {
    name,
    ifindex: l.ifindex,
    kind: l.linkinfo?.info_kind,
    mac: (l.address ?? '').toLowerCase(),
    mtu: l.mtu,
    txqlen: l.txqlen,
    alias: l.ifalias,
    up: (l.flags ?? []).includes('UP'),
    addrGenMode: l.inet6_addr_gen_mode,
    numTxQueues: l.num_tx_queues,
    numRxQueues: l.num_rx_queues,
    peerIfindex: l.link_index,
    // Privacy addresses belong to the kernel; it makes new ones.
    addrs: addrs.filter((x) => !x.temporary),
    routes,
    neighbours,
  };
}

function nexthopArgs(n: NextHopJson, dev: string, self: string): string[] {
  const a: string[] = [];
  if (n.gateway) a.push('via', n.gateway);
  else if (n.via) a.push('via', n.via.family, n.via.host);
  if (n.dev) a.push('dev', n.dev === self ? dev : n.dev);
  if ((n.flags ?? []).includes('onlink')) a.push('onlink');
  return a;
}

/** `ip route replace` arguments recreating one route (its device renamed from self to dev). */
export function routeArgs(family: 4 | 6, r: RouteJson, dev: string, self: string): string[] {
  const a = [`-${family}`, 'route', 'replace'];
  if (r.type && r.type !== 'unicast') a.push(r.type);
  a.push(r.dst);
  if (r.tos) a.push('tos', r.tos);
  if (r.table) a.push('table', r.table);
  if (r.protocol) a.push('proto', r.protocol);
  if (r.scope) a.push('scope', r.scope);
  if (r.metric !== undefined) a.push('metric', String(r.metric));
  if (r.prefsrc) a.push('src', r.prefsrc);
  if (family === 6 && r.pref) a.push('pref', r.pref);
  for (const m of r.metrics ?? []) {
    for (const [k, v] of Object.entries(m)) a.push(k, String(v));
  }
  if (r.nexthops) {
    for (const n of r.nexthops) {
      a.push('nexthop', ...nexthopArgs(n, dev, self));
      if (n.weight !== undefined) a.push('weight', String(n.weight));
    }
  } else {
    a.push(...nexthopArgs(r, dev, self));
  }
  return a;
}

/** `ip neigh replace` arguments recreating one entry: static ones as they were, learnt ones as STALE. */
export function neighArgs(n: NeighJson, dev: string): string[] {
  const s = n.state ?? [];
  const nud = s.includes('PERMANENT') ? 'permanent' : s.includes('NOARP') ? 'noarp' : 'stale';
  const a = ['neigh', 'replace', n.dst, 'lladdr', n.lladdr!, 'nud', nud];
  if (n.router) a.push('router');
  a.push('dev', dev);
  return a;
}

/** Adds the snapshot's addresses to dev (IPv6 in the order that lists them as they were listed). */
export async function addAddresses(ns: NsRunner, snap: PortSnapshot, dev: string): Promise<void> {
  const v4 = snap.addrs.filter((x) => x.family === 'inet');
  const v6 = snap.addrs.filter((x) => x.family === 'inet6').reverse(); // `ip addr` lists the newest first
  await ns.addAddrs(dev, [...v4, ...v6]);
}

/**
 * Restores routes, then neighbours. Routes that depend on one another (a
 * gateway reachable through another restored route) are retried until no
 * more succeed; any left over is an error.
 */
export async function restoreRoutesAndNeighbours(ns: NsRunner, snap: PortSnapshot, dev: string): Promise<void> {
  const problems: string[] = [];
  let pending = snap.routes.slice();
  let lastErr: Error | undefined;
  while (pending.length) {
    const failed: typeof pending = [];
    for (const p of pending) {
      try {
        await ns.ip(...routeArgs(p.family, p.route, dev, snap.name));
      } catch (e) {
        failed.push(p);
        lastErr = e as Error;
      }
    }
    if (failed.length === pending.length) break;
    pending = failed;
  }
  if (pending.length) problems.push(`${pending.length} route(s) (${lastErr!.message})`);
  // Neighbours even when a route failed: a rollback restores all it can.
  for (const n of snap.neighbours) {
    try {
      await ns.ip(...neighArgs(n, dev));
    } catch (e) {
      problems.push(`neighbour ${n.dst} (${(e as Error).message})`);
    }
  }
  if (problems.length) throw new NeuvError(`cannot restore on ${dev} in ${ns.desc}: ${problems.join('; ')}`);
}

/**
 * Gives dev the snapshot's configuration from scratch: addresses (anything
 * left on it removed first), admin state, routes, neighbours. The undo of
 * taking a port down: that alone drops its IPv6 addresses, routes and
 * neighbour entries.
 */
export async function restorePort(ns: NsRunner, snap: PortSnapshot, dev: string): Promise<void> {
  await ns.flush(dev);
  await addAddresses(ns, snap, dev);
  if (snap.up) await ns.set(dev, { up: true });
  await restoreRoutesAndNeighbours(ns, snap, dev);
}
