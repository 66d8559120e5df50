/**
 * NeuVector's tc pipe rules, as argument arrays for `tc` (never a shell
 * string). They restate what the enforcer's tc driver installs per pair
 * (docs/datapath.md sections 3 and 4): on vex and vin ingress a u32 filter at pref
 * 10001 (IPv4 unicast to/from the workload: rewrite to the UCMAC with pedit,
 * mirror to vbr-neuv) and a catch-all at pref 10002 (mirror to the other
 * port); on vbr-neuv two filters per pair at prefs derived from the ports'
 * ifindexes (ifindex % 65536): DA == UCMAC -> DA := MAC, to vin; SA == UCMAC
 * -> SA := MAC, to vex (FWD), or drop (TAP).
 *
 * Used as the baseline in benchmarks, as the fixture for migration tests, and
 * by `handback`. Where the kernel has no act_pedit, `pedit: false` builds the
 * same filters without the rewrite (the match and mirred parts only).
 */

export const NV_PREF_BASE = 10000;
export const NV_PREF_MAX = 65536;
export const NV_VBR = 'vbr-neuv';

export interface NvPair {
  inPort: string;
  exPort: string;
  mac: Uint8Array; // workload MAC
  ucmac: Uint8Array;
  inPref: number; // pref of inPort's rule on vbr-neuv (NeuVector: inPort ifindex % 65536)
  exPref: number; // pref of exPort's rule on vbr-neuv
}

const hx = (b: number) => b.toString(16).padStart(2, '0');
/** u16 of bytes [i, i+1] as 0xHHHH. */
const u16 = (m: Uint8Array, i: number) => `0x${hx(m[i]!)}${hx(m[i + 1]!)}`;
/** u32 of bytes [i..i+3] as 0xHHHHHHHH. */
const u32 = (m: Uint8Array, i: number) => `0x${hx(m[i]!)}${hx(m[i + 1]!)}${hx(m[i + 2]!)}${hx(m[i + 3]!)}`;

/** Matches DA == m (offsets relative to the network header, as u32 sees them at ingress). */
function matchDa(m: Uint8Array): string[] {
  return ['match', 'u16', u16(m, 0), '0xffff', 'at', '-14', 'match', 'u32', u32(m, 2), '0xffffffff', 'at', '-12'];
}
function matchSa(m: Uint8Array): string[] {
  return ['match', 'u32', u32(m, 0), '0xffffffff', 'at', '-8', 'match', 'u16', u16(m, 4), '0xffff', 'at', '-4'];
}
function setDa(m: Uint8Array): string[] {
  return ['action', 'pedit', 'munge', 'offset', '-14', 'u16', 'set', u16(m, 0), 'munge', 'offset', '-12', 'u32', 'set', u32(m, 2), 'pipe'];
}
function setSa(m: Uint8Array): string[] {
  return ['action', 'pedit', 'munge', 'offset', '-8', 'u32', 'set', u32(m, 0), 'munge', 'offset', '-4', 'u16', 'set', u16(m, 4), 'pipe'];
}
const mirror = (dev: string) => ['action', 'mirred', 'egress', 'mirror', 'dev', dev];
const filterAdd = (dev: string, pref: number, proto: 'ip' | 'all') => ['filter', 'add', 'dev', dev, 'pref', String(pref), 'parent', 'ffff:', 'protocol', proto, 'u32'];

export type NvMode = 'fwd' | 'tap';

/** The `tc` argument arrays NeuVector runs for FwdPortPair / TapPortPair, in its order. */
export function nvPairRules(p: NvPair, mode: NvMode, opts: { pedit: boolean; vbr?: string } = { pedit: true }): string[][] {
  const vbr = opts.vbr ?? NV_VBR;
  const pe = opts.pedit;
  const rules: string[][] = [];
  // vex ingress: IPv4 unicast to the workload
  rules.push([
    ...filterAdd(p.exPort, NV_PREF_BASE + 1, 'ip'),
    'match', 'u8', '0', '1', 'at', '-14',
    ...matchDa(p.mac),
    ...(mode === 'tap' ? mirror(p.inPort) : []),
    ...(pe ? setDa(p.ucmac) : []),
    ...mirror(vbr),
  ]);
  rules.push([...filterAdd(p.exPort, NV_PREF_BASE + 2, 'all'), 'match', 'u8', '0', '0', ...mirror(p.inPort)]);
  // vin ingress: IPv4 unicast from the workload
  rules.push([
    ...filterAdd(p.inPort, NV_PREF_BASE + 1, 'ip'),
    'match', 'u8', '0', '1', 'at', '-14',
    ...matchSa(p.mac),
    ...(mode === 'tap' ? mirror(p.exPort) : []),
    ...(pe ? setSa(p.ucmac) : []),
    ...mirror(vbr),
  ]);
  rules.push([...filterAdd(p.inPort, NV_PREF_BASE + 2, 'all'), 'match', 'u8', '0', '0', ...mirror(p.exPort)]);
  // vbr-neuv ingress: frames from the DP
  if (mode === 'fwd') {
    rules.push([...filterAdd(vbr, p.exPref, 'all'), ...matchDa(p.ucmac), ...(pe ? setDa(p.mac) : []), ...mirror(p.inPort)]);
    rules.push([...filterAdd(vbr, p.inPref, 'all'), ...matchSa(p.ucmac), ...(pe ? setSa(p.mac) : []), ...mirror(p.exPort)]);
  } else {
    rules.push([...filterAdd(vbr, p.exPref, 'all'), ...matchDa(p.ucmac), 'action', 'drop']);
    rules.push([...filterAdd(vbr, p.inPref, 'all'), ...matchSa(p.ucmac), 'action', 'drop']);
  }
  return rules;
}

/** NeuVector's AttachPortPair: a legacy ingress qdisc on each port. */
export function nvAttachRules(p: Pick<NvPair, 'inPort' | 'exPort'>): string[][] {
  return [
    ['qdisc', 'add', 'dev', p.inPort, 'ingress'],
    ['qdisc', 'add', 'dev', p.exPort, 'ingress'],
  ];
}

/** NeuVector's ResetPortPair: delete the pair's filters (vin/vex prefs 10001/10002, its two vbr-neuv prefs). */
export function nvResetRules(p: NvPair, vbr = NV_VBR): string[][] {
  const del = (dev: string, pref: number, proto: 'ip' | 'all') => ['filter', 'del', 'dev', dev, 'parent', 'ffff:', 'protocol', proto, 'pref', String(pref)];
  return [
    del(p.exPort, NV_PREF_BASE + 1, 'ip'),
    del(p.exPort, NV_PREF_BASE + 2, 'all'),
    del(p.inPort, NV_PREF_BASE + 1, 'ip'),
    del(p.inPort, NV_PREF_BASE + 2, 'all'),
    del(vbr, p.inPref, 'all'),
    del(vbr, p.exPref, 'all'),
  ];
}

/** NeuVector's pref for a port on vbr-neuv: ifindex % 65536, else the smallest free (it keeps a set). */
export function nvPref(ifindex: number, taken: Set<number>): number {
  let pref = ifindex % NV_PREF_MAX;
  if (!taken.has(pref)) return pref;
  for (pref = 1; pref < NV_PREF_MAX; pref++) if (!taken.has(pref)) return pref;
  return 0;
}
