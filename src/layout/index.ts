/**
 * TypeScript mirror of bpf/neuv.h: enums, flags and codecs for every map key
 * and value. `checkAgainstBtf` compares these declarations with the loaded
 * object's BTF (sizes, member offsets and sizes, enum values) so C/TS drift is
 * an error at load, never a corrupted map.
 *
 *   enums.ts      enums, flags, constants and their names
 *   structs.ts    the structs as declared layouts, ENUMS, MAPS
 *   codecs.ts     keys, values and trace records to and from bytes
 *   btf-check.ts  checkAgainstBtf
 */
export * from './enums';
export * from './structs';
export * from './codecs';
export * from './btf-check';
