/**
 * TypeScript mirror of bpf/neuv.h: enums, flags and codecs for every map key
 * and value. The layouts and enums are generated from build/neuv.bpf.o's BTF
 * at make build; `checkAgainstBtf` compares them with the object actually
 * loaded (sizes, member offsets and sizes, enum values), so an object built
 * from another bpf/neuv.h is an error at load, never a corrupted map.
 *
 *   generated.ts  every struct and enum of bpf/neuv.h (scripts/gen-layout.ts: do not edit)
 *   enums.ts      what derives from the enums: value types, names, constants
 *   structs.ts    MAPS: which map holds which struct
 *   codecs.ts     keys, values and trace records to and from bytes
 *   btf-check.ts  checkAgainstBtf
 */
export * from './enums';
export * from './structs';
export * from './codecs';
export * from './btf-check';
