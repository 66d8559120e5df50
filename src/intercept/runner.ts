/**
 * One network namespace's links and addresses, for intercept, release and
 * recovery: in-process over rtnetlink (src/intercept/netlink.ts: a socket opened in
 * that netns for each change, a few system calls), where a change used to be
 * a `nsenter --net=PATH -- ip ...` child (two processes, 50-120 ms each on a
 * loaded node). Routes and neighbours, and ethtool, still run iproute2 and
 * ethtool children (`ip -n` only takes names: nsenter); argument arrays only.
 */
import * as fs from 'node:fs';
import { NeuvError, NotFoundError } from '../errors';
import { run } from '../link';
import { log } from '../log';
import { inNetnsAt, netnsPath } from '../netns';
import { ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM, Rtnl, closeFd, ethtoolSetValue, inetSocket, linkAliases } from '../bpf';
import { AddrJson, LinkChange, LinkDetail, VethEnd, addAddr, addVeth, delLink, flushAddrs, getLink, listAddrs, setLink } from './netlink';

export type { LinkDetail };

/** Runs commands in one network namespace: through nsenter, or directly for the current one. */
export class NsRunner {
  constructor(
    /** Path of the netns file, or undefined for the current netns. */
    readonly path: string | undefined,
    readonly desc: string,
  ) {}

  async cmd(cmd: string, args: string[], opts: { allowFail?: boolean; input?: string } = {}): Promise<{ stdout: string; code: number }> {
    return this.path ? run('nsenter', [`--net=${this.path}`, '--', cmd, ...args], opts) : run(cmd, args, opts);
  }

  async ip(...args: string[]): Promise<string> {
    return (await this.cmd('ip', args)).stdout;
  }

  async ipJson<T>(...args: string[]): Promise<T> {
    const out = await this.ip('-j', ...args);
    return JSON.parse(out.trim() || '[]') as T;
  }

  /**
   * fn with an rtnetlink socket in this netns (opened in it, closed after);
   * a NotFoundError when the netns is gone. Synchronous: nothing else of
   * this process runs meanwhile.
   */
  private nl<T>(what: string, fn: (r: Rtnl) => T): T {
    if (!this.path) return Rtnl.with(what, fn);
    const r = inNetnsAt(this.path, () => Rtnl.open(what));
    if (!r) throw new NotFoundError(`${what}: ${this.desc} is gone`);
    try {
      return fn(r.value);
    } finally {
      r.value.close();
    }
  }

  /** The link named `name` (as `ip -d -j link show dev NAME` prints it), or undefined when there is none (or no netns). */
  async link(name: string): Promise<LinkDetail | undefined> {
    try {
      return this.nl(`look up ${name}`, (r) => getLink(r, name));
    } catch (e) {
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  /** Turns RX and TX checksum offload off on dev (`ethtool -K DEV rx off tx off`, through ethtool's ioctl). */
  async checksumOffloadOff(dev: string): Promise<void> {
    const open = () => inetSocket(`ethtool on ${dev}`);
    const fd = this.path ? inNetnsAt(this.path, open)?.value : open();
    if (fd === undefined) throw new NotFoundError(`checksum offload of ${dev}: ${this.desc} is gone`);
    try {
      for (const cmd of [ETHTOOL_SRXCSUM, ETHTOOL_STXCSUM]) ethtoolSetValue(fd, dev, cmd, 0, `turn ${cmd === ETHTOOL_SRXCSUM ? 'rx' : 'tx'} checksum offload off on ${dev} in ${this.desc}`);
    } finally {
      closeFd(fd);
    }
  }

  /** Every link here (one RTM_GETLINK dump): index, name, MTU, alias, kind, and as ip shows it a peer's index in another netns. */
  async links(): Promise<LinkDetail[]> {
    const ls = this.path ? inNetnsAt(this.path, () => linkAliases())?.value : linkAliases();
    if (!ls) throw new NotFoundError(`the links of ${this.desc}: it is gone`);
    return ls.map((l) => ({
      ifindex: l.ifindex, ifname: l.name, mtu: l.mtu,
      ...(l.alias ? { ifalias: l.alias } : {}), ...(l.link && l.linkNetnsid !== undefined ? { link_index: l.link } : {}), ...(l.kind ? { linkinfo: { info_kind: l.kind } } : {}),
    }));
  }

  /** The ifindex of `dev`, or an error naming it and this netns. */
  private index(r: Rtnl, dev: string): number {
    const l = getLink(r, dev);
    if (!l) throw new NeuvError(`cannot find device "${dev}" in ${this.desc}`);
    return l.ifindex;
  }

  /** Changes dev (`ip link set dev DEV ...`): name, MAC, MTU, queue length, alias ('' removes it), up/down, addrgenmode. */
  async set(dev: string, c: Omit<LinkChange, 'netnsFd' | 'newIfindex'>): Promise<void> {
    const what = `set ${dev} ${Object.entries(c).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(' ')}`;
    this.nl(what, (r) => setLink(r, this.index(r, dev), c, `${what} in ${this.desc}`));
  }

  /** Deletes dev (with its veth peer, wherever that is). */
  async del(dev: string): Promise<void> {
    this.nl(`delete ${dev}`, (r) => delLink(r, this.index(r, dev), `delete ${dev} in ${this.desc}`));
  }

  /** Creates a veth pair here (`ip link add ... type veth peer ...`). */
  async addVeth(main: VethEnd, peer: VethEnd): Promise<void> {
    const what = `create ${main.name} (veth, peer ${peer.name})`;
    this.nl(what, (r) => addVeth(r, main, peer, `${what} in ${this.desc}`));
  }

  /** The addresses of dev (`ip -j addr show dev DEV`'s addr_info). */
  async addrs(dev: string): Promise<AddrJson[]> {
    return this.nl(`addresses of ${dev}`, (r) => listAddrs(r, this.index(r, dev)));
  }

  /** Removes every address of dev (`ip addr flush dev DEV`). */
  async flush(dev: string): Promise<void> {
    this.nl(`flush ${dev}`, (r) => flushAddrs(r, this.index(r, dev), `remove the addresses of ${dev} in ${this.desc}`));
  }

  /** Adds addresses to dev in this order (snapshot.ts's addAddresses). */
  async addAddrs(dev: string, xs: AddrJson[]): Promise<void> {
    this.nl(`addresses of ${dev}`, (r) => {
      const i = this.index(r, dev);
      for (const x of xs) addAddr(r, i, x, `add ${x.local}/${x.prefixlen} to ${dev} in ${this.desc}`);
    });
  }

  /**
   * Moves dev from this netns to dest, asking for ifindex `index` there
   * (IFLA_NEW_IFINDEX) when given; if the kernel refuses that (in use
   * there), the kernel picks the ifindex (it keeps the current one when
   * free). Returns whether the requested ifindex was obtained.
   */
  async moveTo(dev: string, dest: NsRunner, index?: number): Promise<boolean> {
    const fd = fs.openSync(dest.ref(), 'r');
    try {
      return this.nl(`move ${dev}`, (r) => {
        const i = this.index(r, dev);
        const what = `move ${dev} from ${this.desc} to ${dest.desc}`;
        if (index) {
          try {
            setLink(r, i, { netnsFd: fd, newIfindex: index }, what);
            return true;
          } catch (e) {
            log('intercept').debug({ dev, index, err: (e as Error).message }, 'could not keep the ifindex; moving without');
          }
        }
        setLink(r, i, { netnsFd: fd }, what);
        return false;
      });
    } finally {
      fs.closeSync(fd);
    }
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
