/**
 * The intercept marker: what intercept writes into the kernel itself, as its
 * first step, so that a half-done intercept can be found and undone even
 * when its journal record (src/intercept/journal.ts) is truncated, garbage or gone.
 *
 * It is the ifalias of the container's original port (at most 255 bytes; an
 * alias stays with a device when it moves to another netns, so it is on the
 * port wherever a kill leaves it: in the container as <port> or
 * vex<tag>-<port>, or in the enforcer netns as vex<tag>-<port>):
 *
 *   neuv-bpf:1 <key> <container netns inode> <tag> <port> <ifindex> <mac> <up 0|1> <addrgenmode>
 *              <addresses, comma-separated, or -> <default gateways, comma-separated, or ->
 *
 * key names the pin root and the enforcer netns (8 hex digits of a SHA-256),
 * so a repair acts only on its own. The addresses (non-temporary, with their
 * prefix length) and the default routes' gateways are what the container
 * needs to be reachable again; routes other than the default ones and the
 * neighbour entries are only in the journal record (the kernel re-learns the
 * neighbours). If it all does not fit, gateways then addresses are left out
 * from the end and the marker says `partial`. The port's own alias (if it had
 * one) is in the record only. Release and recovery give the port its
 * original alias back (none, usually), which removes the marker.
 */
import { createHash } from 'node:crypto';
import type { AddrJson, PortSnapshot } from './snapshot';

const MAGIC = 'neuv-bpf:1';
/** IFALIASZ is 256 bytes with the NUL. */
const MAX = 255;

export interface Marker {
  key: string;
  ctrIno: number;
  tag: string;
  port: string;
  ifindex: number;
  mac: string;
  up: boolean;
  addrGenMode: string;
  /** "local/prefixlen", with a "+" for an IPv4 address that had a broadcast address (the usual one is given back). */
  addrs: string[];
  /** Default route gateways ("4:10.0.0.1", "6:fd00::1"). */
  gateways: string[];
  partial: boolean;
}

/** The key of a pin root and an enforcer netns (its inode). */
export function markerKey(pinRoot: string, enforcerIno: number): string {
  return createHash('sha256').update(`${pinRoot}\0${enforcerIno}`).digest('hex').slice(0, 8);
}

/** The marker of a container port about to be intercepted. */
export function markerOf(key: string, ctrIno: number, tag: string, snap: PortSnapshot): Marker {
  const gateways: string[] = [];
  for (const r of snap.routes) {
    if (r.route.dst === 'default' && r.route.gateway && !r.route.nexthops && (!r.route.table || r.route.table === 'main')) gateways.push(`${r.family}:${r.route.gateway}`);
  }
  return {
    key, ctrIno, tag, port: snap.name, ifindex: snap.ifindex, mac: snap.mac, up: snap.up, addrGenMode: snap.addrGenMode ?? 'eui64',
    addrs: snap.addrs.map((a) => `${a.local}/${a.prefixlen}${a.family === 'inet' && a.broadcast ? '+' : ''}`), gateways, partial: false,
  };
}

export function encodeMarker(m: Marker): string {
  const addrs = [...m.addrs];
  const gws = [...m.gateways];
  let partial = m.partial;
  for (;;) {
    const s = [MAGIC, m.key, m.ctrIno, m.tag, m.port, m.ifindex, m.mac, m.up ? 1 : 0, m.addrGenMode, addrs.join(',') || '-', gws.join(',') || '-', partial ? 'partial' : 'complete'].join(' ');
    if (Buffer.byteLength(s) <= MAX) return s;
    partial = true;
    if (gws.length) gws.pop();
    else if (addrs.length) addrs.pop();
    else return s.slice(0, MAX); // cannot happen: names are at most 15 bytes
  }
}

/** The marker in an alias, if it is one of ours with this key (any key when key is undefined). */
export function decodeMarker(alias: string | undefined, key?: string): Marker | undefined {
  if (!alias?.startsWith(`${MAGIC} `)) return undefined;
  const f = alias.split(' ');
  if (f.length !== 12) return undefined;
  const [, k, ino, tag, port, ifindex, mac, up, agm, addrs, gws, partial] = f as [string, string, string, string, string, string, string, string, string, string, string, string];
  if (key !== undefined && k !== key) return undefined;
  if (!/^\d+$/.test(ino) || !/^\d+$/.test(ifindex) || !/^[0-9a-f]{1,8}$|^n[0-9a-f]{1,6}$/.test(tag) || !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(mac)) return undefined;
  const list = (s: string) => (s === '-' ? [] : s.split(','));
  return {
    key: k, ctrIno: Number(ino), tag, port, ifindex: Number(ifindex), mac, up: up === '1', addrGenMode: agm,
    addrs: list(addrs), gateways: list(gws), partial: partial === 'partial',
  };
}

function v4Broadcast(local: string, prefixlen: number): string | undefined {
  if (prefixlen >= 31) return undefined;
  const n = local.split('.').reduce((a, o) => (a << 8) | Number(o), 0) >>> 0;
  const b = (n | (0xffffffff >>> prefixlen)) >>> 0;
  return [24, 16, 8, 0].map((s) => (b >>> s) & 0xff).join('.');
}

/** A snapshot to give the port back from (what the marker holds; mtu and queues are the port's own, unchanged). */
export function markerSnapshot(m: Marker, mtu: number): PortSnapshot {
  const addrs: AddrJson[] = m.addrs.map((a) => {
    const [local, plen] = a.split('/') as [string, string];
    const v6 = local.includes(':');
    const prefixlen = parseInt(plen, 10);
    const bc = !v6 && plen.endsWith('+') ? v4Broadcast(local, prefixlen) : undefined;
    return { family: v6 ? 'inet6' : 'inet', local, prefixlen, ...(bc ? { broadcast: bc } : {}), scope: v6 && /^fe80:/i.test(local) ? 'link' : 'global' };
  });
  const routes = m.gateways.map((g) => {
    const fam = g.startsWith('6:') ? 6 : 4;
    return { family: fam as 4 | 6, route: { dst: 'default', gateway: g.slice(2) } };
  });
  return {
    name: m.port, ifindex: m.ifindex, kind: 'veth', mac: m.mac, mtu, txqlen: undefined, alias: undefined, up: m.up, addrGenMode: m.addrGenMode,
    numTxQueues: undefined, numRxQueues: undefined, peerIfindex: undefined, addrs, routes, neighbours: [],
  };
}
