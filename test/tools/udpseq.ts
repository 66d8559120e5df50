/**
 * udpseq: a UDP stream with sequence numbers, for loss/duplication tests.
 * Run inside a netns with `ip netns exec NS node dist/test/tools/udpseq.js ...`.
 *
 *   recv --port P [--bind ADDR] [--run R] [--expect N] [--idle-ms 1000] [--timeout-ms 120000]
 *        prints {"ready":true,"port":P} once bound, then, when no datagram has
 *        come for --idle-ms after the first one (or all --expect arrived and
 *        --idle-ms passed, or --timeout-ms, or SIGTERM/SIGINT), one JSON line:
 *        {received, unique, lost, duplicated, reordered, first, last, bytes, seconds, maxGapMs}
 *   send --to ADDR --port P --count N --rate PPS [--size BYTES] [--from ADDR] [--run R]
 *        prints {"started":true} once it can be stopped (its SIGTERM handler
 *        is in place), sends N datagrams at PPS (paced every millisecond),
 *        then prints {"sent":N,"seconds":S}; SIGTERM stops it early (N = what
 *        was sent)
 *
 * Payload: u32 magic "USEQ", u32 run id, u32 sequence (big endian), zero
 * padding to --size. Datagrams of another run or without the magic are
 * ignored (counted as "foreign").
 */
import * as dgram from 'node:dgram';
import { args, num, print } from './args';

const MAGIC = 0x55534551; // "USEQ"
const HEADER = 12;

export interface RecvReport {
  received: number;
  unique: number;
  lost: number;
  duplicated: number;
  reordered: number;
  foreign: number;
  first: number | null;
  last: number | null;
  bytes: number;
  seconds: number;
  /** The longest time between two datagrams, in ms: how long the stream was interrupted at worst. */
  maxGapMs: number;
}

function recv(o: Record<string, string>): void {
  const port = num(o, 'port');
  const run = num(o, 'run', 0) >>> 0;
  const expect = o.expect !== undefined ? num(o, 'expect') : undefined;
  const idleMs = num(o, 'idle-ms', 1000);
  const timeoutMs = num(o, 'timeout-ms', 120000);
  const sock = dgram.createSocket({ type: o.bind?.includes(':') ? 'udp6' : 'udp4' });
  let seen = new Uint8Array(1 << 16);
  let received = 0;
  let unique = 0;
  let duplicated = 0;
  let reordered = 0;
  let foreign = 0;
  let bytes = 0;
  let max = -1;
  let first: number | null = null;
  let t0 = 0;
  let tLast = 0;
  let maxGap = 0;
  let done = false;
  let idle: NodeJS.Timeout | undefined;

  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(idle);
    clearTimeout(overall);
    const n = expect ?? max + 1;
    const report: RecvReport = {
      received,
      unique,
      lost: Math.max(0, n - unique),
      duplicated,
      reordered,
      foreign,
      first,
      last: max >= 0 ? max : null,
      bytes,
      seconds: t0 ? (tLast - t0) / 1000 : 0,
      maxGapMs: maxGap,
    };
    print(report);
    sock.close();
  };
  const armIdle = () => {
    clearTimeout(idle);
    idle = setTimeout(finish, idleMs);
  };
  const overall = setTimeout(finish, timeoutMs);

  sock.on('message', (msg) => {
    if (msg.length < HEADER || msg.readUInt32BE(0) !== MAGIC || msg.readUInt32BE(4) !== run) {
      foreign++;
      return;
    }
    const seq = msg.readUInt32BE(8);
    const now = Date.now();
    if (!t0) t0 = now;
    if (tLast && now - tLast > maxGap) maxGap = now - tLast;
    tLast = now;
    received++;
    bytes += msg.length;
    if (first === null) first = seq;
    while (seq >= seen.length * 8) {
      const bigger = new Uint8Array(seen.length * 2);
      bigger.set(seen);
      seen = bigger;
    }
    const bit = 1 << (seq & 7);
    if (seen[seq >> 3]! & bit) {
      duplicated++;
    } else {
      seen[seq >> 3]! |= bit;
      unique++;
      if (seq < max) reordered++;
      if (seq > max) max = seq;
    }
    armIdle();
  });
  sock.on('error', (e) => {
    process.stderr.write(`udpseq recv: ${e.message}\n`);
    process.exit(1);
  });
  process.on('SIGTERM', finish);
  process.on('SIGINT', finish);
  sock.bind({ port, address: o.bind }, () => {
    try {
      sock.setRecvBufferSize(4 << 20);
    } catch {
      /* capped by net.core.rmem_max: fine */
    }
    print({ ready: true, port });
  });
}

function send(o: Record<string, string>): void {
  const to = o.to;
  if (!to) throw new Error('--to is required');
  const port = num(o, 'port');
  let count = num(o, 'count');
  const rate = num(o, 'rate');
  const size = Math.max(HEADER, num(o, 'size', 64));
  const run = num(o, 'run', 0) >>> 0;
  const sock = dgram.createSocket({ type: to.includes(':') ? 'udp6' : 'udp4' });
  let sent = 0;
  let acked = 0;
  let t0 = 0;
  const maxInFlight = 256;

  const tick = () => {
    const due = Math.min(count, Math.floor(((Date.now() - t0) / 1000) * rate) + 1);
    while (sent < due && sent - acked < maxInFlight) {
      const b = Buffer.alloc(size);
      b.writeUInt32BE(MAGIC, 0);
      b.writeUInt32BE(run, 4);
      b.writeUInt32BE(sent, 8);
      sent++;
      sock.send(b, port, to, (err) => {
        if (err) {
          process.stderr.write(`udpseq send: ${err.message}\n`);
          process.exit(1);
        }
        acked++;
        if (acked === count) {
          print({ sent: count, seconds: (Date.now() - t0) / 1000 });
          sock.close();
        }
      });
    }
    if (sent < count) setTimeout(tick, 1);
  };
  sock.on('error', (e) => {
    process.stderr.write(`udpseq send: ${e.message}\n`);
    process.exit(1);
  });
  // SIGTERM ends the stream early: what was sent so far is the count.
  process.on('SIGTERM', () => {
    if (sent >= count) return;
    count = sent;
    if (acked === count) {
      print({ sent: count, seconds: (Date.now() - t0) / 1000 });
      sock.close();
    }
  });
  const start = () => {
    t0 = Date.now();
    print({ started: true });
    tick();
  };
  if (o.from) sock.bind({ address: o.from, port: 0 }, start);
  else start();
}

function main(): void {
  const [cmd, ...rest] = process.argv.slice(2);
  try {
    if (cmd === 'recv') recv(args(rest));
    else if (cmd === 'send') send(args(rest));
    else throw new Error('usage: udpseq recv|send --port P ... (see the file comment)');
  } catch (e) {
    process.stderr.write(`udpseq: ${(e as Error).message}\n`);
    process.exit(2);
  }
}

if (require.main === module) main();
