/**
 * A node as NeuVector's agent sets up its tc pipe (the rules themselves are
 * src/migrate/nvtc.ts's), for the migration suites and the benchmarks:
 * Connect, and a pair's NvPair as AttachPortPair numbers it.
 */
import { VBR_IFINDEX, VTH_IFINDEX } from '../src/layout';
import { VTH } from '../src/link';
import { parseMac, ucmac } from '../src/mac';
import { NV_VBR, NvPair, nvPref } from '../src/migrate/nvtc';
import { Netns, veth } from './net';

/**
 * NeuVector's Connect in the enforcer netns: vbr-neuv/vth-neuv (ifindex
 * 10000000/10000001, MTU 2048), rx/tx checksum offload off, up, and a
 * legacy ingress qdisc on vbr-neuv.
 */
export function nvConnect(enforcer: Netns): void {
  veth({ ns: enforcer, name: NV_VBR, index: VBR_IFINDEX, mtu: 2048 }, { ns: enforcer, name: VTH, index: VTH_IFINDEX, mtu: 2048 }, { ipv6: false, up: false });
  for (const dev of [NV_VBR, VTH]) {
    enforcer.exec('ethtool', ['-K', dev, 'rx', 'off', 'tx', 'off'], { allowFail: true });
    enforcer.ip('link', 'set', 'dev', dev, 'up');
  }
  enforcer.exec('tc', ['qdisc', 'add', 'dev', NV_VBR, 'ingress']);
}

/**
 * The NvPair of a pair as AttachPortPair numbers it: its vbr-neuv prefs
 * (ifindex % 65536, the smallest free one if taken; both added to `taken`),
 * its UCMAC from the vex ifindex (NeuVector's id).
 */
export function nvPair(vin: string, vex: string, vinIfindex: number, vexIfindex: number, mac: string, taken: Set<number>): NvPair {
  const inPref = nvPref(vinIfindex, taken);
  taken.add(inPref);
  const exPref = nvPref(vexIfindex, taken);
  taken.add(exPref);
  return { inPort: vin, exPort: vex, mac: parseMac(mac), ucmac: ucmac(vexIfindex & 0xffff), inPref, exPref };
}
