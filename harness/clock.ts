/**
 * The datapath's clock as the kernel reads it: bpf_ktime_get_coarse_ns() is
 * CLOCK_MONOTONIC_COARSE (CLOCK_MONOTONIC at the last timekeeping update),
 * the value clock_gettime(CLOCK_MONOTONIC_COARSE) returns. It never goes
 * back, so a reading taken before a frame is a lower bound of what the
 * program reads for that frame, however late the ticks come (a loaded VM
 * can be tens of ms behind CLOCK_MONOTONIC, far more than 1/HZ).
 */
import koffi from 'koffi';

const CLOCK_MONOTONIC_COARSE = 6;

let gettime: ((clk: number, ts: Buffer) => number) | undefined;

/** CLOCK_MONOTONIC_COARSE in ns, the clock of bpf_ktime_get_coarse_ns(). */
export function coarseNs(): bigint {
  gettime ??= koffi.load('libc.so.6').func('int clock_gettime(int clk, _Out_ void *ts)') as never;
  const ts = Buffer.alloc(16);
  if (gettime!(CLOCK_MONOTONIC_COARSE, ts) !== 0) throw new Error('clock_gettime(CLOCK_MONOTONIC_COARSE) failed');
  return ts.readBigInt64LE(0) * 1_000_000_000n + ts.readBigInt64LE(8);
}
