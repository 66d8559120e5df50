/**
 * BTF: struct layouts, enum values and DATASEC variables read from an
 * object's BTF (the loader checks src/layout/ against them).
 */
import koffi from 'koffi';
import { KernelError } from '../errors';
import { Ptr, errno, lib } from './lib';

// ---------------------------------------------------------------- BTF

export interface BtfMember {
  name: string;
  offset: number; // bytes
  size: number; // bytes
}
export interface BtfStruct {
  name: string;
  size: number;
  members: BtfMember[];
}
export interface BtfEnum {
  name: string;
  values: Record<string, number>;
}

const BTF_KIND_ENUM = 6;
const BTF_KIND_STRUCT = 4;

/** A BTF type's kind (struct btf_type.info bits 24-28). */
function kindOf(t: Ptr): number {
  return ((koffi.decode(t, 4, 'uint32_t') as number) >>> 24) & 0x1f;
}

/** Variables of a DATASEC (e.g. .rodata) of a BTF: name -> offset/size. */
export function btfDatasecVars(btf: Ptr, sec: string): Map<string, { offset: number; size: number }> {
  const l = lib();
  const out = new Map<string, { offset: number; size: number }>();
  if (!btf) return out;
  const id = l.btf__find_by_name_kind(btf, sec, 15 /* BTF_KIND_DATASEC */);
  if (id < 0) return out;
  const t = l.btf__type_by_id(btf, id);
  const info = koffi.decode(t, 4, 'uint32_t') as number;
  const vlen = info & 0xffff;
  for (let i = 0; i < vlen; i++) {
    const base = 12 + i * 12; // struct btf_var_secinfo { type, offset, size }
    const varId = koffi.decode(t, base, 'uint32_t') as number;
    const off = koffi.decode(t, base + 4, 'uint32_t') as number;
    const sz = koffi.decode(t, base + 8, 'uint32_t') as number;
    const vt = l.btf__type_by_id(btf, varId);
    const name = l.btf__name_by_offset(btf, koffi.decode(vt, 0, 'uint32_t') as number) ?? '';
    out.set(name, { offset: off, size: sz });
  }
  return out;
}

/** A struct's layout from a BTF, or undefined if absent. */
export function btfStruct(btf: Ptr, name: string): BtfStruct | undefined {
  const l = lib();
  if (!btf) return undefined;
  const id = l.btf__find_by_name_kind(btf, name, BTF_KIND_STRUCT);
  if (id < 0) return undefined;
  const t = l.btf__type_by_id(btf, id);
  const info = koffi.decode(t, 4, 'uint32_t') as number;
  const size = koffi.decode(t, 8, 'uint32_t') as number;
  const vlen = info & 0xffff;
  const kflag = info >>> 31;
  const members: BtfMember[] = [];
  for (let i = 0; i < vlen; i++) {
    const base = 12 + i * 12; // struct btf_member { name_off, type, offset }
    const nameOff = koffi.decode(t, base, 'uint32_t') as number;
    const type = koffi.decode(t, base + 4, 'uint32_t') as number;
    const rawOff = koffi.decode(t, base + 8, 'uint32_t') as number;
    const bitOff = kflag ? rawOff & 0xffffff : rawOff;
    members.push({
      name: l.btf__name_by_offset(btf, nameOff) ?? '',
      offset: bitOff / 8,
      size: Number(l.btf__resolve_size(btf, type)),
    });
  }
  return { name, size, members };
}

/** An enum's values from a BTF, or undefined if absent. */
export function btfEnum(btf: Ptr, name: string): BtfEnum | undefined {
  const l = lib();
  if (!btf) return undefined;
  const id = l.btf__find_by_name_kind(btf, name, BTF_KIND_ENUM);
  if (id < 0) return undefined;
  const t = l.btf__type_by_id(btf, id);
  const vlen = (koffi.decode(t, 4, 'uint32_t') as number) & 0xffff;
  const values: Record<string, number> = {};
  for (let i = 0; i < vlen; i++) {
    const base = 12 + i * 8; // struct btf_enum { name_off, val }
    const n = l.btf__name_by_offset(btf, koffi.decode(t, base, 'uint32_t') as number) ?? '';
    values[n] = koffi.decode(t, base + 4, 'int32_t') as number;
  }
  return { name, values };
}


/**
 * Every named struct and enum of an object file's BTF whose name starts with
 * `prefix`, by name (scripts/gen-layout.ts writes src/layout/generated.ts
 * from those of build/neuv.bpf.o).
 */
export function btfTypesOfFile(path: string, prefix: string): { structs: BtfStruct[]; enums: BtfEnum[] } {
  const l = lib();
  const btf = l.btf__parse(path, null);
  if (!btf) throw new KernelError(`read the BTF of ${path}`, errno());
  try {
    const names: Record<number, Set<string>> = { [BTF_KIND_STRUCT]: new Set(), [BTF_KIND_ENUM]: new Set() };
    const n = l.btf__type_cnt(btf);
    for (let id = 1; id < n; id++) {
      const t = l.btf__type_by_id(btf, id);
      const kind = kindOf(t);
      if (kind !== BTF_KIND_STRUCT && kind !== BTF_KIND_ENUM) continue;
      const name = l.btf__name_by_offset(btf, koffi.decode(t, 0, 'uint32_t') as number) ?? '';
      if (name.startsWith(prefix)) names[kind].add(name);
    }
    const sorted = (k: number) => [...names[k]!].sort();
    return {
      structs: sorted(BTF_KIND_STRUCT).map((s) => btfStruct(btf, s)!),
      enums: sorted(BTF_KIND_ENUM).map((e) => btfEnum(btf, e)!),
    };
  } finally {
    l.btf__free(btf);
  }
}
