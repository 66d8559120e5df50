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
import type { DpWatch } from '../dp/watch';
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

export class DpRegistrar {
  private client: { pid: number; c: DpClient } | undefined;

  constructor(
    private readonly watch: DpWatch,
    readonly policy: EndpointPolicy | undefined,
  ) {}

  private clientNow(what: string): DpClient {
    const d = this.watch.state === 'up' ? this.watch.current : undefined;
    if (!d) throw new NeuvError(`the DP is ${this.watch.state === 'up' ? 'gone' : this.watch.state}: ${what} cannot be registered with it before it runs`, ExitCode.CONFLICT);
    if (this.client?.pid !== d.pid) {
      this.client?.c.close();
      this.client = { pid: d.pid, c: DpClient.open({ root: d.root }) };
    }
    return this.client.c;
  }

  /** Registers an intercepted container (see the file comment); resolves once the DP has handled it. */
  async register(r: InterceptResult, mode: ModeName): Promise<void> {
    const c = this.clientNow(`${r.port} of ${r.target}`);
    const ips = r.addresses.map((a) => a.split('/')[0]!).filter((a) => /^\d+\.\d+\.\d+\.\d+$/.test(a));
    c.addMac({ mac: r.mac, ucmac: r.pair.ucmac, bcmac: r.pair.bcmac, ips });
    c.cfgMac([r.mac], { tap: mode !== 'fwd' });
    if (this.policy) c.cfgPolicy({ macs: [r.mac], defaultAction: this.policy.defaultAction, rules: rulesFor(this.policy, ips) });
    await c.sync();
    log('service').info({ target: r.target, mac: r.mac, mode, ips }, 'registered with the DP');
  }

  /** Removes a released container's endpoint (best effort: a DP gone has forgotten it anyway). */
  unregister(mac: string): void {
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
