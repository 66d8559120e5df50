/**
 * BpfObject: open an object file, set .rodata and map sizes, load it,
 * pin its programs and maps.
 */
import * as fs from 'node:fs';
import koffi from 'koffi';
import { KernelError, NeuvError, ExitCode } from '../errors';
import { log } from '../log';
import { Ptr, check, errno, lib, captureDuring, flushDeferred, dropDeferred, OpenOpts } from './lib';
import { MapFd } from './map';
import { BtfEnum, BtfStruct, btfDatasecVars, btfEnum, btfStruct } from './btf';

// ---------------------------------------------------------------- objects

export interface OpenOptions {
  /** Maps with LIBBPF_PIN_BY_NAME are reused from / pinned under this directory. */
  pinRoot?: string;
  /** Values for `const volatile` globals (in .rodata), by name: 32-bit unsigned. */
  rodata?: Record<string, number>;
  /** Ask the verifier for its log on success too (log_level 1). */
  verifierLog?: boolean;
}

/** An opened, then loaded, BPF object. close() releases every fd it holds. */
export class BpfObject {
  private obj: Ptr;
  readonly path: string;
  private loaded = false;

  private constructor(obj: Ptr, path: string) {
    this.obj = obj;
    this.path = path;
  }

  /** Opens (parses) an object file. Nothing reaches the kernel yet. */
  static open(path: string, opts: OpenOptions = {}): BpfObject {
    if (!fs.existsSync(path)) {
      throw new NeuvError(`BPF object ${path} not found (run make build)`, ExitCode.NOT_FOUND);
    }
    const l = lib();
    const keep: Ptr[] = [];
    const str = (s: string): Ptr => {
      const p = koffi.alloc('char', Buffer.byteLength(s) + 1) as Ptr;
      koffi.encode(p, 'char', s, Buffer.byteLength(s) + 1);
      keep.push(p);
      return p;
    };
    const o = {
      sz: koffi.sizeof(OpenOpts),
      object_name: null,
      relaxed_maps: false,
      pin_root_path: opts.pinRoot ? str(opts.pinRoot) : null,
      _stub: 0,
      kconfig: null,
      btf_custom_path: null,
      kernel_log_buf: null,
      kernel_log_size: 0,
      kernel_log_level: 0,
    };
    const optsPtr = koffi.alloc(OpenOpts, 1) as Ptr;
    koffi.encode(optsPtr, OpenOpts, o);
    let obj: Ptr;
    try {
      obj = l.bpf_object__open_file(path, optsPtr);
    } finally {
      // libbpf copies pin_root_path; the opts can go.
      koffi.free(optsPtr);
      for (const p of keep) koffi.free(p);
    }
    if (!obj) throw new KernelError(`open BPF object ${path}`, errno());
    const bo = new BpfObject(obj, path);
    try {
      if (opts.rodata) bo.setRodata(opts.rodata);
      if (opts.verifierLog) {
        for (const p of bo.programPtrs()) l.bpf_program__set_log_level(p, 1);
      }
    } catch (e) {
      bo.close();
      throw e;
    }
    return bo;
  }

  private programPtrs(): Ptr[] {
    const out: Ptr[] = [];
    let p: Ptr | null = null;
    for (;;) {
      p = lib().bpf_object__next_program(this.obj, p);
      if (!p) break;
      out.push(p);
    }
    return out;
  }

  private mapPtrs(): Ptr[] {
    const out: Ptr[] = [];
    let m: Ptr | null = null;
    for (;;) {
      m = lib().bpf_object__next_map(this.obj, m);
      if (!m) break;
      out.push(m);
    }
    return out;
  }

  programNames(): string[] {
    return this.programPtrs().map((p) => lib().bpf_program__name(p));
  }

  mapNames(): string[] {
    return this.mapPtrs().map((m) => lib().bpf_map__name(m));
  }

  /** Sets 32-bit `const volatile` globals by name, using the object's BTF for offsets. */
  private setRodata(values: Record<string, number>): void {
    const l = lib();
    const m = this.mapPtrs().find((p) => l.bpf_map__name(p).endsWith('.rodata'));
    if (!m) throw new NeuvError(`${this.path}: no .rodata section for ${Object.keys(values).join(', ')}`);
    const size = [0n];
    const init = l.bpf_map__initial_value(m, size);
    if (!init) throw new NeuvError(`${this.path}: .rodata has no initial value`);
    const n = Number(size[0]);
    const data = Buffer.from(koffi.view(init, n));
    const vars = this.datasecVars('.rodata');
    for (const [name, value] of Object.entries(values)) {
      const v = vars.get(name);
      if (!v) throw new NeuvError(`${this.path}: no const volatile global '${name}'`);
      if (v.size !== 4) throw new NeuvError(`${this.path}: global '${name}' is ${v.size} bytes, expected 4`);
      data.writeUInt32LE(value >>> 0, v.offset);
    }
    check(l.bpf_map__set_initial_value(m, data, n), `set .rodata of ${this.path}`);
  }

  /** Variables of a DATASEC (e.g. .rodata): name -> offset/size. */
  private datasecVars(sec: string): Map<string, { offset: number; size: number }> {
    return btfDatasecVars(lib().bpf_object__btf(this.obj), sec);
  }

  /** A struct's layout from the object's BTF, or undefined if absent. */
  btfStruct(name: string): BtfStruct | undefined {
    return btfStruct(lib().bpf_object__btf(this.obj), name);
  }

  /** An enum's values from the object's BTF, or undefined if absent. */
  btfEnum(name: string): BtfEnum | undefined {
    return btfEnum(lib().bpf_object__btf(this.obj), name);
  }

  /**
   * Loads into the kernel (maps created or reused from pins, programs verified).
   * On a verifier refusal the error carries the log (also logged at debug).
   */
  load(): void {
    const l = lib();
    const { result, error, messages } = captureDuring(() => l.bpf_object__load(this.obj));
    const r = error === undefined ? (result as number) : -22;
    if (r >= 0) flushDeferred();
    else dropDeferred();
    if (r < 0) {
      const vlog = messages.join('\n');
      const lg = log('loader');
      const verifier = /BEGIN PROG LOAD LOG/.test(vlog);
      if (vlog) lg.debug({ libbpf: vlog }, 'libbpf output of the failed load');
      const err = new KernelError(
        `load BPF object ${this.path}`,
        -r,
        verifier ? 'the verifier refused a program' : undefined,
        verifier ? ExitCode.KERNEL : undefined,
      );
      (err as KernelError & { verifierLog?: string }).verifierLog = vlog;
      throw err;
    }
    this.loaded = true;
  }

  private progPtr(name: string): Ptr {
    const p = lib().bpf_object__find_program_by_name(this.obj, name);
    if (!p) throw new NeuvError(`${this.path}: no program '${name}'`, ExitCode.NOT_FOUND);
    return p;
  }

  private mapPtr(name: string): Ptr {
    const m = lib().bpf_object__find_map_by_name(this.obj, name);
    if (!m) throw new NeuvError(`${this.path}: no map '${name}'`, ExitCode.NOT_FOUND);
    return m;
  }

  /** The fd of a loaded program (owned by this object: valid until close()). */
  progFd(name: string): number {
    if (!this.loaded) throw new NeuvError(`${this.path}: not loaded`);
    return check(lib().bpf_program__fd(this.progPtr(name)), `fd of program ${name}`);
  }

  /** A loaded map (the fd is owned by this object: valid until close()). */
  map(name: string): MapFd {
    if (!this.loaded) throw new NeuvError(`${this.path}: not loaded`);
    const fd = check(lib().bpf_map__fd(this.mapPtr(name)), `fd of map ${name}`);
    return new MapFd(fd, false);
  }

  /** Where a pinned-by-name map is (or will be) pinned. */
  mapPinPath(name: string): string | null {
    return lib().bpf_map__pin_path(this.mapPtr(name));
  }

  /** Sets a map's max_entries (call between open and load; a pinned map is reused only with the same size). */
  setMaxEntries(name: string, n: number): void {
    if (this.loaded) throw new NeuvError(`${this.path}: max_entries of ${name} must be set before load`);
    check(lib().bpf_map__set_max_entries(this.mapPtr(name), n >>> 0), `set max_entries of map ${name} to ${n}`);
  }

  /** Reuses an existing map for `name` (call between open and load). */
  reuseMap(name: string, fd: number): void {
    check(lib().bpf_map__reuse_fd(this.mapPtr(name), fd), `reuse map ${name}`);
  }

  close(): void {
    if (this.obj) {
      lib().bpf_object__close(this.obj);
      this.obj = 0n;
    }
  }
}

