/**
 * One port pair as an enforcer sees it, on the builder in harness/net.ts,
 * for the kernel suites and the benchmarks:
 *
 *   host netns            enforcer netns              workload netns
 *   hostIf (addr/24) ==veth== vex     vin ==veth== wlIf (addr/24, MAC M)
 *
 * addPair() wires one into three netns (the migration fixture,
 * test/nvfixture.ts, builds its node from it); makePairTopology() makes the
 * three netns too, removed by runCleanups().
 */
import { addAddrs, makeNet, Net, Netns, staticNeighbours, veth } from './net';
import { uniqueName } from './proc';

/** A pair's names and addresses (IPv4, a /24 each side). */
export interface PairNames {
  vin: string;
  vex: string;
  hostIf: string;
  wlIf: string;
  hostAddr: string;
  wlAddr: string;
}

export interface PairOptions extends PairNames {
  /** Choose the vex ifindex (e.g. to test id derivation). */
  vexIndex?: number;
  mtu?: number;
}

/** What addPair made, with the MACs and ifindexes it got. */
export interface PairWiring extends PairNames {
  hostMac: string;
  /** The workload MAC M of the pair. */
  wlMac: string;
  vinIfindex: number;
  vexIfindex: number;
}

/**
 * The pair's two veths, addresses and neighbours, in the three netns. Every
 * end up with IPv6 off (no router solicitations or DAD in the counters),
 * static neighbour entries on both sides (no ARP timing), no forwarding in
 * the enforcer netns: without a pair nothing gets across.
 */
export function addPair(ns: { host: Netns; enforcer: Netns; workload: Netns }, o: PairOptions): PairWiring {
  const ex = veth({ ns: ns.enforcer, name: o.vex, index: o.vexIndex, mtu: o.mtu }, { ns: ns.host, name: o.hostIf }, { ipv6: false });
  const vin = veth({ ns: ns.enforcer, name: o.vin, mtu: o.mtu }, { ns: ns.workload, name: o.wlIf }, { ipv6: false });
  addAddrs(ns.host, o.hostIf, `${o.hostAddr}/24`);
  addAddrs(ns.workload, o.wlIf, `${o.wlAddr}/24`);
  staticNeighbours({ ns: ns.host, dev: o.hostIf, addr: o.hostAddr }, { ns: ns.workload, dev: o.wlIf, addr: o.wlAddr });
  return {
    vin: o.vin, vex: o.vex, hostIf: o.hostIf, wlIf: o.wlIf, hostAddr: o.hostAddr, wlAddr: o.wlAddr,
    hostMac: ex.b.address, wlMac: vin.b.address, vinIfindex: vin.a.ifindex, vexIfindex: ex.a.ifindex,
  };
}

export interface PairTopology extends PairWiring {
  /** What made (and at cleanup removes) the three netns. */
  net: Net;
  /** Host side: holds hostIf (the peer of vex), address hostAddr. */
  host: Netns;
  /** Enforcer netns: holds vin and vex (and vbr-neuv after `load`). */
  enforcer: Netns;
  /** Workload: holds wlIf (the peer of vin), address wlAddr. */
  workload: Netns;
}

/**
 * One pair in three fresh netns (addPair): by default vexE/hA, vinE/eth0,
 * host SUBNET.1, workload SUBNET.2 with subnet "10.77.0".
 */
export function makePairTopology(o: Partial<PairOptions> & { subnet?: string } = {}): PairTopology {
  const subnet = o.subnet ?? '10.77.0';
  const net = makeNet();
  const ns = { host: net.ns(uniqueName()), enforcer: net.ns(uniqueName()), workload: net.ns(uniqueName()) };
  const w = addPair(ns, {
    vin: o.vin ?? 'vinE', vex: o.vex ?? 'vexE', hostIf: o.hostIf ?? 'hA', wlIf: o.wlIf ?? 'eth0',
    hostAddr: `${subnet}.1`, wlAddr: `${subnet}.2`, vexIndex: o.vexIndex, mtu: o.mtu,
  });
  return { net, ...ns, ...w };
}
