/**
 * The kernel suites' topologies, all on harness/net.ts's Net (the one
 * builder of netns, veths, addresses and neighbours), each registered with
 * onCleanup() before it makes anything:
 * - makeTopology: the demo's Topology (host netns with a bridge, containers
 *   with IPv4 + IPv6, default routes and a static neighbour, an enforcer
 *   netns) under test names, with a pin root, and the CLI bound to them;
 * - addPair / makePairTopology (harness/pair.ts): one port pair as an
 *   enforcer sees it (host | vex, vin | workload), IPv4 only, static
 *   neighbours.
 *
 * Plus what the interception tests look at: a container state snapshot
 * without volatile fields, tcpdump captures.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { CliResult, TIME_SCALE, cli, makePinRoot, onCleanup, uniqueName } from './helpers';
import { nsView } from '../harness/net';
import { collectOutput, waitFor } from '../harness/proc';
import { ContainerNs, Topology } from '../harness/topology';
import { StubDp } from '../harness/stub-dp';

export { addPair, makePairTopology } from '../harness/pair';
export type { PairTopology } from '../harness/pair';
export { ContainerNs, nsView, StubDp, Topology, waitFor };

export interface TestTopology {
  t: Topology;
  pins: string;
  c: ContainerNs[];
  /** The CLI with --netns <enforcer> --bpffs <pins>. */
  run(args: string[], env?: NodeJS.ProcessEnv): CliResult;
}

/** Builds the topology (and a pin root); `load` loads the datapath in the enforcer netns. */
export function makeTopology(o: { containers?: number; load?: boolean } = {}): TestTopology {
  const t = Topology.create({ prefix: uniqueName('nbt'), containers: o.containers ?? 2 });
  onCleanup(() => t.destroy());
  const pins = makePinRoot();
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => cli(['--netns', t.enforcer, '--bpffs', pins, ...args], { env });
  if (o.load !== false) {
    const r = run(['load']);
    assert.equal(r.code, 0, r.stderr);
  }
  return { t, pins, c: t.containers, run };
}

/** A pair's mode as `show --json` says it. */
export function modeOf(tt: TestTopology, id: number): string | undefined {
  const r = tt.run(['show', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { pairs: Array<{ id: number; mode: string }> }).pairs.find((p) => p.id === id)?.mode;
}

/** A stub DP in the enforcer netns whose pid is written to `pidfile` (a supervisor's --dp PIDFILE). */
export async function stubInto(tt: TestTopology, pidfile: string): Promise<StubDp> {
  const s = await StubDp.start(tt.t.enforcer, { dropPorts: [9999] });
  fs.writeFileSync(pidfile, `${s.child.pid}\n`);
  return s;
}

/** SIGKILLs a stub and waits until it is gone. */
export async function killStub(s: StubDp): Promise<void> {
  const gone = new Promise((r) => (s.child.exitCode !== null || s.child.signalCode !== null ? r(null) : s.child.once('exit', r)));
  s.child.kill('SIGKILL');
  await gone;
}

/** A long-running process in a container (its pid names the container, like a workload's). */
export function workloadPid(t: Topology, c: ContainerNs): number {
  const child = t.spawnIn(c.ns, 'sleep', ['600']);
  onCleanup(() => child.kill('SIGKILL'));
  return child.pid!;
}

function strip<T extends Record<string, unknown>>(o: T, keys: string[]): Record<string, unknown> {
  const r: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (!keys.includes(k)) r[k] = v;
  return r;
}

/**
 * What a container's network looks like from inside, for "identical after"
 * checks: eth0 (name, ifindex, MAC, MTU, queue length, admin state, IPv6
 * address generation mode), its addresses (without lifetimes and the
 * nodad/tentative flags: intercept re-adds IPv6 addresses with nodad), every
 * IPv4 and IPv6 route of every table, and the static neighbour entries
 * (learnt ones come and go by themselves).
 */
export function containerState(t: Topology, c: ContainerNs): Record<string, unknown> {
  const j = (...args: string[]) => JSON.parse(t.ip(c.ns, '-j', ...args) || '[]') as Array<Record<string, unknown>>;
  const [l] = j('-d', 'link', 'show', 'dev', 'eth0');
  assert.ok(l, `no eth0 in ${c.ns}`);
  const link = {
    ifname: l.ifname, ifindex: l.ifindex, address: l.address, mtu: l.mtu, txqlen: l.txqlen,
    up: (l.flags as string[]).includes('UP'), addrgen: l.inet6_addr_gen_mode, kind: (l.linkinfo as { info_kind?: string })?.info_kind,
    alias: l.ifalias,
  };
  const [a] = j('addr', 'show', 'dev', 'eth0');
  const addrs = ((a?.addr_info ?? []) as Array<Record<string, unknown>>)
    .map((x) => strip(x, ['valid_life_time', 'preferred_life_time', 'nodad', 'tentative']))
    .sort((x, y) => String(x.local).localeCompare(String(y.local)));
  const sortJson = (xs: unknown[]) => xs.map((x) => JSON.stringify(x)).sort();
  const routes4 = sortJson(j('-4', 'route', 'show', 'table', 'all'));
  const routes6 = sortJson(j('-6', 'route', 'show', 'table', 'all').map((r) => strip(r, ['expires'])));
  const neigh = sortJson(j('neigh', 'show').filter((n) => (n.state as string[] | undefined)?.some((s) => s === 'PERMANENT' || s === 'NOARP')));
  return { link, addrs, routes4, routes6, neigh };
}

/** Interface names in a netns. */
export function linkNames(t: Topology, ns: string): string[] {
  return (JSON.parse(t.ip(ns, '-j', 'link', 'show')) as Array<{ ifname: string }>).map((l) => l.ifname).sort();
}

export interface Frame {
  sa: string;
  da: string;
  ethertype: string;
  line: string;
}

export interface Capture {
  /** Stops tcpdump (if still running; once it printed `expect` frames, given) and returns the frames it printed. */
  stop(expect?: number): Promise<Frame[]>;
}

/**
 * tcpdump -e on dev inside ns with a filter; resolves once it listens.
 * Frames come back with their Ethernet addresses.
 */
export async function capture(t: Topology, ns: string, dev: string, filter: string[]): Promise<Capture> {
  const child: ChildProcess = spawn('ip', ['netns', 'exec', ns, 'tcpdump', '-e', '-nn', '-l', '-i', dev, ...filter], { stdio: ['ignore', 'pipe', 'pipe'] });
  onCleanup(() => child.kill('SIGKILL'));
  const dump = collectOutput(child);
  await waitFor(`tcpdump on ${dev} in ${ns}`, () => {
    if (child.exitCode !== null) throw new Error(`tcpdump exited: ${dump.stderr}`);
    return /listening on/.test(dump.stderr);
  }, 5000);
  const parse = (): Frame[] => {
    const frames: Frame[] = [];
    for (const line of dump.stdout.split('\n')) {
      const m = /^\S+ ([0-9a-f:]{17}) > ([0-9a-f:]{17}), ethertype (\S+)/.exec(line);
      if (m) frames.push({ sa: m[1]!, da: m[2]!, ethertype: m[3]!, line });
    }
    return frames;
  };
  return {
    stop: async (expect?: number) => {
      // Frames in flight reach the capture and tcpdump prints them before it is stopped: with `expect`,
      // until it printed that many (tcpdump under emulation lags by seconds: CI's 6.1 VM saw 152 of
      // 200 after a fixed 100 ms), else for 100 ms.
      if (expect === undefined) await new Promise((r) => setTimeout(r, 100));
      else await waitFor(`tcpdump on ${dev} to print ${expect} frames`, () => parse().length >= expect || child.exitCode !== null, 10000 * TIME_SCALE).catch(() => undefined);
      if (child.exitCode === null) child.kill('SIGINT');
      await dump.done;
      return parse();
    },
  };
}
