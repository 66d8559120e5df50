/**
 * Programs: ProgFd (by pin or id), their info, pinning any fd, and
 * BPF_PROG_TEST_RUN.
 */
import koffi from 'koffi';
import { KernelError } from '../errors';
import { Ptr, check, closeFd, cstr, lib, objInfo, TestRunOpts } from './lib';

export interface ProgInfo {
  type: number;
  id: number;
  tag: string;
  name: string;
  verifiedInsns: number;
  xlatedLen: number;
}

export function progInfo(fd: number): ProgInfo {
  // struct bpf_prog_info: type@0 id@4 tag[8]@8 jited_len@16 xlated_len@20 ...
  // name[16]@64 ... verified_insns@216 (kernel >= 5.16; 0 before).
  const b = objInfo(fd, 232, 'program');
  return {
    type: b.readUInt32LE(0),
    id: b.readUInt32LE(4),
    tag: b.subarray(8, 16).toString('hex'),
    xlatedLen: b.readUInt32LE(20),
    name: cstr(b, 64, 16),
    verifiedInsns: b.readUInt32LE(216),
  };
}

// ---------------------------------------------------------------- programs

export class ProgFd {
  readonly fd: number;
  private owned: boolean;
  constructor(fd: number, owned: boolean) {
    this.fd = fd;
    this.owned = owned;
  }
  static fromPin(path: string): ProgFd {
    const fd = lib().bpf_obj_get(path);
    if (fd < 0) throw new KernelError(`open pinned program ${path}`, -fd);
    return new ProgFd(fd, true);
  }
  static fromId(id: number): ProgFd {
    const fd = lib().bpf_prog_get_fd_by_id(id);
    if (fd < 0) throw new KernelError(`open program id ${id}`, -fd);
    return new ProgFd(fd, true);
  }
  info(): ProgInfo {
    return progInfo(this.fd);
  }
  pin(path: string): void {
    check(lib().bpf_obj_pin(this.fd, path), `pin program at ${path}`);
  }
  close(): void {
    if (this.owned) {
      closeFd(this.fd);
      this.owned = false;
    }
  }
}

/** Pins any bpf fd (map, program, link) at path. */
export function pinFd(fd: number, path: string): void {
  check(lib().bpf_obj_pin(fd, path), `pin at ${path}`);
}

// ---------------------------------------------------------------- test run

export interface TestRunOptions {
  repeat?: number;
  /** Bytes of a struct __sk_buff to pass as ctx_in (e.g. to set ifindex). */
  ctxIn?: Buffer;
  /** Capacity for data_out; default the input length + 256. */
  dataOutSize?: number;
}
export interface TestRunResult {
  retval: number;
  dataOut: Buffer;
  /** Mean nanoseconds per run. */
  duration: number;
}

let runOut: { ptr: Ptr; size: number } | undefined;

/** BPF_PROG_TEST_RUN: runs a program on a frame; a redirect forwards nothing. */
export function testRun(progFd: number, data: Buffer, opts: TestRunOptions = {}): TestRunResult {
  const l = lib();
  const outSize = opts.dataOutSize ?? data.length + 256;
  if (!runOut || runOut.size < outSize) {
    if (runOut) koffi.free(runOut.ptr);
    runOut = { ptr: koffi.alloc('uint8_t', outSize) as Ptr, size: outSize };
  }
  const o = {
    sz: koffi.sizeof(TestRunOpts),
    data_in: koffi.address(data),
    data_out: runOut.ptr,
    data_size_in: data.length,
    data_size_out: outSize,
    ctx_in: opts.ctxIn ? koffi.address(opts.ctxIn) : null,
    ctx_out: null,
    ctx_size_in: opts.ctxIn ? opts.ctxIn.length : 0,
    ctx_size_out: 0,
    retval: 0,
    repeat: opts.repeat ?? 1,
    duration: 0,
    flags: 0,
    cpu: 0,
    batch_size: 0,
  };
  check(l.bpf_prog_test_run_opts(progFd, o), 'BPF_PROG_TEST_RUN');
  const n = Math.min(o.data_size_out, outSize);
  // retval as the int the program returned (TC_ACT_UNSPEC is -1), not the u32 the kernel stores.
  return { retval: o.retval | 0, dataOut: Buffer.from(koffi.view(runOut.ptr, n)), duration: o.duration };
}

