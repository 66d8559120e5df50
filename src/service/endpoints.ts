/**
 * The DP knows a container before its first packet (serve --dp ...
 * --dp-register POLICY, docs/neuvector-dp.md): every container the service
 * intercepts (for the OCI hook through POST /v1/intercept, for the runtime
 * watcher, for any client) is registered with the supervised DP before the
 * call returns, so before the hook lets the container's process run:
 * ctrl_add_mac (its MAC, the pair's UCMAC/BCMAC, its IPv4 addresses),
 * ctrl_cfg_mac inline in fwd (tap otherwise), the node's policy for it,
 * then a keep-alive answered after all of them (DpClient.sync: the DP has
 * handled them). A registration that fails (the DP not up, not answering)
 * fails the intercept, which is released again: the hook's failure policy
 * decides then. At release the endpoint is removed from the DP (ctrl_del_mac).
 *
 * For a node without NeuVector's agent (which does this itself: do not
 * give both the DP's configuration).
 */
import { ExitCode, NeuvError, UsageError } from '../errors';
import type { DpProcess, DpWatch } from '../dp/watch';
import { DpClient, PolicyActionName, PolicyRule, policyMessage } from '../dp/client';
import { InterceptOptions, InterceptResult, ReleaseResult, intercept, release } from '../intercept';
import { readInputFile } from '../input';
import { log } from '../log';
import { ModeName } from '../pairs';

/**
 * The policy every registered container gets (a JSON file: {"defaultAction":
 * ..., "rules": [...]}). The DP keys a rule by the workload's own address
 * (an egress rule by its source, an ingress rule by its destination), so a
 * rule that leaves it out (no sip in an egress rule, no dip in an ingress
 * one) is given each of the container's IPv4 addresses.
 */
export interface EndpointPolicy {
  defaultAction?: PolicyActionName;
  rules: Array<Omit<PolicyRule, 'dip'> & { dip?: string }>;
}

/** The policy's rules for a container with these IPv4 addresses (see EndpointPolicy). */
export function rulesFor(p: EndpointPolicy, ips: string[]): PolicyRule[] {
  return p.rules.flatMap((r) => {
    if (r.ingress ? r.dip !== undefined : r.sip !== undefined) return [r as PolicyRule];
    return ips.map((ip) => (r.ingress ? { ...r, dip: ip, dipr: ip } : { ...r, sip: ip, sipr: ip }) as PolicyRule);
  });
}

/** --dp-register's value: a policy file, checked as the DP would get it; 'none': no policy sent. */
export function readEndpointPolicy(file: string): EndpointPolicy | undefined {
  if (file === 'none') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(readInputFile(file, '--dp-register', 1 << 20));
  } catch (e) {
    if (e instanceof NeuvError) throw e;
    throw new UsageError(`--dp-register ${file}: not JSON`);
  }
  const o = v as Record<string, unknown>;
  if (typeof v !== 'object' || v === null || Array.isArray(v) || !Array.isArray(o.rules) || Object.keys(o).some((k) => k !== 'rules' && k !== 'defaultAction')) {
    throw new UsageError(`--dp-register ${file}: expected {"defaultAction": "allow"|"deny", "rules": [{id, dip, port, proto, action, ingress}, ...]}`);
  }
  const p = { defaultAction: o.defaultAction as PolicyActionName | undefined, rules: o.rules as EndpointPolicy['rules'] };
  try {
    policyMessage({ macs: ['02:00:00:00:00:01'], defaultAction: p.defaultAction, rules: rulesFor(p, ['10.0.0.1']) }); // every field as the DP gets it
  } catch (e) {
    throw new UsageError(`--dp-register ${file}: ${(e as Error).message}`);
  }
  return p;
}

/** What is sent the DP for one endpoint, kept to send it again to a DP that restarted. */
interface Registered {
  target: string;
  ucmac: string;
  bcmac: string;
  ips: string[];
  mode: ModeName;
}

/**
 * Registers endpoints with the DP `dp` says is there now (its process, or
 * why there is none): the service's supervised DP (DpWatch), or the DP the
 * standalone OCI hook was given (its --dp). It keeps what it registered, so
 * that a DP that restarted, which has forgotten every endpoint, gets them
 * again (reregister, from the service's DpWatch onBack).
 */
export class DpRegistrar {
  private client: { pid: number; c: DpClient } | undefined;
  /** Endpoints registered and not removed since: MAC -> what was sent. */
  private readonly registered = new Map<string, Registered>();
  /** Endpoints sent again to a DP that came back (every time, counted). */
  reregistered = 0;

  constructor(
    /** The DP now, or why there is none ("the DP is down"). */
    private readonly dp: () => DpProcess | string,
    readonly policy: EndpointPolicy | undefined,
  ) {}

  /** Endpoints registered now. */
  get size(): number {
    return this.registered.size;
  }

  private clientNow(what: string): DpClient {
    const d = this.dp();
    if (typeof d === 'string') throw new NeuvError(`${d}: ${what} cannot be registered with it before it runs`, ExitCode.CONFLICT);
    if (this.client?.pid !== d.pid) {
      this.client?.c.close();
      this.client = { pid: d.pid, c: DpClient.open({ root: d.root }) };
    }
    return this.client.c;
  }

  /** The messages of one endpoint: ctrl_add_mac, ctrl_cfg_mac, its policy (no wait). */
  private send(c: DpClient, mac: string, e: Registered): void {
    c.addMac({ mac, ucmac: e.ucmac, bcmac: e.bcmac, ips: e.ips });
    c.cfgMac([mac], { tap: e.mode !== 'fwd' });
    if (this.policy) c.cfgPolicy({ macs: [mac], defaultAction: this.policy.defaultAction, rules: rulesFor(this.policy, e.ips) });
  }

  /** Registers an intercepted container (see the file comment); resolves once the DP has handled it. */
  async register(r: InterceptResult, mode: ModeName): Promise<void> {
    const c = this.clientNow(`${r.port} of ${r.target}`);
    const ips = r.addresses.map((a) => a.split('/')[0]!).filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a));
    const e = { target: r.target, ucmac: r.pair.ucmac, bcmac: r.pair.bcmac, ips, mode };
    this.send(c, r.mac, e);
    await c.sync();
    this.registered.set(r.mac, e);
    log('service').info({ target: r.target, mac: r.mac, mode, ips }, 'registered with the DP');
  }

  /**
   * Sends every endpoint registered to a DP that is back (restarted: it
   * knows none of them; or answering again: the same messages change
   * nothing), over its client; resolves once it handled them all.
   */
  async reregister(c: DpClient): Promise<number> {
    if (this.registered.size === 0) return 0;
    for (const [mac, e] of this.registered) this.send(c, mac, e);
    await c.sync();
    this.reregistered += this.registered.size;
    log('service').info({ endpoints: this.registered.size }, 'endpoints registered again with the DP that is back');
    return this.registered.size;
  }

  /** Removes a released container's endpoint (best effort: a DP gone has forgotten it anyway). */
  unregister(mac: string): void {
    this.registered.delete(mac);
    try {
      this.clientNow(mac).delMac(mac);
    } catch (e) {
      log('service').info({ mac, err: (e as Error).message }, 'could not remove the endpoint from the DP');
    }
  }

  close(): void {
    this.client?.c.close();
    this.client = undefined;
  }
}

/** The registrar of a supervised DP: registers while it is up. */
export function watchRegistrar(w: DpWatch, policy: EndpointPolicy | undefined): DpRegistrar {
  return new DpRegistrar(() => (w.state === 'up' && w.current) || `the DP is ${w.state === 'up' ? 'gone' : w.state}`, policy);
}

/** intercept, then (with a registrar) the DP's registration; a registration that fails releases it again. */
export async function interceptRegistered(reg: DpRegistrar | undefined, o: InterceptOptions): Promise<InterceptResult> {
  const r = await intercept(o);
  if (!reg) return r;
  try {
    await reg.register(r, r.pair.mode);
  } catch (e) {
    await release({ pinRoot: o.pinRoot, target: { netns: r.netns }, port: r.port, enforcer: o.enforcer }).catch((re: Error) =>
      log('service').warn({ target: r.target, err: re.message }, 'could not release after a failed DP registration: neuv-bpf repair'));
    throw e;
  }
  return r;
}

/** After a release: the endpoint off the DP. */
export function released(reg: DpRegistrar | undefined, r: ReleaseResult): ReleaseResult {
  reg?.unregister(r.mac);
  return r;
}
