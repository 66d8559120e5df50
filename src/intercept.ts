/**
 * intercept / release: NeuVector's pullContainerPort and its reverse
 * (docs/datapath.md section 1), then `pair add` / `pair del` through the
 * Datapath API.
 *
 * intercept takes a container's port (eth0) out of its network namespace and
 * puts a new veth in its place that looks the same from inside: same name,
 * MAC, MTU, queues, ifindex, addresses, routes and neighbour entries. The
 * original port, renamed vex<tag>-<port>, and the new veth's peer
 * vin<tag>-<port> move to the enforcer netns (the one neuv-bpf runs in),
 * where the datapath joins them.
 *
 * Every step that changes something registers its undo; a failure runs the
 * undos in reverse, so the container keeps its network exactly as it was.
 * release records nothing on the side: the container's eth0 is a veth whose
 * peer is vin<tag>-<port> in the enforcer netns, which names vex; the
 * workload MAC, addresses, routes and neighbours are read from that eth0 at
 * release time. The original port goes back under its original ifindex.
 *
 * Commands run through iproute2/ethtool with argument arrays; inside the
 * container's netns through `nsenter --net=PATH` (`ip -n` only takes names).
 * NEUV_BPF_FAIL_AT=intercept:<step> or release:<step> makes that step fail,
 * for the rollback tests.
 */
import { Undo } from './undo';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { ConflictError, ExitCode, NeuvError, NotFoundError, UsageError } from './errors';
import { run, validateIfName, VBR } from './link';
import { withLock } from './lock';
import { log } from './log';
import { netnsPath } from './netns';
import { crashPoint } from './crash';
import { JournalRecord, findRecord, interceptLockKey, recoverLocked, removeRecord, writeRecord } from './journal';
import { formatMac } from './mac';
import { AddModeName, Datapath, DEFAULT_ADD_MODE, PairAdded, PairView } from './pairs';

// ================================================================ targets and names

/** Which container: by a process in it, or by its netns (a path, or a name under /var/run/netns). */
export type Target = { pid: number } | { netns: string };

export interface ResolvedTarget {
  /** What to call it in messages: "pid 1234" or "netns /var/run/netns/x". */
  desc: string;
  pid?: number;
  /** A path to the container's network namespace. */
  path: string;
  /** The netns inode (st_ino of path). */
  ino: number;
  /** Candidate tags, the preferred one first (intercept uses it; release tries all). */
  tags: string[];
}

/** The bit of a netns inode that differs between namespaces (proc inums start at 0xf0000000). */
export function inodeTag(ino: number): string {
  return 'n' + (ino & 0xffffff).toString(16);
}

export function resolveTarget(t: Target): ResolvedTarget {
  let path: string;
  let desc: string;
  let pid: number | undefined;
  if ('pid' in t) {
    if (!Number.isInteger(t.pid) || t.pid <= 0) throw new UsageError(`--pid ${t.pid} is not a process id`);
    pid = t.pid;
    path = `/proc/${pid}/ns/net`;
    desc = `pid ${pid}`;
    if (!fs.existsSync(`/proc/${pid}`)) throw new NotFoundError(`no process with pid ${pid}`);
  } else {
    const n = t.netns;
    if (typeof n !== 'string' || n.length === 0) throw new UsageError('--container-netns is empty');
    path = netnsPath(n);
    desc = `netns ${path}`;
  }
  let st: fs.Stats;
  try {
    st = fs.statSync(path);
  } catch {
    throw new NotFoundError(`network namespace of ${desc} not found (${path})`);
  }
  const tags = pid !== undefined ? [pid.toString(16), inodeTag(st.ino)] : [inodeTag(st.ino)];
  return { desc, pid, path, ino: st.ino, tags };
}

/** vex<tag>-<port> and vin<tag>-<port>; a UsageError when that exceeds 15 bytes. */
export function portNames(tag: string, port: string): { vex: string; vin: string } {
  const vex = `vex${tag}-${port}`;
  const vin = `vin${tag}-${port}`;
  if (Buffer.byteLength(vex) > 15) {
    throw new UsageError(`port name '${port}' is too long: ${vex} would exceed the 15 bytes of an interface name`);
  }
  return { vex: validateIfName(vex), vin: validateIfName(vin) };
}

/** A random locally administered unicast MAC, for the original port while it is renamed. */
export function tempMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfc) | 0x02;
  return formatMac(b);
}

// ================================================================ running commands in a netns

/** Runs commands in one network namespace: through nsenter, or directly for the current one. */
export class NsRunner {
  constructor(
    /** Path of the netns file, or undefined for the current netns. */
    readonly path: string | undefined,
    readonly desc: string,
  ) {}

  async cmd(cmd: string, args: string[], opts: { allowFail?: boolean } = {}): Promise<{ stdout: string; code: number }> {
    return this.path ? run('nsenter', [`--net=${this.path}`, '--', cmd, ...args], opts) : run(cmd, args, opts);
  }

  async ip(...args: string[]): Promise<string> {
    return (await this.cmd('ip', args)).stdout;
  }

  async ipJson<T>(...args: string[]): Promise<T> {
    const out = await this.ip('-j', ...args);
    return JSON.parse(out.trim() || '[]') as T;
  }

  /** `ip -d -j link show dev NAME`, or undefined when there is no such device. */
  async link(name: string): Promise<LinkDetail | undefined> {
    const r = await this.cmd('ip', ['-d', '-j', 'link', 'show', 'dev', name], { allowFail: true });
    if (r.code !== 0) return undefined;
    return (JSON.parse(r.stdout.trim() || '[]') as LinkDetail[])[0];
  }

  /**
   * Moves dev from this netns to dest, asking for ifindex `index` there
   * (IFLA_NEW_IFINDEX) when given; if the kernel or iproute2 refuses that,
   * the kernel picks the ifindex (it keeps the current one when free).
   * Returns whether the requested ifindex was obtained.
   */
  async moveTo(dev: string, dest: NsRunner, index?: number): Promise<boolean> {
    if (index) {
      try {
        await this.ip('link', 'set', 'dev', dev, 'netns', dest.ref(), 'index', String(index));
        return true;
      } catch (e) {
        log('intercept').debug({ dev, index, err: (e as Error).message }, 'could not keep the ifindex; moving without');
      }
    }
    await this.ip('link', 'set', 'dev', dev, 'netns', dest.ref());
    return false;
  }

  /** The path another process can use to name this netns (`ip link set ... netns PATH`). */
  ref(): string {
    return this.path ?? `/proc/${process.pid}/ns/net`;
  }
}

export function enforcerRunner(enforcer: string | undefined): NsRunner {
  if (!enforcer) return new NsRunner(undefined, 'the enforcer netns');
  const p = netnsPath(enforcer);
  if (!fs.existsSync(p)) throw new NotFoundError(`enforcer network namespace ${enforcer} not found (${p})`);
  return new NsRunner(p, `the enforcer netns ${enforcer}`);
}

// ================================================================ port snapshots

export interface LinkDetail {
  ifindex: number;
  ifname: string;
  mtu: number;
  address?: string;
  flags?: string[];
  txqlen?: number;
  ifalias?: string;
  operstate?: string;
  link_index?: number;
  link_netnsid?: number;
  inet6_addr_gen_mode?: string;
  num_tx_queues?: number;
  num_rx_queues?: number;
  linkinfo?: { info_kind?: string };
}

export interface AddrJson {
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
  address?: string;
  broadcast?: string;
  scope?: string;
  label?: string;
  valid_life_time?: number;
  preferred_life_time?: number;
  noprefixroute?: boolean;
  home?: boolean;
  mngtmpaddr?: boolean;
  autojoin?: boolean;
  temporary?: boolean;
  nodad?: boolean;
  tentative?: boolean;
  dadfailed?: boolean;
  deprecated?: boolean;
  dynamic?: boolean;
  secondary?: boolean;
}

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

/** Reads a port and what hangs off it (addresses, routes, neighbours) in a netns. */
export async function snapshotPort(ns: NsRunner, name: string): Promise<PortSnapshot> {
  const l = await ns.link(name);
  if (!l) throw new NotFoundError(`interface ${name} not found in ${ns.desc}`);
  const [a] = await ns.ipJson<Array<{ addr_info?: AddrJson[] }>>('addr', 'show', 'dev', name);
  const routes: PortSnapshot['routes'] = [];
  for (const family of [4, 6] as const) {
    for (const r of await ns.ipJson<RouteJson[]>(`-${family}`, 'route', 'show', 'table', 'all')) {
      if (!usesDev(r, name) || r.protocol === 'kernel') continue;
      if (r.nhid !== undefined) {
        log('intercept').warn({ route: r }, 'route through a nexthop object: not carried over');
        continue;
      }
      routes.push({ family, route: r });
    }
  }
  const neighbours = (await ns.ipJson<NeighJson[]>('neigh', 'show', 'dev', name)).filter((n) => {
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
    addrs: (a?.addr_info ?? []).filter((x) => !x.temporary),
    routes,
    neighbours,
  };
}

const FOREVER = 4294967295;

/** `ip addr add` arguments recreating one address on dev. IPv6 ones get nodad: they were already unique. */
export function addrArgs(x: AddrJson, dev: string): string[] {
  const a = [x.family === 'inet6' ? '-6' : '-4', 'addr', 'add', `${x.local}/${x.prefixlen}`];
  if (x.address && x.address !== x.local) a.push('peer', `${x.address}/${x.prefixlen}`);
  if (x.family === 'inet' && x.broadcast) a.push('broadcast', x.broadcast);
  if (x.scope) a.push('scope', x.scope);
  if (x.family === 'inet' && x.label) a.push('label', x.label);
  if (x.valid_life_time !== undefined && x.valid_life_time !== FOREVER) {
    a.push('valid_lft', String(x.valid_life_time), 'preferred_lft', String(x.preferred_life_time ?? x.valid_life_time));
  }
  for (const f of ['noprefixroute', 'home', 'mngtmpaddr', 'autojoin'] as const) if (x[f]) a.push(f);
  if (x.family === 'inet6') a.push('nodad');
  a.push('dev', dev);
  return a;
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
  for (const x of [...v4, ...v6]) await ns.ip(...addrArgs(x, dev));
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
  await ns.ip('addr', 'flush', 'dev', dev);
  await addAddresses(ns, snap, dev);
  if (snap.up) await ns.ip('link', 'set', 'dev', dev, 'up');
  await restoreRoutesAndNeighbours(ns, snap, dev);
}

// ================================================================ steps and rollback


/** The steps of intercept, in order (names for NEUV_BPF_FAIL_AT=intercept:<step>). */
export const INTERCEPT_STEPS = [
  'down', 'flush', 'rename', 'tmpmac', 'move-vex', 'create', 'move-vin', 'enforcer-up', 'pair',
  'offload', 'addresses', 'up', 'routes', 'commit',
] as const;
/** The steps of release, in order (NEUV_BPF_FAIL_AT=release:<step>). */
export const RELEASE_STEPS = [
  'unpair', 'down', 'flush', 'rename', 'park', 'move-vex', 'rename-vex', 'mac', 'addresses', 'up', 'routes', 'delete',
] as const;

function failpoint(op: 'intercept' | 'release', step: string): void {
  const want = process.env.NEUV_BPF_FAIL_AT;
  if (want && want === `${op}:${step}`) throw new NeuvError(`injected failure at ${op} step '${step}' (NEUV_BPF_FAIL_AT)`);
}

/** Runs one step with a failpoint before it and the step's name in any error. */
async function step<T>(op: 'intercept' | 'release', name: string, what: string, fn: () => Promise<T>): Promise<T> {
  crashPoint(`${op}:before-${name}`);
  failpoint(op, name);
  log(op).debug({ step: name }, what);
  try {
    return await fn();
  } catch (e) {
    if (e instanceof NeuvError && /injected failure/.test(e.message)) throw e;
    const msg = (e as Error).message;
    const code = /File exists|already exists/.test(msg) ? ExitCode.CONFLICT : e instanceof NeuvError ? e.code : ExitCode.FAILURE;
    throw new NeuvError(`${what}: ${msg}`, code, { cause: e });
  }
}

// ================================================================ intercept

export interface InterceptOptions {
  pinRoot: string;
  target: Target;
  /** The container's port, default eth0. */
  port?: string;
  /** Default: the pair API's default (bypass). */
  mode?: AddModeName;
  id?: number;
  ipv6ToDp?: boolean;
  /**
   * The enforcer netns (name or path). Default: the one this process runs in
   * (the CLI has entered --netns by then).
   */
  enforcer?: string;
}

export interface InterceptResult {
  target: string;
  pid: number | null;
  netns: string;
  port: string;
  vex: string;
  vin: string;
  mac: string;
  mtu: number;
  /** The new eth0 kept the original's ifindex. */
  ifindexKept: boolean;
  addresses: string[];
  routes: number;
  neighbours: number;
  pair: PairAdded;
  /** A half-done intercept or release of this port found in the journal and brought to rest first. */
  recovered?: string;
}

async function mustBeAbsent(ns: NsRunner, name: string): Promise<void> {
  if (await ns.link(name)) throw new ConflictError(`${name} already exists in ${ns.desc}`);
}

async function sameNetns(a: NsRunner, b: NsRunner): Promise<boolean> {
  const ia = fs.statSync(a.ref());
  const ib = fs.statSync(b.ref());
  return ia.ino === ib.ino && ia.dev === ib.dev;
}

/** Opens the datapath in the enforcer netns (the pair API runs its kernel calls there). */
function openDatapath(pinRoot: string, enforcer: string | undefined): Datapath {
  return Datapath.open(pinRoot, enforcer ? { netns: enforcer } : {});
}

/**
 * How long intercept and release wait for the intercept lock: each holds it
 * for a second or two, so a host starting many containers at once queues
 * them up (ten concurrent intercepts in the container suite).
 */
const INTERCEPT_LOCK_WAIT_MS = 120000;

/** The container and enforcer of a journal record. */
function recordIds(t: ResolvedTarget, enf: NsRunner): Pick<JournalRecord, 'target' | 'enforcer'> {
  const e = fs.statSync(enf.ref());
  return {
    target: { desc: t.desc, pid: t.pid ?? null, path: t.path, ino: t.ino, dev: fs.statSync(t.path).dev },
    enforcer: { path: enf.path ?? null, ino: e.ino, dev: e.dev },
  };
}

/**
 * Recovers what a killed intercept or release of this container port left
 * (src/journal.ts). Returns what was done, or undefined when the port is not
 * in the journal or is intercepted and well.
 */
async function recoverTarget(pinRoot: string, t: ResolvedTarget, port: string, enforcer: string | undefined): Promise<{ line: string; rec: JournalRecord } | undefined> {
  const rec = findRecord(pinRoot, t.ino, port);
  if (!rec) return undefined;
  const r = await recoverLocked(rec, { pinRoot, enforcer });
  return r.intercepted ? undefined : { line: r.line, rec };
}

export async function intercept(opts: InterceptOptions): Promise<InterceptResult> {
  return withLock(interceptLockKey(opts.pinRoot), () => interceptLocked(opts), INTERCEPT_LOCK_WAIT_MS);
}

async function interceptLocked(opts: InterceptOptions): Promise<InterceptResult> {
  const lg = log('intercept');
  const port = validateIfName(opts.port ?? 'eth0', 'port name');
  const t = resolveTarget(opts.target);
  const { vex, vin } = portNames(t.tags[0]!, port);
  const ctr = new NsRunner(t.path, `the container netns (${t.desc})`);
  const enf = enforcerRunner(opts.enforcer);

  // ---- checks: nothing changes until they all pass
  if (await sameNetns(ctr, enf)) {
    throw new UsageError(`${t.desc} is in the enforcer's own network namespace: nothing to intercept (use --netns for the enforcer)`);
  }
  const recovered = await recoverTarget(opts.pinRoot, t, port, opts.enforcer);
  const dp = openDatapath(opts.pinRoot, opts.enforcer);
  try {
    if (!(await enf.link(VBR))) {
      throw new NotFoundError(`${VBR} not found in ${enf.desc}: load the datapath there (neuv-bpf --netns ... load)`);
    }
    const snap = await snapshotPort(ctr, port);
    if (snap.kind !== 'veth') {
      throw new UsageError(`${port} of ${t.desc} is ${snap.kind ? `a ${snap.kind}` : 'not a veth'}: only veth ports can be intercepted`);
    }
    for (const tag of t.tags) {
      const n = portNames(tag, port);
      if (await enf.link(n.vex)) throw new ConflictError(`${port} of ${t.desc} is already intercepted (${n.vex} is in ${enf.desc}): neuv-bpf release first`);
    }
    await mustBeAbsent(enf, vin);
    await mustBeAbsent(ctr, vex);
    await mustBeAbsent(ctr, vin);
    const M = snap.mac;
    const mtu = String(snap.mtu);

    // ---- the sequence
    const undo = new Undo('intercept');
    // The journal record, rewritten before each step: a kill anywhere leaves what repair needs.
    const rec: JournalRecord = {
      version: 1, op: 'intercept', step: 'down', ...recordIds(t, enf), port, vex, vin, snap,
      pair: { mode: opts.mode, id: opts.id, ipv6ToDp: opts.ipv6ToDp === true }, time: '',
    };
    const J = (s: string) => writeRecord(opts.pinRoot, { ...rec, step: s });
    const S = (name: (typeof INTERCEPT_STEPS)[number], what: string, fn: () => Promise<unknown>) => {
      J(name);
      return step('intercept', name, what, fn);
    };
    let ifindexKept = false;
    let pair: PairAdded;
    try {
      await S('down', `take ${port} down`, () => ctr.ip('link', 'set', 'dev', port, 'down'));
      undo.push(`addresses, routes and neighbours of ${port}`, () => restorePort(ctr, snap, port));

      await S('flush', `remove the addresses of ${port}`, () => ctr.ip('addr', 'flush', 'dev', port));

      await S('rename', `rename ${port} to ${vex}`, () => ctr.ip('link', 'set', 'dev', port, 'name', vex));
      undo.push(`rename ${vex} back to ${port}`, () => ctr.ip('link', 'set', 'dev', vex, 'name', port));

      const tmp = tempMac();
      await S('tmpmac', `give ${vex} a temporary MAC`, () => ctr.ip('link', 'set', 'dev', vex, 'address', tmp));
      undo.push(`MAC of ${vex} back to ${M}`, () => ctr.ip('link', 'set', 'dev', vex, 'address', M));

      await S('move-vex', `move ${vex} to ${enf.desc}`, () => ctr.moveTo(vex, enf));
      // Back under its own ifindex (free again once the new port is deleted).
      undo.push(`move ${vex} back to the container`, () => enf.moveTo(vex, ctr, snap.ifindex));

      // The new port: the original's name, MAC, MTU, queues and (now free) ifindex; its peer is vin.
      const q = (n: number | undefined, k: string) => (n ? [k, String(n)] : []);
      const common = [...q(snap.numTxQueues, 'numtxqueues'), ...q(snap.numRxQueues, 'numrxqueues')];
      const create = (withIndex: boolean) =>
        ctr.ip(
          'link', 'add', port, ...(withIndex ? ['index', String(snap.ifindex)] : []), 'address', M, 'mtu', mtu,
          ...q(snap.txqlen, 'txqueuelen'), ...common, 'type', 'veth', 'peer', 'name', vin, 'mtu', mtu, ...common,
        );
      await S('create', `create ${port} (veth, peer ${vin}) in the container`, async () => {
        try {
          await create(true);
          ifindexKept = true;
        } catch (e) {
          lg.debug({ err: (e as Error).message }, `ifindex ${snap.ifindex} not reusable; new ${port} gets another`);
          await create(false);
        }
      });
      const created = (await ctr.link(port))!.ifindex;
      undo.push(`delete the new ${port}`, async () => {
        const l = await ctr.link(port);
        if (l && l.ifindex === created) await ctr.ip('link', 'del', 'dev', port);
      });

      await S('move-vin', `move ${vin} to ${enf.desc}`, () => ctr.moveTo(vin, enf));
      undo.push(`delete ${vin}`, async () => {
        if (await enf.link(vin)) await enf.ip('link', 'del', 'dev', vin);
      });

      await S('enforcer-up', `bring ${vex} and ${vin} up in ${enf.desc}`, async () => {
        // No IPv6 link-local address on either: they are plumbing, not hosts.
        for (const d of [vex, vin]) await enf.ip('link', 'set', 'dev', d, 'addrgenmode', 'none');
        for (const d of [vex, vin]) await enf.ip('link', 'set', 'dev', d, 'up');
      });

      pair = await S('pair', `pair add ${vin}/${vex}`, () =>
        dp.addPair({ in: vin, ex: vex, mac: M, mode: opts.mode ?? DEFAULT_ADD_MODE, id: opts.id, ipv6ToDp: opts.ipv6ToDp === true }),
      ) as PairAdded;
      undo.push(`pair del ${vin}/${vex}`, () => dp.delPair({ in: vin }));

      // The new port, configured like the original (its delete undoes all of this).
      await S('offload', `turn checksum offload off on the new ${port}`, () => ctr.cmd('ethtool', ['-K', port, 'rx', 'off', 'tx', 'off']));
      await S('addresses', `give the new ${port} its addresses`, async () => {
        if (snap.addrGenMode) await ctr.ip('link', 'set', 'dev', port, 'addrgenmode', snap.addrGenMode);
        if (snap.alias) await ctr.ip('link', 'set', 'dev', port, 'alias', snap.alias);
        await addAddresses(ctr, snap, port);
      });
      await S('up', `bring the new ${port} up`, async () => {
        if (snap.up) await ctr.ip('link', 'set', 'dev', port, 'up');
      });
      await S('routes', `restore the routes and neighbours of ${port}`, () => restoreRoutesAndNeighbours(ctr, snap, port));
      J('commit');
      crashPoint('intercept:before-commit');
      failpoint('intercept', 'commit');
      J('intercepted');
    } catch (e) {
      lg.warn({ target: t.desc, port, err: (e as Error).message }, 'intercept failed; rolling back');
      if ((await undo.run()) === 0) removeRecord(opts.pinRoot, rec);
      else lg.warn({ target: t.desc, port }, 'the rollback was incomplete: neuv-bpf repair finishes it from the journal');
      throw e;
    }
    const res: InterceptResult = {
      target: t.desc,
      pid: t.pid ?? null,
      netns: t.path,
      port,
      vex,
      vin,
      mac: M,
      mtu: snap.mtu,
      ifindexKept,
      addresses: snap.addrs.map((x) => `${x.local}/${x.prefixlen}`),
      routes: snap.routes.length,
      neighbours: snap.neighbours.length,
      pair,
      ...(recovered ? { recovered: recovered.line } : {}),
    };
    lg.info({ target: t.desc, port, vex, vin, id: pair.id, mode: pair.mode }, 'intercepted');
    return res;
  } finally {
    dp.close();
  }
}

// ================================================================ release

export interface ReleaseOptions {
  pinRoot: string;
  target: Target;
  port?: string;
  enforcer?: string;
}

export interface ReleaseResult {
  target: string;
  port: string;
  vex: string;
  vin: string;
  mac: string;
  /** The pair that was deleted (null: there was none, e.g. after unload). */
  pairId: number | null;
  addresses: string[];
  routes: number;
  neighbours: number;
  /** The journal had a half-done operation on this port: what finishing it did (nothing else was needed). */
  recovered?: string;
}

export async function release(opts: ReleaseOptions): Promise<ReleaseResult> {
  return withLock(interceptLockKey(opts.pinRoot), () => releaseLocked(opts), INTERCEPT_LOCK_WAIT_MS);
}

async function releaseLocked(opts: ReleaseOptions): Promise<ReleaseResult> {
  const lg = log('release');
  const port = validateIfName(opts.port ?? 'eth0', 'port name');
  const t = resolveTarget(opts.target);
  const ctr = new NsRunner(t.path, `the container netns (${t.desc})`);
  const enf = enforcerRunner(opts.enforcer);

  // ---- a half-done intercept or release of this port: bringing it to rest is the release
  const recovered = await recoverTarget(opts.pinRoot, t, port, opts.enforcer);
  if (recovered) {
    const r = recovered.rec;
    return {
      target: t.desc, port, vex: r.vex, vin: r.vin, mac: r.snap.mac, pairId: null,
      addresses: r.snap.addrs.map((x) => `${x.local}/${x.prefixlen}`), routes: r.snap.routes.length, neighbours: r.snap.neighbours.length,
      recovered: recovered.line,
    };
  }

  // ---- find what intercept left: the container's port is a veth whose peer
  // is vin<tag>-<port> in the enforcer netns (whatever the target was named by then)
  const snap = await snapshotPort(ctr, port);
  const enfLinks = await enf.ipJson<LinkDetail[]>('-d', 'link', 'show');
  const vinRe = new RegExp(`^vin(.+)-${port.replace(/[.+]/g, '\\$&')}$`);
  const vinLink = snap.kind === 'veth'
    ? enfLinks.find((l) => l.ifindex === snap.peerIfindex && l.link_index === snap.ifindex && vinRe.test(l.ifname))
    : undefined;
  if (!vinLink) {
    const stray = t.tags.map((tag) => portNames(tag, port).vex).filter((n) => enfLinks.some((l) => l.ifname === n));
    throw new NotFoundError(
      `${port} of ${t.desc} is not intercepted (its peer is no vin...-${port} in ${enf.desc})` +
        (stray.length ? `; but ${stray.join(', ')} is there: a half-done intercept? (neuv-bpf show)` : ''),
    );
  }
  const tag = vinRe.exec(vinLink.ifname)![1]!;
  const { vex, vin } = portNames(tag, port);
  if (!enfLinks.some((l) => l.ifname === vex)) {
    throw new NotFoundError(`${vex} (the original port of ${port} of ${t.desc}) not found in ${enf.desc}: cannot give it back`);
  }
  const tmpName = validateIfName(`nvr${tag}-${port}`);
  await mustBeAbsent(ctr, tmpName);
  await mustBeAbsent(enf, tmpName);
  await mustBeAbsent(ctr, vex);
  const vexMac = enfLinks.find((l) => l.ifname === vex)!.address ?? tempMac();
  const M = snap.mac;

  // The pair (the datapath may be unloaded already: then there is nothing to delete).
  let dp: Datapath | undefined;
  let pairView: PairView | undefined;
  try {
    dp = openDatapath(opts.pinRoot, opts.enforcer);
  } catch (e) {
    if (!(e instanceof NotFoundError)) throw e;
    lg.info({ pinRoot: opts.pinRoot }, 'datapath not loaded: no pair to delete');
  }
  try {
    if (dp) {
      const shown = await dp.show();
      pairView = shown.pairs.find((p) => p.vex?.name === vex || p.vin?.name === vin);
      if (pairView?.mac && pairView.mac !== M) {
        lg.warn({ pairMac: pairView.mac, portMac: M }, `the pair's workload MAC differs from ${port}'s; restoring ${port}'s`);
      }
    }

    const undo = new Undo('release');
    const before = findRecord(opts.pinRoot, t.ino, port);
    const rec: JournalRecord = { version: 1, op: 'release', step: 'unpair', ...recordIds(t, enf), port, vex, vin, tmpName, snap, time: '' };
    const S = (name: (typeof RELEASE_STEPS)[number], what: string, fn: () => Promise<unknown>) => {
      writeRecord(opts.pinRoot, { ...rec, step: name });
      return step('release', name, what, fn);
    };
    try {
      await S('unpair', `pair del ${vin}/${vex}`, async () => {
        if (dp && pairView) await dp.delPair({ ex: vex });
      });
      if (dp && pairView) {
        const pv = pairView;
        const d = dp;
        undo.push(`pair add ${vin}/${vex}`, () =>
          d.addPair({
            in: vin, ex: vex, mac: pv.mac ?? M, id: pv.id, ipv6ToDp: pv.ipv6ToDp,
            mode: pv.mode === 'fwd' || pv.mode === 'tap' || pv.mode === 'bypass' ? pv.mode : undefined,
          }),
        );
      }

      await S('down', `take the intercepting ${port} down`, () => ctr.ip('link', 'set', 'dev', port, 'down'));
      undo.push(`addresses, routes and neighbours of ${port}`, () => restorePort(ctr, snap, port));

      await S('flush', `remove the addresses of the intercepting ${port}`, () => ctr.ip('addr', 'flush', 'dev', port));

      await S('rename', `rename the intercepting ${port} to ${tmpName}`, () => ctr.ip('link', 'set', 'dev', port, 'name', tmpName));
      undo.push(`rename ${tmpName} back to ${port}`, () => ctr.ip('link', 'set', 'dev', tmpName, 'name', port));

      // Park it beside its peer in the enforcer netns: its ifindex is free for the original port.
      await S('park', `move ${tmpName} to ${enf.desc}`, () => ctr.moveTo(tmpName, enf));
      undo.push(`move ${tmpName} back to the container`, () => enf.moveTo(tmpName, ctr, snap.ifindex));

      await S('move-vex', `move ${vex} back to the container`, () => enf.moveTo(vex, ctr, snap.ifindex));
      undo.push(`move ${vex} back to ${enf.desc}`, async () => {
        await ctr.moveTo(vex, enf);
        await enf.ip('link', 'set', 'dev', vex, 'addrgenmode', 'none');
        await enf.ip('link', 'set', 'dev', vex, 'up');
      });

      await S('rename-vex', `rename ${vex} to ${port}`, () => ctr.ip('link', 'set', 'dev', vex, 'name', port));
      undo.push(`rename ${port} back to ${vex}`, () => ctr.ip('link', 'set', 'dev', port, 'name', vex));

      await S('mac', `give ${port} its MAC ${M} and MTU ${snap.mtu}`, async () => {
        await ctr.ip('link', 'set', 'dev', port, 'address', M, 'mtu', String(snap.mtu), ...(snap.txqlen ? ['txqueuelen', String(snap.txqlen)] : []));
      });
      undo.push(`MAC of ${port} back to ${vexMac}`, () => ctr.ip('link', 'set', 'dev', port, 'address', vexMac));

      await S('addresses', `give ${port} its addresses`, async () => {
        if (snap.addrGenMode) await ctr.ip('link', 'set', 'dev', port, 'addrgenmode', snap.addrGenMode);
        if (snap.alias) await ctr.ip('link', 'set', 'dev', port, 'alias', snap.alias);
        await addAddresses(ctr, snap, port);
      });
      undo.push(`remove the addresses of ${port}`, async () => {
        await ctr.ip('link', 'set', 'dev', port, 'down');
        await ctr.ip('addr', 'flush', 'dev', port);
      });
      await S('up', `bring ${port} up`, async () => {
        if (snap.up) await ctr.ip('link', 'set', 'dev', port, 'up');
      });
      await S('routes', `restore the routes and neighbours of ${port}`, () => restoreRoutesAndNeighbours(ctr, snap, port));
      // Last, and the only step without an undo: the intercepting veth goes, and vin with it.
      await S('delete', `delete ${tmpName} (and its peer ${vin})`, () => enf.ip('link', 'del', 'dev', tmpName));
      removeRecord(opts.pinRoot, rec);
    } catch (e) {
      lg.warn({ target: t.desc, port, err: (e as Error).message }, 'release failed; rolling back');
      if ((await undo.run()) === 0) {
        // Intercepted as before: the interception's own record again (if it had one).
        if (before) writeRecord(opts.pinRoot, before);
        else removeRecord(opts.pinRoot, rec);
      } else lg.warn({ target: t.desc, port }, 'the rollback was incomplete: neuv-bpf repair finishes the release from the journal');
      throw e;
    }
  } finally {
    dp?.close();
  }
  const res: ReleaseResult = {
    target: t.desc,
    port,
    vex,
    vin,
    mac: M,
    pairId: pairView?.id ?? null,
    addresses: snap.addrs.map((x) => `${x.local}/${x.prefixlen}`),
    routes: snap.routes.length,
    neighbours: snap.neighbours.length,
  };
  lg.info({ target: t.desc, port, vex }, 'released');
  return res;
}
