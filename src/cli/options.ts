/**
 * The CLI's numeric options, parsed and range-checked by commander as it
 * reads them (src/numbers.ts): a bad value is a usage error (exit 2) naming
 * the option, the value and the range, before any command runs. Commands
 * get numbers, never strings to convert. One builder per kind:
 *
 *   program.addOption(integerOption('--id <n>', 'pair id', PORT_ID))
 *   program.addOption(secondsOption('--interval <s>', 'watch interval', WATCH_INTERVAL, 1))
 */
import { Option } from 'commander';
import { Range, parseDecimal, parseInteger } from '../numbers';

function build(flags: string, description: string, parse: (v: string, what: string) => number, dflt?: number): Option {
  const o = new Option(flags, description);
  const what = o.long ?? o.short ?? flags;
  o.argParser((v: string) => parse(v, what));
  if (dflt !== undefined) o.default(dflt);
  return o;
}

/** An option whose value is an integer in r (decimal; 0x hex too with r.hex). */
export function integerOption(flags: string, description: string, r: Range, dflt?: number): Option {
  return build(flags, description, (v, what) => parseInteger(v, what, r), dflt);
}

/** An option whose value is a decimal number of seconds (or another unit) in r. */
export function secondsOption(flags: string, description: string, r: Range, dflt?: number): Option {
  return build(flags, description, (v, what) => parseDecimal(v, what, r), dflt);
}
