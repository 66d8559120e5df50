/**
 * A node as NeuVector's tc pipe leaves it, built with real `tc` commands from
 * src/migrate/nvtc.ts, for the migration suites (src/migrate/).
 *
 *   host netns                enforcer netns                               workload netns
 *   h<i> (10.88.<i>.1) ==veth== vex<tag>-eth0   vin<tag>-eth0 ==veth== w<i> (10.88.<i>.2, MAC M)
 *                              vbr-neuv ==veth== vth-neuv (ifindex 10000000/10000001, MTU 2048,
 *                                                          legacy ingress qdisc on vbr-neuv)
 *
 * As NeuVector does it (harness/nvpipe.ts): Connect (vbr-neuv/vth-neuv, offload off, `tc qdisc
 * add dev vbr-neuv ingress`), then per pair AttachPortPair (a legacy ingress
 * qdisc on vin, then vex; vbr-neuv prefs = ifindex % 65536, the smallest free
 * one if taken; UCMAC from the vex ifindex) and FwdPortPair / TapPortPair
 * (the `tc filter add` argument arrays of nvPairRules, in NeuVector's order).
 *
 * Where the kernel has no act_pedit, every rule is built without its pedit
 * (match and mirred only), as NeuVector's commands would half-succeed there:
 * FWD then forwards no IPv4 unicast at all (the DP gets frames with the
 * workload MAC and returns nothing for them); TAP still forwards, the DP's
 * copies carry the workload MAC. Where act_gact does not load, TAP pairs get
 * no vbr-neuv drop rules. `notes` says which applied.
 *
 * The veths, addresses and neighbours are topology.ts's addPair (static
 * neighbour entries, IPv6 off). Every netns and child process is registered
 * with onCleanup().
 */
import { spawnSync } from 'node:child_process';
import { NV_VBR, NvMode, nvAttachRules, nvPairRules } from '../src/migrate/nvtc';
import { formatMac } from '../src/mac';
import { makeNet, Netns, sh, uniqueName } from './helpers';
import { addPair } from './topology';
import { Net } from '../harness/net';
import { nvConnect, nvPair } from '../harness/nvpipe';

export interface NvCaps {
  pedit: boolean;
  gact: boolean;
}

/** Whether this kernel's tc can create the action, tried in a throwaway netns. */
function canCreate(action: string[]): boolean {
  const r = spawnSync('unshare', ['--net', 'tc', 'actions', 'add', 'action', ...action], { encoding: 'utf8' });
  return r.status === 0;
}

let caps: NvCaps | undefined;
export function nvCaps(): NvCaps {
  caps ??= { pedit: canCreate(['pedit', 'munge', 'offset', '0', 'u8', 'set', '0']), gact: canCreate(['gact', 'drop']) };
  return caps;
}

export interface NvFixturePair {
  tag: string;
  mode: NvMode;
  vin: string;
  vex: string;
  vinIfindex: number;
  vexIfindex: number;
  /** The workload MAC M. */
  mac: string;
  ucmac: string;
  id: number;
  inPref: number;
  exPref: number;
  hostIf: string;
  wlIf: string;
  hostAddr: string;
  wlAddr: string;
  /** The tc argument arrays this pair's rules were built with. */
  rules: string[][];
}

export interface NvNode {
  /** What made (and at cleanup removes) the three netns and the stub DP. */
  net: Net;
  enforcer: Netns;
  host: Netns;
  workload: Netns;
  caps: NvCaps;
  pairs: NvFixturePair[];
  /** What the fixture could not build as NeuVector would on a full kernel. */
  notes: string[];
}

/** `tc` inside a netns (argument array). */
export function tc(ns: Netns, args: string[], allowFail = false): string {
  return ns.exec('tc', args, { allowFail });
}

/** Builds the node: NeuVector's Connect, then each pair intercepted and set to its mode. */
export function buildNvNode(specs: Array<{ tag: string; mode: NvMode }>, o: { caps?: NvCaps } = {}): NvNode {
  const c = o.caps ?? nvCaps();
  const net = makeNet();
  const [enforcer, host, workload] = [net.ns(uniqueName()), net.ns(uniqueName()), net.ns(uniqueName())];
  const notes: string[] = [];
  if (!c.pedit) notes.push('no act_pedit: FWD and TAP rules built without their pedit (match and mirred only)');
  if (!c.gact && specs.some((s) => s.mode === 'tap')) notes.push('no act_gact: TAP pairs without their vbr-neuv drop rules');

  nvConnect(enforcer);

  const taken = new Set<number>();
  const pairs: NvFixturePair[] = [];
  specs.forEach((s, i) => {
    const n = i + 1;
    const w = addPair({ host, enforcer, workload }, {
      vin: `vin${s.tag}-eth0`, vex: `vex${s.tag}-eth0`, hostIf: `h${n}`, wlIf: `w${n}`, hostAddr: `10.88.${n}.1`, wlAddr: `10.88.${n}.2`,
    });
    const { vin, vex, vinIfindex, vexIfindex, wlMac: mac } = w;

    // AttachPortPair: inPort, then exPort.
    const p = nvPair(vin, vex, vinIfindex, vexIfindex, mac, taken);
    const { inPref, exPref } = p;
    for (const args of nvAttachRules({ inPort: vin, exPort: vex })) tc(enforcer, args);
    const id = vexIfindex & 0xffff;
    let rules = nvPairRules(p, s.mode, { pedit: c.pedit });
    if (s.mode === 'tap' && !c.gact) rules = rules.filter((r) => r[3] !== NV_VBR);
    for (const args of rules) tc(enforcer, args);
    pairs.push({
      tag: s.tag, mode: s.mode, vin, vex, vinIfindex, vexIfindex, mac, ucmac: formatMac(p.ucmac), id, inPref, exPref,
      hostIf: w.hostIf, wlIf: w.wlIf, hostAddr: w.hostAddr, wlAddr: w.wlAddr, rules,
    });
  });
  return { net, enforcer, host, workload, caps: c, pairs, notes };
}

interface FilterRow {
  pref: number;
  kind: string;
  protocol: string;
  options?: Record<string, unknown>;
}

/** The filters on a device's ingress (rule entries only), as `tc -json` gives them. */
export function filtersOf(ns: Netns, dev: string): FilterRow[] {
  const out = tc(ns, ['-json', 'filter', 'show', 'dev', dev, 'ingress']);
  return (JSON.parse(out || '[]') as FilterRow[]).filter((f) => f.options && (f.kind !== 'u32' || 'actions' in f.options || 'match' in f.options));
}

/** The u32 filters of a pair that remain: any on vin/vex, and those at its vbr-neuv prefs. */
export function nvLeft(node: NvNode, p: NvFixturePair): string[] {
  const left: string[] = [];
  for (const dev of [p.vin, p.vex]) for (const f of filtersOf(node.enforcer, dev)) if (f.kind === 'u32') left.push(`${dev} pref ${f.pref}`);
  for (const f of filtersOf(node.enforcer, NV_VBR)) if (f.kind === 'u32' && (f.pref === p.inPref || f.pref === p.exPref)) left.push(`${NV_VBR} pref ${f.pref}`);
  return left;
}

/** For the record: the tc commands of a pair as one line each. */
export function ruleLines(p: NvFixturePair): string[] {
  return p.rules.map((r) => `tc ${r.join(' ')}`);
}

export { sh };
