/**
 * Forwarding loops: which ports a pair must not have.
 *
 * neuv_vin forwards what arrives on vin out of vex, neuv_vex what arrives on
 * vex out of vin, and neuv_vbr the DP's frames out of either. A frame sent
 * out of a veth arrives at the ingress of its peer. So if vin and vex are
 * peers of each other, a frame goes vex -> vin -> vex ... for ever (one core
 * at 100% in softirq: 8.1 M forwards a second, measured). And if a port's
 * peer is a port of another pair, or vbr-neuv/vth-neuv, the frame comes back
 * into our programs instead of reaching the workload or the host, and two
 * such pairs make the same endless ring. So a pair is refused (pair add,
 * intercept, adopt: planPairs in state.ts) and reported (show --check, then
 * removed by repair) when:
 *   - vin and vex are the same device;
 *   - vin and vex are veth peers of each other;
 *   - the peer of vin or vex is a port of another pair (existing, or of the
 *     same batch), or vbr-neuv/vth-neuv;
 *   - the peers of vin and vex are both in one other netns, ports of one
 *     bridge there (sharedBridge).
 * A peer in another network namespace is otherwise fine: that is the normal
 * case (the container's eth0, the host's bridge port). The peer is `ip -d -j
 * link`'s peer named by `link` when link_netnsid is absent (peerHere), else
 * link_index in the netns link_netnsid names (peerThere). What is not
 * checked (docs/datapath.md, "Forwarding loops"): both peers in one netns
 * that routes between them (the TTL ends such a loop), and rings through
 * another enforcer netns's datapath or a chain of netns.
 */
import { linkAliases } from '../bpf';
import { VBR_IFINDEX, VTH_IFINDEX } from '../layout';
import { LinkJson, VBR, VTH } from '../link';
import { inNetnsAt, netnsPathOfNsid } from '../netns';

/**
 * The ifindex of a veth's peer when that peer is in this netns, from
 * `ip -d -j link show` (which names a peer here by `link`, its name; one
 * elsewhere by link_index and link_netnsid); undefined otherwise.
 */
export function peerHere(l: Pick<LinkJson, 'link' | 'link_index' | 'link_netnsid' | 'linkinfo'>, byName: Map<string, { ifindex: number }>): number | undefined {
  if (l.linkinfo?.info_kind !== 'veth' || l.link_netnsid !== undefined) return undefined;
  return (l.link !== undefined ? byName.get(l.link)?.ifindex : undefined) ?? (l.link_index || undefined);
}

/** One port of a pair, as the loop check needs it. */
export interface LoopPort {
  ifindex: number;
  name: string;
  /** Its veth peer's ifindex, when the peer is in this netns. */
  peerIfindex?: number;
  /** Its veth peer in another netns: the id this netns gives that one (link_netnsid), and the peer's ifindex there. */
  peerNetnsid?: number;
  peerIndex?: number;
}

/** peerNetnsid and peerIndex of a veth whose peer is in another netns, from `ip -d -j link show`. */
export function peerThere(l: Pick<LinkJson, 'link_index' | 'link_netnsid' | 'linkinfo'>): Pick<LoopPort, 'peerNetnsid' | 'peerIndex'> {
  if (l.linkinfo?.info_kind !== 'veth' || l.link_netnsid === undefined || !l.link_index) return {};
  return { peerNetnsid: l.link_netnsid, peerIndex: l.link_index };
}

/**
 * Both veth peers in one other netns, ports of one bridge there: the bridge
 * floods a frame out of vex (a broadcast, an unknown unicast) to vin's peer,
 * so it comes back into the pair, for ever. That netns is found by its id
 * (netnsPathOfNsid) and its links read in-process (src/bpf/rtnl.ts), only
 * when both peers share it (never the case for a container's port: one peer
 * is in the container, the other on the host).
 */
function sharedBridge(vin: LoopPort, vex: LoopPort): string | undefined {
  if (vin.peerNetnsid === undefined || vin.peerNetnsid !== vex.peerNetnsid || !vin.peerIndex || !vex.peerIndex) return undefined;
  const where = netnsPathOfNsid(vin.peerNetnsid);
  const links = where ? inNetnsAt(where, () => linkAliases())?.value : undefined;
  const a = links?.find((l) => l.ifindex === vin.peerIndex);
  const b = links?.find((l) => l.ifindex === vex.peerIndex);
  const br = a?.master ? links!.find((l) => l.ifindex === a.master) : undefined;
  if (!a || !b || !br || a.master !== b.master || br.kind !== 'bridge') return undefined;
  return `the veth peers of vin ${vin.name} and vex ${vex.name} (${a.name} and ${b.name}, in netns ${where}) are ports of one bridge there, ${br.name} (a frame would go round for ever)`;
}

/** Every problem line of this module starts with it (repair removes such a pair). */
export const LOOP_PROBLEM = 'forwarding loop';

export function isLoopProblem(line: string): boolean {
  return line.startsWith(LOOP_PROBLEM);
}

export interface LoopFound {
  line: string;
  /** The peer is another pair's port (a conflict with it) rather than a bad choice of ports. */
  otherPair: boolean;
}

/**
 * Why vin/vex would forward frames back into our programs, or undefined.
 * `ports` names every port that runs our programs (every pair's, the
 * batch's): ifindex -> "the vin of pair a/b (id 7)" and the like. This
 * pair's own ports may be among them: a peer is never its own device, and
 * one that is the other port is caught first.
 */
export function loopProblem(vin: LoopPort, vex: LoopPort, ports: Map<number, string>, name: (ifindex: number) => string): LoopFound | undefined {
  const bad = (text: string, otherPair = false): LoopFound => ({ line: `${LOOP_PROBLEM}: ${text}`, otherPair });
  if (vin.ifindex === vex.ifindex) return bad(`vin and vex are the same device (${vin.name})`);
  if (vin.peerIfindex === vex.ifindex || vex.peerIfindex === vin.ifindex) {
    return bad(`${vin.name} and ${vex.name} are veth peers of each other (a frame would go round between them for ever)`);
  }
  for (const [role, p] of [['vin', vin], ['vex', vex]] as const) {
    if (p.peerIfindex === undefined) continue;
    const pn = name(p.peerIfindex);
    const dp = p.peerIfindex === VBR_IFINDEX || pn === VBR ? VBR : p.peerIfindex === VTH_IFINDEX || pn === VTH ? VTH : undefined;
    if (dp) return bad(`the veth peer of ${role} ${p.name} is ${dp}, the DP port pair (frames would come back into the datapath)`);
    const other = ports.get(p.peerIfindex);
    if (other !== undefined) return bad(`the veth peer of ${role} ${p.name} is ${pn}, ${other} (frames would be forwarded back into the datapath)`, true);
  }
  const shared = sharedBridge(vin, vex);
  return shared ? bad(shared) : undefined;
}
