/**
 * Links and namespaces through iproute2 and ethtool, always with an argument
 * array (never a shell string), plus name validation and cheap ifindex
 * lookups through libc in the current (possibly entered) netns.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { ExitCode, NeuvError, NotFoundError, UsageError } from './errors';
import { ifIndexToName, ifNameToIndex, linkAliases } from './bpf';
import { log } from './log';

export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs a program with an argument array; throws a NeuvError with its first
 * stderr line. The child gets its own process group: a Ctrl-C at the
 * terminal reaches neuv-bpf, which holds it until a safe point
 * (src/signals.ts), but not the ip or tc in the middle of a step.
 */
export function run(cmd: string, args: string[], opts: { input?: string; allowFail?: boolean } = {}): Promise<RunResult & { code: number }> {
  const lg = log('exec');
  lg.debug({ cmd, args }, 'exec');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { detached: true, stdio: [opts.input !== undefined ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      reject(e.code === 'ENOENT' ? new NeuvError(`${cmd} not found: install it (make deps)`, ExitCode.NOT_FOUND) : new NeuvError(`${cmd}: ${e.message}`, ExitCode.FAILURE));
    });
    child.on('close', (status, signal) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      const code = status ?? 1;
      if (code !== 0 && !opts.allowFail) {
        const line = (stderr.trim() || `Command failed: ${cmd} ${args.join(' ')}${signal ? ` (${signal})` : ''}`).split('\n')[0];
        reject(new NeuvError(`${cmd} ${args.join(' ')}: ${line}`, ExitCode.FAILURE));
        return;
      }
      resolve({ stdout, stderr, code });
    });
    if (opts.input !== undefined) {
      child.stdin!.on('error', () => undefined); // a child that exits without reading: its status says what happened
      child.stdin!.end(opts.input);
    }
  });
}

/** Linux's dev_valid_name(): 1..15 bytes, not . or .., no '/', ':' or whitespace. */
export function validateIfName(name: string, what = 'interface name'): string {
  if (typeof name !== 'string' || name.length === 0) throw new UsageError(`${what} is empty`);
  if (Buffer.byteLength(name) > 15) throw new UsageError(`${what} '${name}' is longer than 15 bytes`);
  if (name === '.' || name === '..') throw new UsageError(`${what} '${name}' is not allowed`);
  // eslint-disable-next-line no-control-regex
  if (/[\s/:\x00-\x1f\x7f]/.test(name)) throw new UsageError(`${what} ${JSON.stringify(name)} contains a space, '/', ':' or a control character`);
  if (!/^[A-Za-z0-9_.@+=-]+$/.test(name)) throw new UsageError(`${what} '${name}' contains characters outside [A-Za-z0-9_.@+=-]`);
  return name;
}

/** The ifindex of a link in the current netns; throws a clear error if absent. */
export function ifindexOf(name: string, where = 'this network namespace'): number {
  validateIfName(name);
  const idx = ifNameToIndex(name);
  if (!idx) throw new NotFoundError(`interface ${name} not found in ${where}`);
  return idx;
}

export function ifindexIfExists(name: string): number {
  return ifNameToIndex(name);
}

export function ifname(index: number): string | undefined {
  return ifIndexToName(index);
}

export interface LinkJson {
  ifindex: number;
  ifname: string;
  mtu: number;
  operstate?: string;
  flags?: string[];
  address?: string;
  /** A veth's peer in this netns, by name (`ip -d -j`); one in another netns is link_index/link_netnsid. */
  link?: string;
  link_index?: number;
  link_netnsid?: number;
  linkinfo?: { info_kind?: string };
}

/** `ip -d -j link show`, for one device or all. */
export async function linkShow(name?: string): Promise<LinkJson[]> {
  const args = ['-d', '-j', 'link', 'show'];
  if (name) args.push('dev', validateIfName(name));
  const r = await run('ip', args);
  return JSON.parse(r.stdout || '[]') as LinkJson[];
}

/**
 * Every link of this netns with the fields of `ip -d -j link show` that
 * pairs read (index, name, MTU, kind, a veth's peer), from one in-process
 * RTM_GETLINK dump (src/bpf/rtnl.ts): no process, and the counters left
 * out. A peer in this netns is named by `link`, one elsewhere by
 * link_index and link_netnsid, as ip names them.
 */
export function linkDump(): LinkJson[] {
  const raw = linkAliases();
  const byIndex = new Map(raw.map((l) => [l.ifindex, l.name]));
  return raw.map((l) => {
    const j: LinkJson = { ifindex: l.ifindex, ifname: l.name, mtu: l.mtu };
    if (l.kind) j.linkinfo = { info_kind: l.kind };
    if (l.link) {
      j.link_index = l.link;
      if (l.linkNetnsid !== undefined) j.link_netnsid = l.linkNetnsid;
      else if (byIndex.has(l.link)) j.link = byIndex.get(l.link);
    }
    return j;
  });
}

export async function linkDelete(name: string): Promise<void> {
  await run('ip', ['link', 'del', 'dev', validateIfName(name)]);
}

/** The qdiscs on a device (kind + handle), for telling clsact from a legacy ingress qdisc. */
export async function qdiscs(name: string): Promise<Array<{ kind: string; handle: string }>> {
  const r = await run('tc', ['-j', 'qdisc', 'show', 'dev', validateIfName(name)]);
  return JSON.parse(r.stdout || '[]') as Array<{ kind: string; handle: string }>;
}

export const VBR = 'vbr-neuv';
export const VTH = 'vth-neuv';

/**
 * Whether a packet socket (AF_PACKET: how a DP reads and writes frames) is
 * bound to this ifindex in the current netns: the Iface column of
 * /proc/thread-self/net/packet, the kernel's list. A socket bound to every
 * interface (0: tcpdump -i any) is no DP.
 */
export function packetSocketOn(ifindex: number): boolean {
  let text: string;
  try {
    text = fs.readFileSync('/proc/thread-self/net/packet', 'utf8');
  } catch {
    return true; // cannot tell: say nothing
  }
  return text.split('\n').slice(1).some((l) => Number(l.trim().split(/\s+/)[4]) === ifindex);
}

/**
 * Creates vbr-neuv/vth-neuv (ifindex 10000000/10000001), MTU 2048 or 9000,
 * both up, tx/rx checksum offload off. Returns true if created, false if it
 * already existed (then only the MTU is brought in line).
 */
export async function ensureDpPair(mtu: number, vbrIndex: number, vthIndex: number): Promise<{ created: boolean; mtuWas?: number }> {
  const lg = log('link');
  if (ifNameToIndex(VBR)) {
    const [l] = await linkShow(VBR);
    if (l && l.mtu !== mtu) {
      await run('ip', ['link', 'set', 'dev', VBR, 'mtu', String(mtu)]);
      await run('ip', ['link', 'set', 'dev', VTH, 'mtu', String(mtu)]);
      lg.info({ mtu, was: l.mtu }, 'vbr-neuv MTU changed');
      return { created: false, mtuWas: l.mtu };
    }
    return { created: false };
  }
  await run('ip', [
    'link', 'add', VBR, 'index', String(vbrIndex), 'mtu', String(mtu), 'type', 'veth',
    'peer', 'name', VTH, 'index', String(vthIndex), 'mtu', String(mtu),
  ]);
  try {
    for (const dev of [VBR, VTH]) {
      await run('ethtool', ['-K', dev, 'rx', 'off', 'tx', 'off']);
      await run('ip', ['link', 'set', 'dev', dev, 'up']);
    }
  } catch (e) {
    await run('ip', ['link', 'del', 'dev', VBR], { allowFail: true });
    throw e;
  }
  lg.info({ vbr: vbrIndex, vth: vthIndex, mtu }, 'created vbr-neuv/vth-neuv');
  return { created: true };
}

/** Moved to src/netns.ts (kept here for the importers of link.ts). */
export { enterNetns } from './netns';
