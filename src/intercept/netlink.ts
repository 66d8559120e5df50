/**
 * Links and addresses over rtnetlink, in-process, on an Rtnl socket (which
 * stays in the network namespace it was opened in): what intercept and
 * release did with one `nsenter ... ip` child per change (two processes and
 * 50-120 ms each on a loaded node, 30 of them per intercept). One link's
 * details (RTM_GETLINK by name, in the shape `ip -d -j link show` prints),
 * RTM_NEWLINK to change a link (name, MAC, MTU, queue length, alias, up or
 * down, IPv6 address generation mode, another netns and the ifindex there)
 * or create a veth pair, RTM_DELLINK, and a port's addresses (dump, add in
 * the shape `ip -j addr` prints, delete).
 */
import { KernelError } from '../errors';
import { formatMac, parseMac } from '../mac';
import {
  IFINFOMSG_LEN, IFLA_EXT_MASK, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, IFLA_LINK_NETNSID, IFLA_MTU,
  NLM_F_ACK, NLM_F_DUMP, RTEXT_FILTER_SKIP_STATS, RTM_GETLINK, RTM_NEWLINK, Rtnl, nlAttr, nlAttrs, nlCString, nlNested, nlString, nlU32,
} from '../bpf';

const RTM_DELLINK = 17;
const RTM_NEWADDR = 20;
const RTM_DELADDR = 21;
const RTM_GETADDR = 22;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const IFADDRMSG_LEN = 8;

const IFLA_ADDRESS = 1;
const IFLA_TXQLEN = 13;
const IFLA_OPERSTATE = 16;
const IFLA_AF_SPEC = 26;
const IFLA_NET_NS_FD = 28;
const IFLA_NUM_TX_QUEUES = 31;
const IFLA_NUM_RX_QUEUES = 32;
const IFLA_NEW_IFINDEX = 49;
const IFLA_INFO_DATA = 2;
const VETH_INFO_PEER = 1;
const IFLA_INET6_ADDR_GEN_MODE = 8;
const AF_INET = 2;
const AF_INET6 = 10;
const IFF_UP = 1;

const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_LABEL = 3;
const IFA_BROADCAST = 4;
const IFA_CACHEINFO = 6;
const IFA_FLAGS = 8;

const ENODEV = 19;
const EADDRNOTAVAIL = 99;

/** One link as `ip -d -j link show dev NAME` prints it (the fields intercept reads). */
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

/** An address as `ip -j addr show` prints it (addr_info[]). */
export interface AddrJson {
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
  address?: string;
  broadcast?: string;
  scope?: string;
  label?: string;
  valid_life_time?: number;
  preferred_life_time?: number;
  noprefixroute?: boolean;
  home?: boolean;
  mngtmpaddr?: boolean;
  autojoin?: boolean;
  temporary?: boolean;
  secondary?: boolean;
  nodad?: boolean;
  optimistic?: boolean;
  tentative?: boolean;
  dadfailed?: boolean;
  deprecated?: boolean;
  dynamic?: boolean;
}

const IFF_NAMES: Array<[number, string]> = [
  [0x2, 'BROADCAST'], [0x8, 'LOOPBACK'], [0x10, 'POINTOPOINT'], [0x80, 'NOARP'], [0x100, 'PROMISC'], [0x1000, 'MULTICAST'], [0x1, 'UP'], [0x10000, 'LOWER_UP'],
];
const OPERSTATES = ['UNKNOWN', 'NOTPRESENT', 'DOWN', 'LOWERLAYERDOWN', 'TESTING', 'DORMANT', 'UP'];
/** IFLA_INET6_ADDR_GEN_MODE's values, as iproute2 names them. */
export const ADDR_GEN_MODES = ['eui64', 'none', 'stable_secret', 'random'] as const;
const SCOPES: Record<number, string> = { 0: 'global', 200: 'site', 253: 'link', 254: 'host', 255: 'nowhere' };
const FOREVER = 0xffffffff;

/** Address flags (IFA_F_*) and the key `ip -j addr` gives each; 0x01 is temporary for IPv6, secondary for IPv4. */
const IFA_FLAG_KEYS: Array<[number, keyof AddrJson]> = [
  [0x02, 'nodad'], [0x04, 'optimistic'], [0x08, 'dadfailed'], [0x10, 'home'], [0x20, 'deprecated'], [0x40, 'tentative'],
  [0x100, 'mngtmpaddr'], [0x200, 'noprefixroute'], [0x400, 'autojoin'],
];
const IFA_F_SECONDARY = 0x01;
const IFA_F_PERMANENT = 0x80;

function ifinfomsg(index: number, flags = 0, change = 0): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b.writeInt32LE(index, 4);
  b.writeUInt32LE(flags, 8);
  b.writeUInt32LE(change, 12);
  return b;
}

function u8Attr(type: number, v: number): Buffer {
  return nlAttr(type, Buffer.from([v]));
}

function s32Attr(type: number, v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return nlAttr(type, b);
}

function ipBytes(family: number, s: string): Buffer {
  if (family === AF_INET) {
    const p = s.split('.').map(Number);
    if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new Error(`not an IPv4 address: ${s}`);
    return Buffer.from(p);
  }
  const [head, tail] = s.includes('::') ? s.split('::') : [s, undefined];
  const parse = (x: string | undefined) => (x ? x.split(':') : []);
  const h = parse(head);
  const t = parse(tail);
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two groups.
  const groups = [...h, ...(tail !== undefined ? Array(8 - h.length - t.length - (t.at(-1)?.includes('.') ? 1 : 0)).fill('0') : []), ...t];
  const out = Buffer.alloc(16);
  let k = 0;
  for (const g of groups) {
    if (g.includes('.')) {
      ipBytes(AF_INET, g).copy(out, k);
      k += 4;
    } else {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw new Error(`not an IPv6 address: ${s}`);
      out.writeUInt16BE(parseInt(g, 16), k);
      k += 2;
    }
  }
  if (k !== 16) throw new Error(`not an IPv6 address: ${s}`);
  return out;
}

function ipString(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  const g = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  // RFC 5952: the longest run (of 2 or more) of zero groups becomes '::'.
  let best = -1;
  let len = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > len && j - i >= 2) [best, len] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + len))}`;
}

/** The link named `name` in the socket's netns, or undefined when there is none. */
export function getLink(r: Rtnl, name: string): LinkDetail | undefined {
  const body = Buffer.concat([ifinfomsg(0), nlString(IFLA_IFNAME, name), nlU32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)]);
  let out: LinkDetail | undefined;
  try {
    r.request(RTM_GETLINK, 0, body, `RTM_GETLINK ${name}`, (buf, type, off, end) => {
      if (type === RTM_NEWLINK) out = parseLink(buf, off, end);
    });
  } catch (e) {
    if (e instanceof KernelError && e.errno === ENODEV) return undefined;
    throw e;
  }
  return out;
}

function parseLink(buf: Buffer, off: number, end: number): LinkDetail {
  const flags = buf.readUInt32LE(off + 8);
  const l: LinkDetail = { ifindex: buf.readInt32LE(off + 4), ifname: '', mtu: 0, flags: IFF_NAMES.filter(([b]) => flags & b).map(([, n]) => n) };
  let peer = 0;
  for (const [t, v] of nlAttrs(buf, off + IFINFOMSG_LEN, end)) {
    const u32 = v.length >= 4 ? v.readUInt32LE(0) : 0;
    if (t === IFLA_IFNAME) l.ifname = nlCString(v);
    else if (t === IFLA_MTU) l.mtu = u32;
    else if (t === IFLA_ADDRESS && v.length === 6) l.address = formatMac(v);
    else if (t === IFLA_TXQLEN) l.txqlen = u32;
    else if (t === IFLA_IFALIAS) l.ifalias = nlCString(v);
    else if (t === IFLA_OPERSTATE && v.length >= 1) l.operstate = OPERSTATES[v[0]!] ?? 'UNKNOWN';
    else if (t === IFLA_LINK && u32) peer = u32;
    else if (t === IFLA_LINK_NETNSID && v.length >= 4) l.link_netnsid = v.readInt32LE(0);
    else if (t === IFLA_NUM_TX_QUEUES) l.num_tx_queues = u32;
    else if (t === IFLA_NUM_RX_QUEUES) l.num_rx_queues = u32;
    else if (t === IFLA_LINKINFO) {
      for (const [k, kv] of nlAttrs(v, 0, v.length)) if (k === IFLA_INFO_KIND) l.linkinfo = { info_kind: nlCString(kv) };
    } else if (t === IFLA_AF_SPEC) {
      for (const [fam, fv] of nlAttrs(v, 0, v.length)) {
        if (fam !== AF_INET6) continue;
        for (const [k, kv] of nlAttrs(fv, 0, fv.length)) if (k === IFLA_INET6_ADDR_GEN_MODE && kv.length >= 1) l.inet6_addr_gen_mode = ADDR_GEN_MODES[kv[0]!];
      }
    }
  }
  // As ip shows it: link_index only for a peer in another netns (one in this netns ip names instead).
  if (peer && l.link_netnsid !== undefined) l.link_index = peer;
  return l;
}

/** What setLink changes (each only when given). */
export interface LinkChange {
  name?: string;
  mac?: string;
  mtu?: number;
  txqlen?: number;
  /** '' removes it. */
  alias?: string;
  up?: boolean;
  addrGenMode?: string;
  /** Moves the link to the netns open at this fd... */
  netnsFd?: number;
  /** ...under this ifindex there. */
  newIfindex?: number;
}

function addrGenModeAttr(mode: string): Buffer {
  const v = (ADDR_GEN_MODES as readonly string[]).indexOf(mode);
  if (v < 0) throw new Error(`unknown addrgenmode ${mode}`);
  return nlNested(IFLA_AF_SPEC, nlNested(AF_INET6, u8Attr(IFLA_INET6_ADDR_GEN_MODE, v)));
}

/** Changes link `ifindex` in one RTM_NEWLINK (as `ip link set dev ...` does). */
export function setLink(r: Rtnl, ifindex: number, c: LinkChange, what: string): void {
  const a: Buffer[] = [];
  if (c.name !== undefined) a.push(nlString(IFLA_IFNAME, c.name));
  if (c.mac !== undefined) a.push(nlAttr(IFLA_ADDRESS, parseMac(c.mac)));
  if (c.mtu !== undefined) a.push(nlU32(IFLA_MTU, c.mtu));
  if (c.txqlen !== undefined) a.push(nlU32(IFLA_TXQLEN, c.txqlen));
  if (c.alias !== undefined) a.push(nlAttr(IFLA_IFALIAS, Buffer.from(c.alias, 'utf8'))); // no NUL: length 0 removes it
  if (c.addrGenMode !== undefined) a.push(addrGenModeAttr(c.addrGenMode));
  if (c.netnsFd !== undefined) a.push(nlU32(IFLA_NET_NS_FD, c.netnsFd));
  if (c.newIfindex !== undefined) a.push(s32Attr(IFLA_NEW_IFINDEX, c.newIfindex));
  const head = c.up === undefined ? ifinfomsg(ifindex) : ifinfomsg(ifindex, c.up ? IFF_UP : 0, IFF_UP);
  r.request(RTM_NEWLINK, NLM_F_ACK, Buffer.concat([head, ...a]), what, () => undefined);
}

export function delLink(r: Rtnl, ifindex: number, what: string): void {
  r.request(RTM_DELLINK, NLM_F_ACK, ifinfomsg(ifindex), what, () => undefined);
}

/** One end of a new veth pair. */
export interface VethEnd {
  name: string;
  /** The ifindex asked for (the kernel refuses one in use: EBUSY). */
  index?: number;
  mac?: string;
  mtu?: number;
  txqlen?: number;
  numTxQueues?: number;
  numRxQueues?: number;
}

function endAttrs(e: VethEnd): Buffer[] {
  const a = [nlString(IFLA_IFNAME, e.name)];
  if (e.mac) a.push(nlAttr(IFLA_ADDRESS, parseMac(e.mac)));
  if (e.mtu) a.push(nlU32(IFLA_MTU, e.mtu));
  if (e.txqlen) a.push(nlU32(IFLA_TXQLEN, e.txqlen));
  if (e.numTxQueues) a.push(nlU32(IFLA_NUM_TX_QUEUES, e.numTxQueues));
  if (e.numRxQueues) a.push(nlU32(IFLA_NUM_RX_QUEUES, e.numRxQueues));
  return a;
}

/** Creates a veth pair (as `ip link add NAME [index N] ... type veth peer name PEER ...`). */
export function addVeth(r: Rtnl, main: VethEnd, peer: VethEnd, what: string): void {
  const peerInfo = Buffer.concat([ifinfomsg(peer.index ?? 0), ...endAttrs(peer)]);
  const info = nlNested(IFLA_LINKINFO, nlString(IFLA_INFO_KIND, 'veth'), nlNested(IFLA_INFO_DATA, nlNested(VETH_INFO_PEER, peerInfo)));
  const body = Buffer.concat([ifinfomsg(main.index ?? 0), ...endAttrs(main), info]);
  r.request(RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, what, () => undefined);
}

function ifaddrmsg(family: number, prefixlen: number, flags: number, scope: number, index: number): Buffer {
  const b = Buffer.alloc(IFADDRMSG_LEN);
  b.writeUInt8(family, 0);
  b.writeUInt8(prefixlen, 1);
  b.writeUInt8(flags & 0xff, 2);
  b.writeUInt8(scope, 3);
  b.writeUInt32LE(index, 4);
  return b;
}

interface RawAddr {
  json: AddrJson;
  family: number;
  local: Buffer;
  peer: Buffer;
}

function dumpAddrs(r: Rtnl, ifindex: number): RawAddr[] {
  const out: RawAddr[] = [];
  r.request(RTM_GETADDR, NLM_F_DUMP, ifaddrmsg(0, 0, 0, 0, 0), 'an RTM_GETADDR dump', (buf, type, off, end) => {
    if (type !== RTM_NEWADDR || end - off < IFADDRMSG_LEN || buf.readUInt32LE(off + 4) !== ifindex) return;
    const family = buf[off]!;
    if (family !== AF_INET && family !== AF_INET6) return;
    let flags = buf[off + 2]!;
    let local: Buffer | undefined;
    let address: Buffer | undefined;
    const j: Partial<AddrJson> = { family: family === AF_INET ? 'inet' : 'inet6', prefixlen: buf[off + 1]! };
    const scope = buf[off + 3]!;
    for (const [t, v] of nlAttrs(buf, off + IFADDRMSG_LEN, end)) {
      if (t === IFA_LOCAL) local = Buffer.from(v);
      else if (t === IFA_ADDRESS) address = Buffer.from(v);
      else if (t === IFA_BROADCAST) j.broadcast = ipString(v);
      else if (t === IFA_LABEL) j.label = nlCString(v);
      else if (t === IFA_FLAGS && v.length >= 4) flags = v.readUInt32LE(0);
      else if (t === IFA_CACHEINFO && v.length >= 8) [j.preferred_life_time, j.valid_life_time] = [v.readUInt32LE(0), v.readUInt32LE(4)];
    }
    local ??= address;
    address ??= local;
    if (!local || !address) return;
    const json: AddrJson = { family: j.family!, local: ipString(local), prefixlen: j.prefixlen! };
    if (!address.equals(local)) json.address = ipString(address);
    if (j.broadcast) json.broadcast = j.broadcast;
    json.scope = SCOPES[scope] ?? String(scope);
    if (flags & IFA_F_SECONDARY) json[family === AF_INET6 ? 'temporary' : 'secondary'] = true;
    for (const [bit, key] of IFA_FLAG_KEYS) if (flags & bit) (json as unknown as Record<string, boolean>)[key] = true;
    if (!(flags & IFA_F_PERMANENT)) json.dynamic = true;
    if (j.label) json.label = j.label;
    json.valid_life_time = j.valid_life_time ?? FOREVER;
    json.preferred_life_time = j.preferred_life_time ?? FOREVER;
    out.push({ json, family, local, peer: address });
  });
  return out;
}

/** The addresses of link `ifindex`, as `ip -j addr show dev` lists them (addr_info, newest IPv6 first). */
export function listAddrs(r: Rtnl, ifindex: number): AddrJson[] {
  return dumpAddrs(r, ifindex).map((a) => a.json);
}

/** Removes every address of link `ifindex` (as `ip addr flush dev`). */
export function flushAddrs(r: Rtnl, ifindex: number, what: string): void {
  // Deleting a primary IPv4 address takes its secondaries with it: look again until none is left.
  for (let round = 0; round < 8; round++) {
    const all = dumpAddrs(r, ifindex);
    if (!all.length) return;
    for (const a of all) {
      const body = Buffer.concat([ifaddrmsg(a.family, a.json.prefixlen, 0, 0, ifindex), nlAttr(IFA_LOCAL, a.local), nlAttr(IFA_ADDRESS, a.peer)]);
      try {
        r.request(RTM_DELADDR, NLM_F_ACK, body, what, () => undefined);
      } catch (e) {
        if (!(e instanceof KernelError && e.errno === EADDRNOTAVAIL)) throw e;
      }
    }
  }
  throw new KernelError(`${what}: addresses keep coming back`, 16 /* EBUSY */);
}

const SCOPE_NUMBERS: Record<string, number> = { global: 0, universe: 0, site: 200, link: 253, host: 254, nowhere: 255 };
const ADD_FLAGS: Array<[keyof AddrJson, number]> = [['noprefixroute', 0x200], ['home', 0x10], ['mngtmpaddr', 0x100], ['autojoin', 0x400]];

/**
 * Adds one address to link `ifindex` as addrArgs' `ip addr add` does: its
 * peer, broadcast, scope, label, finite lifetimes, flags; IPv6 ones nodad.
 */
export function addAddr(r: Rtnl, ifindex: number, x: AddrJson, what: string): void {
  const family = x.family === 'inet6' ? AF_INET6 : AF_INET;
  const scope = x.scope === undefined ? 0 : SCOPE_NUMBERS[x.scope] ?? Number(x.scope);
  if (!Number.isInteger(scope) || scope < 0 || scope > 255) throw new Error(`unknown address scope ${x.scope}`);
  let flags = ADD_FLAGS.reduce((f, [k, bit]) => (x[k] ? f | bit : f), 0);
  if (family === AF_INET6) flags |= 0x02; // nodad: it was unique already
  const local = ipBytes(family, x.local);
  const a = [nlAttr(IFA_LOCAL, local), nlAttr(IFA_ADDRESS, x.address && x.address !== x.local ? ipBytes(family, x.address) : local)];
  if (family === AF_INET && x.broadcast) a.push(nlAttr(IFA_BROADCAST, ipBytes(AF_INET, x.broadcast)));
  if (family === AF_INET && x.label) a.push(nlString(IFA_LABEL, x.label));
  if (x.valid_life_time !== undefined && x.valid_life_time !== FOREVER) {
    const ci = Buffer.alloc(16);
    ci.writeUInt32LE((x.preferred_life_time ?? x.valid_life_time) >>> 0, 0);
    ci.writeUInt32LE(x.valid_life_time >>> 0, 4);
    a.push(nlAttr(IFA_CACHEINFO, ci));
  }
  a.push(nlU32(IFA_FLAGS, flags));
  const body = Buffer.concat([ifaddrmsg(family, x.prefixlen, flags, scope, ifindex), ...a]);
  r.request(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, what, () => undefined);
}

export { ipBytes as ipAddressBytes, ipString as ipAddressString };
