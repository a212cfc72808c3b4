// Offline stand-in for jsr:@std/cli/parse-args: see ../README.md.
export { parseArgs } from "npm:deno-std@1.4.0/cli/parse_args.js";
