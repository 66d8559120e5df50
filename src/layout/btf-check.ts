/** The declared layouts and enums compared with an object's BTF. */
import { StructDecl } from './fields';
import { ENUMS, STRUCTS } from './generated';

/** Where STRUCTS and ENUMS are declared (from bpf/neuv.h at build), as the messages name it. */
const DECLARED = 'src/layout/generated.ts';

export interface BtfSource {
  btfStruct(name: string): { size: number; members: Array<{ name: string; offset: number; size: number }> } | undefined;
  btfEnum(name: string): { values: Record<string, number> } | undefined;
}

/**
 * Compares the declarations above with the object's BTF. Returns the list of
 * disagreements (empty when they agree). `structs`/`enums` default to ours;
 * tests pass altered copies to prove a drift is caught.
 */
export function checkAgainstBtf(src: BtfSource, structs: StructDecl[] = STRUCTS, enums = ENUMS): string[] {
  const problems: string[] = [];
  for (const decl of structs) {
    const t = src.btfStruct(decl.name);
    if (!t) {
      problems.push(`struct ${decl.name}: not in the object's BTF`);
      continue;
    }
    if (t.size !== decl.size) problems.push(`struct ${decl.name}: size ${t.size} in BTF, ${decl.size} in ${DECLARED}`);
    const names = new Set(decl.members.map((m) => m.name));
    for (const m of decl.members) {
      const bm = t.members.find((x) => x.name === m.name);
      if (!bm) {
        problems.push(`struct ${decl.name}.${m.name}: not in BTF`);
        continue;
      }
      if (bm.offset !== m.offset) problems.push(`struct ${decl.name}.${m.name}: offset ${bm.offset} in BTF, ${m.offset} in ${DECLARED}`);
      if (bm.size !== m.size) problems.push(`struct ${decl.name}.${m.name}: size ${bm.size} in BTF, ${m.size} in ${DECLARED}`);
    }
    for (const bm of t.members) {
      if (!names.has(bm.name)) problems.push(`struct ${decl.name}.${bm.name}: in BTF, missing from ${DECLARED}`);
    }
  }
  for (const e of enums) {
    const t = src.btfEnum(e.name);
    if (!t) {
      problems.push(`enum ${e.name}: not in the object's BTF`);
      continue;
    }
    for (const [k, v] of Object.entries(e.values)) {
      const cv = t.values[e.prefix + k];
      if (cv === undefined) problems.push(`enum ${e.name}: ${e.prefix}${k} not in BTF`);
      else if (cv !== v) problems.push(`enum ${e.name}: ${e.prefix}${k} is ${cv} in BTF, ${v} in ${DECLARED}`);
    }
    for (const [k, v] of Object.entries(t.values)) {
      const short = k.startsWith(e.prefix) ? k.slice(e.prefix.length) : k;
      if (!(short in e.values)) problems.push(`enum ${e.name}: ${k} = ${v} in BTF, missing from ${DECLARED}`);
    }
  }
  return problems;
}
