/** RingBuffer: libbpf's ring_buffer, drained from Node's event loop. */
import koffi from 'koffi';
import { KernelError, NeuvError } from '../errors';
import { Ptr, errno, lib } from './lib';

// ---------------------------------------------------------------- ring buffers

// int ring_buffer_sample_fn(void *ctx, void *data, size_t size)
const SampleFn = koffi.proto('int neuv_ringbuf_sample_fn(void *ctx, void *data, size_t size)');

/** Returned by our sample callback to stop a consume early (the record it saw is kept). */
const BATCH_FULL = -1024;

/**
 * A BPF ring buffer reader (libbpf ring_buffer). Records are copied out of
 * the mapped ring into Buffers. `watch` reads from the Node event loop: the
 * libbpf epoll fd is watched with a libuv poll handle, so nothing blocks; a
 * burst is drained in batches of `batch` records with a turn of the event
 * loop in between. The map fd must stay open until close().
 */
export class RingBuffer {
  private rb: Ptr;
  private cb: Ptr;
  private pending: Buffer[] = [];
  private limit = Infinity;
  private poll: ReturnType<typeof koffi.node.poll> | undefined;
  private drainScheduled: NodeJS.Immediate | undefined;

  private constructor(rb: Ptr, cb: Ptr) {
    this.rb = rb;
    this.cb = cb;
  }

  static open(mapFd: number, what = 'ring buffer'): RingBuffer {
    const l = lib();
    let self: RingBuffer | undefined;
    const cb = koffi.register((_ctx: Ptr, data: Ptr, size: number | bigint): number => {
      // Never throw across the FFI boundary: libbpf would not unwind it.
      try {
        const n = Number(size);
        self!.pending.push(Buffer.from(koffi.view(data, n)));
        return self!.pending.length >= self!.limit ? BATCH_FULL : 0;
      } catch {
        return BATCH_FULL;
      }
    }, koffi.pointer(SampleFn)) as Ptr;
    const rb = l.ring_buffer__new(mapFd, cb, null, null);
    if (!rb) {
      const e = errno();
      koffi.unregister(cb);
      throw new KernelError(`open ${what}`, e);
    }
    self = new RingBuffer(rb, cb);
    return self;
  }

  /** The epoll fd that becomes readable when records are waiting. */
  get epollFd(): number {
    return lib().ring_buffer__epoll_fd(this.rb);
  }

  /** Copies out up to `max` waiting records (all of them by default) without blocking. */
  consume(max = Infinity): Buffer[] {
    if (!this.rb) return [];
    this.pending = [];
    this.limit = max;
    const r = lib().ring_buffer__consume(this.rb);
    const out = this.pending;
    this.pending = [];
    if (r < 0 && r !== BATCH_FULL && out.length < max) throw new KernelError('read ring buffer', -r);
    return out;
  }

  /**
   * Calls onRecords with each batch of records as they arrive, from the
   * event loop. `ref: false` lets the process exit while watching.
   */
  watch(onRecords: (records: Buffer[]) => void, opts: { batch?: number; ref?: boolean; onError?: (e: unknown) => void } = {}): void {
    if (this.poll) throw new NeuvError('ring buffer is already watched');
    const batch = opts.batch ?? 4096;
    const drain = (): void => {
      this.drainScheduled = undefined;
      if (!this.rb) return;
      try {
        const recs = this.consume(batch);
        if (recs.length) onRecords(recs);
        // A full batch: there may be more; read on after other events had their turn.
        if (recs.length >= batch && this.rb) this.drainScheduled = setImmediate(drain);
      } catch (e) {
        if (opts.onError) opts.onError(e);
        else throw e;
      }
    };
    this.poll = koffi.node.poll(this.epollFd, { readable: true }, () => {
      if (!this.drainScheduled) drain();
    });
    if (opts.ref === false) this.poll.unref();
    drain(); // whatever was there before the watch started
  }

  /** Stops watching (records stay in the ring until consumed). */
  unwatch(): void {
    if (this.drainScheduled) clearImmediate(this.drainScheduled);
    this.drainScheduled = undefined;
    if (this.poll) {
      this.poll.close();
      this.poll = undefined;
    }
  }

  close(): void {
    this.unwatch();
    if (this.rb) {
      lib().ring_buffer__free(this.rb);
      this.rb = 0n;
    }
    if (this.cb) {
      koffi.unregister(this.cb);
      this.cb = 0n;
    }
  }
}

