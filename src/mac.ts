/**
 * MAC addresses: the per-pair MACs of docs/datapath.md section 2 and a strict
 * text form (six two-digit hex octets separated by ':').
 */
import { UCMAC_PREFIX } from './layout';

function checkId(id: number): number {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff) {
    throw new RangeError(`port id ${id} is not an integer in 0..65535`);
  }
  return id;
}

/** UCMAC = 4e:65:75:56:<id hi>:<id lo> ("NeuV" + id): the unicast MAC the DP sees for a pair. */
export function ucmac(id: number): Buffer {
  checkId(id);
  return Buffer.from([...UCMAC_PREFIX, id >> 8, id & 0xff]);
}

/** BCMAC = ff:ff:ff:00:<id hi>:<id lo>: handed to the DP, not used by the datapath. */
export function bcmac(id: number): Buffer {
  checkId(id);
  return Buffer.from([0xff, 0xff, 0xff, 0x00, id >> 8, id & 0xff]);
}

/** True if the first four bytes of m are "NeuV". */
export function isUcmac(m: Uint8Array): boolean {
  return m.length >= 4 && UCMAC_PREFIX.every((b, i) => m[i] === b);
}

const HEX_OCTETS = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));

/** "aa:bb:cc:dd:ee:ff", lower case. */
export function formatMac(m: Uint8Array): string {
  if (m.length !== 6) throw new RangeError(`a MAC is 6 bytes, got ${m.length}`);
  const h = HEX_OCTETS;
  return `${h[m[0]!]}:${h[m[1]!]}:${h[m[2]!]}:${h[m[3]!]}:${h[m[4]!]}:${h[m[5]!]}`;
}

const MAC_RE = /^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$/;

/** Parses "aa:bb:cc:dd:ee:ff" (either case). Anything else throws an Error naming the input. */
export function parseMac(s: string): Buffer {
  if (typeof s !== 'string' || !MAC_RE.test(s)) {
    throw new Error(`malformed MAC ${JSON.stringify(String(s))}: expected six hex octets separated by ':' (e.g. 02:42:ac:11:00:02)`);
  }
  return Buffer.from(s.split(':').map((o) => parseInt(o, 16)));
}
