/**
 * Frame builders and a reference two-pair topology shared by the model test
 * and the kernel datapath test, so both check the same frames (and by the
 * benchmarks that run the programs on them).
 */
import { Mode, Role } from '../src/layout';
import { parseMac } from '../src/mac';
import type { MapState, PortEntry } from './prog-fixture';

export const M = parseMac('02:42:ac:11:00:02'); // the workload of pair 1
export const GW = parseMac('02:42:ac:11:00:01'); // its gateway / a peer on the network
export const OTHER = parseMac('02:42:ac:11:00:99');
export const BCAST = parseMac('ff:ff:ff:ff:ff:ff');
export const MCAST = parseMac('01:00:5e:00:00:fb');
export const M2 = parseMac('02:42:ac:11:00:03'); // the workload of pair 2
export const ID = 0x1234;
export const ID2 = 0x0777;

/** A frame: DA, SA, EtherType, then `payload` bytes 0, 1, 2, ... */
export function frame(da: Uint8Array, sa: Uint8Array, etherType: number, payload = 46): Buffer {
  const b = Buffer.alloc(14 + payload);
  b.set(da, 0);
  b.set(sa, 6);
  b.writeUInt16BE(etherType, 12);
  for (let i = 0; i < payload; i++) b[14 + i] = i & 0xff;
  return b;
}
export const ipv4 = (da: Uint8Array, sa: Uint8Array): Buffer => frame(da, sa, 0x0800);
export const ipv6 = (da: Uint8Array, sa: Uint8Array): Buffer => frame(da, sa, 0x86dd, 60);
export const arp = (da: Uint8Array, sa: Uint8Array): Buffer => frame(da, sa, 0x0806, 28);
/** 802.1Q-tagged IPv4: EtherType 0x8100 at offset 12, the inner type further on. */
export function vlan(da: Uint8Array, sa: Uint8Array): Buffer {
  const b = frame(da, sa, 0x8100, 50);
  b.writeUInt16BE(0x0064, 14);
  b.writeUInt16BE(0x0800, 16);
  return b;
}

/** A copy of f with the 6 bytes at off (0 = DA, 6 = SA) replaced. */
export function withMac(f: Uint8Array, off: number, mac: Uint8Array): Buffer {
  const b = Buffer.from(f);
  b.set(mac, off);
  return b;
}

export interface Topology {
  vin: number;
  vex: number;
  vin2: number;
  vex2: number;
  dp: number;
}

/**
 * Two pairs: (vin, vex) for M with id ID in `mode`, (vin2, vex2) for M2 with
 * id ID2 in `mode2` (FWD by default). Both pairs get `flags`.
 */
export function twoPairs(
  t: Topology,
  mode: number,
  opts: { flags?: number; cloneOk?: boolean; mode2?: number; dp?: number } = {},
): MapState & { cloneOk?: boolean } {
  const flags = opts.flags ?? 0;
  const port = (ifindex: number, peer: number, role: 1 | 2, id: number, mac: Uint8Array, m: number): PortEntry => ({
    ifindex,
    peerIfindex: peer,
    flags,
    id,
    role,
    mode: m,
    mac,
  });
  const mode2 = opts.mode2 ?? Mode.FWD;
  const ports = new Map<number, PortEntry>([
    [t.vin, port(t.vin, t.vex, Role.VIN, ID, M, mode)],
    [t.vex, port(t.vex, t.vin, Role.VEX, ID, M, mode)],
    [t.vin2, port(t.vin2, t.vex2, Role.VIN, ID2, M2, mode2)],
    [t.vex2, port(t.vex2, t.vin2, Role.VEX, ID2, M2, mode2)],
  ]);
  const ids = new Map([
    [ID, { vinIfindex: t.vin, vexIfindex: t.vex }],
    [ID2, { vinIfindex: t.vin2, vexIfindex: t.vex2 }],
  ]);
  return { ports, ids, dpIfindex: opts.dp ?? t.dp, cloneOk: opts.cloneOk };
}

/** Frames (Buffer or Uint8Array) as hex, recursively, so comparisons ignore the byte container. */
export function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
  if (typeof v === 'bigint') return v.toString();
  if (Array.isArray(v)) return v.map(norm);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([, x]) => x !== undefined)
        .map(([k, x]) => [k, norm(x)]),
    );
  }
  return v;
}

// ---------------------------------------------------------------- IPv4 with L4 headers (flow offload)

export const TCP = 6;
export const UDP = 17;
export const ICMP = 1;
export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_ACK = 0x10;

export interface Ip4Opts {
  proto: number;
  src: string;
  dst: string;
  sport?: number;
  dport?: number;
  /** TCP flags byte (default ACK). */
  tcpFlags?: number;
  /** IHL in 32-bit words (default 5; more adds zeroed options). */
  ihl?: number;
  /** The 16-bit flags + fragment offset field (default 0; 0x2000 = MF, 0x0001.. = an offset). */
  fragField?: number;
  /** IP version nibble (default 4). */
  version?: number;
  /** Bytes after the L4 header (default 16). */
  payload?: number;
  /** Cut the frame to this many bytes (for truncated headers). */
  truncate?: number;
}

/** An Ethernet + IPv4 (+ TCP 20 / UDP 8 bytes, or nothing for other protocols) frame. */
export function ip4(da: Uint8Array, sa: Uint8Array, o: Ip4Opts): Buffer {
  const ihl = o.ihl ?? 5;
  const l4len = o.proto === TCP ? 20 : o.proto === UDP ? 8 : 8;
  const payload = o.payload ?? 16;
  const b = Buffer.alloc(14 + ihl * 4 + l4len + payload);
  b.set(da, 0);
  b.set(sa, 6);
  b.writeUInt16BE(0x0800, 12);
  const ip = 14;
  b[ip] = ((o.version ?? 4) << 4) | (ihl & 0x0f);
  b.writeUInt16BE(b.length - 14, ip + 2);
  b.writeUInt16BE(0x1234, ip + 4);
  b.writeUInt16BE(o.fragField ?? 0, ip + 6);
  b[ip + 8] = 64;
  b[ip + 9] = o.proto;
  o.src.split('.').forEach((x, i) => (b[ip + 12 + i] = Number(x)));
  o.dst.split('.').forEach((x, i) => (b[ip + 16 + i] = Number(x)));
  const l4 = ip + ihl * 4;
  if (o.proto === TCP || o.proto === UDP) {
    b.writeUInt16BE(o.sport ?? 0, l4);
    b.writeUInt16BE(o.dport ?? 0, l4 + 2);
  }
  if (o.proto === TCP) {
    b[l4 + 12] = 5 << 4;
    b[l4 + 13] = o.tcpFlags ?? TCP_ACK;
  }
  for (let i = l4 + l4len; i < b.length; i++) b[i] = i & 0xff;
  return o.truncate !== undefined ? b.subarray(0, o.truncate) : b;
}
