/**
 * tcpsum: a TCP transfer with a SHA-256 of every byte, for integrity tests
 * across an intercepted pair. Run inside a netns with
 * `ip netns exec NS node dist/test/tools/tcpsum.js ...`.
 *
 *   recv --port P [--bind ADDR] [--timeout-ms 300000]
 *        prints {"ready":true,"port":P} once listening, accepts one
 *        connection, hashes what arrives and, when the sender closes, prints
 *        {bytes, sha256, seconds} and exits 0.
 *   send --to ADDR --port P (--bytes N | --until-stopped) [--rate BYTES_PER_S]
 *        [--seed S] [--chunk BYTES]
 *        sends a deterministic pseudo-random stream (AES-128-CTR of zeros
 *        keyed by --seed, so it never repeats), paced to --rate (default: as
 *        fast as the socket takes it), stopping after N bytes or at SIGTERM;
 *        then closes its side and prints {bytes, sha256, seconds} once the
 *        kernel has every byte.
 *
 * The two hashes and byte counts must be equal. TCP repairs loss, duplication
 * and reordering itself: the frames it had to repair show in the netns's TCP
 * counters (test/traffic.ts reads them around a transfer).
 */
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { args, num, print } from './args';

function recv(o: Record<string, string>): void {
  const port = num(o, 'port');
  const timeoutMs = num(o, 'timeout-ms', 300000);
  let served = false;
  const server = net.createServer((sock) => {
    if (served) {
      sock.destroy();
      return;
    }
    served = true;
    server.close();
    const h = crypto.createHash('sha256');
    let bytes = 0;
    let t0 = 0;
    sock.on('data', (d: Buffer) => {
      if (!t0) t0 = Date.now();
      bytes += d.length;
      h.update(d);
    });
    sock.on('end', () => {
      print({ bytes, sha256: h.digest('hex'), seconds: t0 ? (Date.now() - t0) / 1000 : 0 });
      sock.end();
      process.exit(0);
    });
    sock.on('error', (e) => {
      process.stderr.write(`tcpsum recv: ${e.message}\n`);
      process.exit(1);
    });
  });
  server.on('error', (e) => {
    process.stderr.write(`tcpsum recv: ${e.message}\n`);
    process.exit(1);
  });
  setTimeout(() => {
    process.stderr.write(`tcpsum recv: no complete transfer within ${timeoutMs} ms\n`);
    process.exit(1);
  }, timeoutMs).unref();
  server.listen({ port, host: o.bind }, () => print({ ready: true, port }));
}

function send(o: Record<string, string>): void {
  const to = o.to;
  if (!to) throw new Error('--to is required');
  const port = num(o, 'port');
  const untilStopped = o['until-stopped'] === 'true';
  const total = untilStopped ? Infinity : num(o, 'bytes');
  const rate = num(o, 'rate', 0);
  const chunk = Math.max(1, num(o, 'chunk', 16384));
  const key = crypto.createHash('sha256').update(`tcpsum ${o.seed ?? '1'}`).digest().subarray(0, 16);
  const gen = crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(chunk);
  const h = crypto.createHash('sha256');
  let sent = 0;
  let stop = false;
  let t0 = 0;
  let ended = false;
  const sock = net.connect({ host: to, port }, () => {
    sock.setNoDelay(false);
    t0 = Date.now();
    pump();
  });
  const finish = () => {
    if (ended) return;
    ended = true;
    sock.end(() => {
      print({ bytes: sent, sha256: h.digest('hex'), seconds: (Date.now() - t0) / 1000 });
    });
  };
  const pump = () => {
    for (;;) {
      if (stop || sent >= total) return finish();
      if (rate > 0) {
        const allowed = ((Date.now() - t0) / 1000) * rate;
        if (sent >= allowed) {
          setTimeout(pump, 1);
          return;
        }
      }
      const n = Math.min(chunk, total - sent);
      const b = gen.update(n === chunk ? zeros : zeros.subarray(0, n));
      h.update(b);
      sent += b.length;
      if (!sock.write(b)) {
        sock.once('drain', pump);
        return;
      }
    }
  };
  process.on('SIGTERM', () => {
    stop = true;
  });
  sock.on('close', () => process.exit(ended ? 0 : 1));
  sock.on('error', (e) => {
    process.stderr.write(`tcpsum send: ${e.message}\n`);
    process.exit(1);
  });
}

function main(): void {
  const [cmd, ...rest] = process.argv.slice(2);
  try {
    if (cmd === 'recv') recv(args(rest));
    else if (cmd === 'send') send(args(rest));
    else throw new Error('usage: tcpsum recv|send --port P ... (see the file comment)');
  } catch (e) {
    process.stderr.write(`tcpsum: ${(e as Error).message}\n`);
    process.exit(2);
  }
}

if (require.main === module) main();
