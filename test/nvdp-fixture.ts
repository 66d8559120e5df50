/**
 * What the kernel suites running NeuVector's real DP share: the gate (the
 * DP's tarball, built once into build/nvdp/), a DP started in a topology's
 * enforcer netns and stopped at cleanup, containers intercepted with the
 * CLI's `intercept` and registered with the DP as its endpoints.
 */
import assert from 'node:assert/strict';
import { buildNvdp, NvDp, nvdpUnavailable } from '../harness/nvdp';
import type { DpApp, DpClient, DpSession } from '../src/dp/client';
import { PORTS } from '../harness/topology';
import type { InterceptResult } from '../src/intercept';
import { kernelUnavailable, onCleanup, requireKernel } from './helpers';
import type { ContainerNs, TestTopology } from './topology';

/**
 * requireKernel, then the DP: skips with the reason where its tarball is
 * absent, except under NEUV_BPF_REQUIRE_KERNEL=1 (CI), where that fails.
 * Builds it (cached) so the first test does not pay for it.
 */
export function requireNvdp(ctx: Mocha.Context): void {
  requireKernel(ctx);
  const why = kernelUnavailable() ?? nvdpUnavailable();
  if (why) {
    if (process.env.NEUV_BPF_REQUIRE_KERNEL === '1') throw new Error(`NeuVector DP suite cannot run but NEUV_BPF_REQUIRE_KERNEL=1: ${why}`);
    // eslint-disable-next-line no-console
    console.log(`      (skipped: ${why})`);
    ctx.skip();
  }
  buildNvdp();
}

/** The real DP on vth-neuv of the topology's enforcer netns, stopped at cleanup. */
export async function startNvdp(tt: TestTopology, o: { noPort?: boolean } = {}): Promise<NvDp> {
  const dp = await NvDp.start({ netns: tt.t.enforcer, noPort: o.noPort });
  onCleanup(() => dp.kill());
  return dp;
}

/** `intercept --container-netns` through the CLI, in a mode. */
export function interceptC(tt: TestTopology, c: ContainerNs, mode: string, extra: string[] = []): InterceptResult {
  const r = tt.run(['intercept', '--container-netns', c.path, '--mode', mode, '--json', ...extra]);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as InterceptResult;
}

/**
 * Registers an intercepted container with a DP as NeuVector's agent does
 * (ctrl_add_mac with its MAC, UCMAC, BCMAC and IPv4 address); inline
 * (ctrl_cfg_mac tap:false) unless `tap`. Waits until the DP has handled it.
 */
export async function addEndpoint(client: DpClient, p: InterceptResult, c: ContainerNs, o: { tap?: boolean } = {}): Promise<void> {
  client.addMac({ mac: p.mac, ucmac: p.pair.ucmac, bcmac: p.pair.bcmac, ips: [c.ip4] });
  client.cfgMac([p.mac], { ...(o.tap ? {} : { tap: false }), apps: ECHO_APPS });
  await client.sync();
}

/** The echo server's ports (harness/topology.ts startServer), as the agent reports listening ports. */
export const ECHO_APPS: DpApp[] = [
  ...[PORTS.tcp, PORTS.tcpHost, PORTS.blocked].map((port) => ({ port, ipProto: 6 })),
  ...[PORTS.udp, PORTS.udpArp, PORTS.blocked].map((port) => ({ port, ipProto: 17 })),
];

/** A deny rule for traffic to a container's port (TCP and UDP unless proto says otherwise), nothing else denied. */
export async function denyPort(dp: NvDp, p: InterceptResult, c: ContainerNs, port: number, proto = 0): Promise<void> {
  dp.client.cfgPolicy({ macs: [p.mac], rules: [{ id: 10000 + port, dip: c.ip4, port, proto, action: 'deny', ingress: true }] });
  await dp.client.sync();
}

/** Sessions the DP lists between two addresses (either way), optionally of one protocol / server port. */
export function sessionsBetween(ss: DpSession[], a: string, b: string, o: { proto?: number; port?: number } = {}): DpSession[] {
  return ss.filter(
    (s) =>
      ((s.clientIp === a && s.serverIp === b) || (s.clientIp === b && s.serverIp === a)) &&
      (o.proto === undefined || s.ipProto === o.proto) &&
      (o.port === undefined || s.serverPort === o.port),
  );
}
