/**
 * NeuVector's real DP in `neuv-bpf demo` (harness/demo.ts), where its tarball is
 * at hand: started on vth-neuv of the demo's enforcer netns, both containers
 * as its endpoints (with the echo server's ports), a deny rule for TCP and
 * UDP to port `blocked` of the second one. It answers the demo's questions in
 * the stub DP's terms (StubCounts: frames per kind, "udp/8080", "icmp"...),
 * from the sessions it lists; counts() clears its session table after each
 * reading, so the readings add up even when the DP forgets a closed session.
 */
import type { StubCounts } from './stub-dp';
import type { ContainerNs, Topology } from './topology';
import type { DpApp, DpSession } from '../src/dp/client';
import { NvDp } from './nvdp';

export interface DemoEndpoint {
  c: ContainerNs;
  mac: string;
  ucmac: string;
  bcmac: string;
}

function kindOf(s: DpSession): string {
  const v6 = s.etherType === 0x86dd;
  if (s.ipProto === 1) return 'icmp';
  if (s.ipProto === 58) return 'icmp6';
  const p = s.ipProto === 6 ? 'tcp' : s.ipProto === 17 ? 'udp' : `ip${v6 ? '6' : ''}/${s.ipProto}`;
  if (s.ipProto !== 6 && s.ipProto !== 17) return p;
  return `${p}${v6 ? '6' : ''}/${Math.min(s.clientPort, s.serverPort)}`;
}

export class RealDemoDp {
  private readonly acc: StubCounts = { seq: 0, rx: 0, sent: 0, dropped: 0, ignored: 0, truncated: 0, send_errors: 0, pairs: {} };

  private constructor(
    readonly dp: NvDp,
    private readonly eps: DemoEndpoint[],
  ) {}

  static async start(t: Topology, eps: DemoEndpoint[], blocked: number, apps: DpApp[]): Promise<RealDemoDp> {
    const dp = await NvDp.start({ netns: t.enforcer });
    try {
      for (const e of eps) dp.client.addMac({ mac: e.mac, ucmac: e.ucmac, bcmac: e.bcmac, ips: [e.c.ip4] });
      dp.client.cfgMac(eps.map((e) => e.mac), { apps });
      const last = eps[eps.length - 1]!;
      dp.client.cfgPolicy({ macs: [last.mac], rules: [{ id: 10000 + blocked, dip: last.c.ip4, port: blocked, proto: 0, action: 'deny', ingress: true }] });
      await dp.client.sync();
    } catch (e) {
      dp.kill();
      throw e;
    }
    return new RealDemoDp(dp, eps);
  }

  /** The endpoints inline for FWD (call before the pairs switch), in tap otherwise (after). */
  async mode(mode: string): Promise<void> {
    this.dp.client.cfgMac(this.eps.map((e) => e.mac), { tap: mode !== 'fwd' });
    await this.dp.client.sync();
  }

  async counts(): Promise<StubCounts> {
    const ss = await this.dp.client.listSessions();
    const dev = await this.dp.client.counterDevice();
    this.dp.client.send({ ctrl_clear_session: { filter_id: 0 } });
    await this.dp.client.sync();
    for (const s of ss) {
      const key = s.epMac;
      const pair = (this.acc.pairs[key] ??= {
        id: 0,
        to_wl: { frames: 0, bytes: 0, sent: 0, dropped: 0, kinds: {} },
        from_wl: { frames: 0, bytes: 0, sent: 0, dropped: 0, kinds: {} },
      });
      const d = s.flags & 1 ? pair.to_wl : pair.from_wl; // DPSESS_FLAG_INGRESS
      const k = (d.kinds[kindOf(s)] ??= { frames: 0, dropped: 0 });
      const n = s.clientPkts + s.serverPkts;
      d.frames += n;
      k.frames += n;
      if (s.policyAction === 7) {
        d.dropped += n;
        k.dropped += n;
      }
    }
    this.acc.seq++;
    this.acc.rx = Number(dev.rxPackets);
    this.acc.sent = Number(dev.txPackets);
    this.acc.ignored = Number(dev.noWorkloadPackets);
    this.acc.dropped = Object.values(this.acc.pairs).reduce((a, p) => a + p.to_wl.dropped + p.from_wl.dropped, 0);
    return JSON.parse(JSON.stringify(this.acc)) as StubCounts;
  }

  stop(): void {
    this.dp.kill();
  }
}
