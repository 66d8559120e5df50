/**
 * Running iproute2/ethtool in one network namespace: through
 * `nsenter --net=PATH` (`ip -n` only takes names), or directly in the
 * current one. Argument arrays only.
 */
import * as fs from 'node:fs';
import { NotFoundError } from '../errors';
import { run } from '../link';
import { log } from '../log';
import { netnsPath } from '../netns';

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
