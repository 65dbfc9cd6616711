// Run a fastsim decoder from Node.js: read the fastsim.spec metadata from the
// ONNX file, check the graph's names, draw latents and decode one batch per Run.
//
//   node generate.mjs MODEL.onnx --n 1000 --energy 50000 --out showers.bin
//   node generate.mjs MODEL.onnx --n 1000 --energy 50GeV --theta 30deg --phi 370deg --out showers.bin
//   node generate.mjs MODEL.onnx --n 1000 --energy 50GeV --particle electron,photon --out showers.bin
//
// Output: raw little-endian float32, n x n_voxels, row-major, MeV.
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

const SPEC_KEY = "fastsim.spec";
const FORMAT = "fastsim-decoder/1";
const PERIODIC_FORMAT = "fastsim-decoder/1.1"; // adds the optional `period` of a condition
const CATEGORICAL_FORMAT = "fastsim-decoder/1.2"; // adds the optional `categories` of a condition
const FORMATS = [FORMAT, PERIODIC_FORMAT, CATEGORICAL_FORMAT];

class FastsimError extends Error {}

// onnxruntime-node exposes no custom metadata, so read ModelProto.metadata_props
// (field 14: StringStringEntryProto {key = 1, value = 2}) from the protobuf bytes.
function* protobufFields(bytes, start = 0, end = bytes.length) {
  let pos = start;
  const varint = () => {
    let result = 0n;
    for (let shift = 0n; ; shift += 7n) {
      if (pos >= end || shift > 63n) throw new FastsimError("truncated protobuf varint");
      const byte = bytes[pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
    }
  };
  while (pos < end) {
    const key = varint();
    const number = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      yield { number, wire, value: varint() };
    } else if (wire === 2) {
      const size = Number(varint());
      if (pos + size > end) throw new FastsimError("truncated protobuf field");
      yield { number, wire, start: pos, end: pos + size };
      pos += size;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else {
      throw new FastsimError(`unsupported protobuf wire type ${wire}`);
    }
  }
}

function readMetadata(bytes) {
  const decoder = new TextDecoder();
  const metadata = {};
  for (const field of protobufFields(bytes)) {
    if (field.number !== 14 || field.wire !== 2) continue;
    const entry = {};
    for (const inner of protobufFields(bytes, field.start, field.end)) {
      if (inner.wire === 2) entry[inner.number] = decoder.decode(bytes.subarray(inner.start, inner.end));
    }
    metadata[entry[1] ?? ""] = entry[2] ?? "";
  }
  return metadata;
}

function readSpec(modelPath, bytes) {
  let text = readMetadata(bytes)[SPEC_KEY];
  if (text === undefined) {
    try {
      text = readFileSync(`${modelPath}.json`, "utf8");
    } catch {
      throw new FastsimError(`model '${modelPath}' has no '${SPEC_KEY}' metadata and no sidecar '${modelPath}.json'`);
    }
  }
  let spec;
  try {
    spec = JSON.parse(text);
  } catch (error) {
    throw new FastsimError(`spec: not valid JSON (${error.message})`);
  }
  spec.format ??= FORMAT;
  if (!FORMATS.includes(spec.format)) {
    throw new FastsimError(`spec: format must be one of [${FORMATS.map((f) => `'${f}'`).join(", ")}], ` +
                           `got ${JSON.stringify(spec.format)}`);
  }
  if (!Number.isInteger(spec.latent_dim) || spec.latent_dim <= 0) {
    throw new FastsimError(`spec: latent_dim must be a positive integer, got ${JSON.stringify(spec.latent_dim)}`);
  }
  if (!Array.isArray(spec.conditions) || spec.conditions.length === 0) {
    throw new FastsimError("spec: conditions must be a non-empty list of conditions");
  }
  spec.conditions.forEach((condition, index) => checkCondition(condition, index, spec.format));
  if (!Number.isInteger(spec.output?.n_voxels) || spec.output.n_voxels <= 0) {
    throw new FastsimError(`spec: output.n_voxels must be a positive integer, got ${JSON.stringify(spec.output?.n_voxels)}`);
  }
  spec.io_names = { z: "z", conditions: "conditions", showers: "showers", ...(spec.io_names ?? {}) };
  return spec;
}

// The same rules and messages as fastsim/spec.py and the C++ host.
function checkCondition(condition, index, format) {
  const fail = (where, expected, given) => new FastsimError(`spec: ${where} must be ${expected}, got ${JSON.stringify(given)}`);
  if (condition === null || typeof condition !== "object" || Array.isArray(condition)) {
    throw fail(`conditions[${index}]`, "a JSON object", condition);
  }
  for (const key of ["name", "unit"]) {
    if (typeof condition[key] !== "string" || condition[key] === "") {
      throw fail(`conditions[${index}].${key}`, "a non-empty string", condition[key]);
    }
  }
  for (const key of ["min", "max"]) {
    if (typeof condition[key] !== "number" || !Number.isFinite(condition[key])) {
      throw fail(`conditions[${index}].${key}`, "a finite number", condition[key]);
    }
  }
  condition.sampling ??= "uniform";
  if (condition.categories !== undefined) {
    const { categories } = condition;
    if (categories === null || typeof categories !== "object" || Array.isArray(categories)) {
      throw fail(`conditions[${index}].categories`, "a JSON object", categories);
    }
    for (const [label, code] of Object.entries(categories)) {
      if (typeof code !== "number" || !Number.isFinite(code)) {
        throw fail(`conditions[${index}].categories['${label}']`, "a finite number", code);
      }
    }
  }
  const named = `conditions['${condition.name}']`;
  if (!["uniform", "log-uniform", "categorical"].includes(condition.sampling)) {
    throw fail(`${named}.sampling`, "one of [uniform, log-uniform, categorical]", condition.sampling);
  }
  if (condition.categories !== undefined || condition.sampling === "categorical") checkCategories(condition, named, fail);
  if (!(condition.min < condition.max)) throw fail(`${named}.min/max`, "finite with min < max", [condition.min, condition.max]);
  if (condition.sampling === "log-uniform" && condition.min <= 0) {
    throw fail(`${named}.min`, "> 0 for log-uniform sampling", condition.min);
  }
  if (condition.period !== undefined) {
    const { period } = condition;
    if (typeof period !== "number" || !Number.isFinite(period) || period <= 0) {
      throw fail(`${named}.period`, "a finite number > 0", period);
    }
    if (condition.max - condition.min > period) {
      throw fail(`${named}.period`, `at least max - min = ${condition.max - condition.min}`, period);
    }
    if (condition.sampling !== "uniform") throw fail(`${named}.sampling`, "'uniform' for a periodic condition", condition.sampling);
    if (format === FORMAT) throw fail(`${named}.period`, `used with format '${PERIODIC_FORMAT}'`, format);
  }
  // Readers of formats 1 and 1.1 know no categories: such a spec would be drawn as a range.
  if (condition.categories !== undefined && format !== CATEGORICAL_FORMAT) {
    throw fail(`${named}.categories`, `used with format '${CATEGORICAL_FORMAT}'`, format);
  }
}

// The rules of fastsim/spec.py ConditionSpec._check_categories, in its order. Categories keep the
// document's order (the order a condition left out is drawn over), as Python's dicts do.
function checkCategories(condition, named, fail) {
  const { categories } = condition;
  if (condition.sampling !== "categorical") {
    throw fail(`${named}.sampling`, "'categorical' for a condition with categories", condition.sampling);
  }
  const entries = Object.entries(categories ?? {});
  if (entries.length < 2) throw fail(`${named}.categories`, "at least two categories {label: code}", categories ?? null);
  const labels = entries.map(([label]) => label);
  const codes = entries.map(([, code]) => code);
  if (labels.some((label) => label.trim() === "" || label.includes(":") || label.includes(","))) {
    throw fail(`${named}.categories`, "labels that are non-empty strings without ':' or ','", labels);
  }
  // Codes reach the decoder as float32: integers up to 2**24 are exact there.
  if (codes.some((code) => !Number.isInteger(code) || Math.abs(code) > 2 ** 24)) {
    throw fail(`${named}.categories`, "integer codes of magnitude <= 2**24", codes);
  }
  if (new Set(labels.map((label) => label.toLowerCase())).size !== labels.length || new Set(codes).size !== codes.length) {
    throw fail(`${named}.categories`, "distinct labels and distinct codes", categories);
  }
  const smallest = Math.min(...codes);
  const largest = Math.max(...codes);
  if (condition.min !== smallest || condition.max !== largest) {
    throw fail(`${named}.min/max`, `the smallest and largest code (${smallest}, ${largest})`, [condition.min, condition.max]);
  }
  condition.labels = labels;
  condition.codes = codes;
}

// "electron (11), photon (22)", as the Python runtime lists a condition's categories.
function categoryList(condition) {
  return condition.labels.map((label, i) => `${label} (${condition.codes[i]})`).join(", ");
}

// A category's code from its label (case-insensitive) or its code written as a number; null if none.
function categoryCode(condition, text) {
  const wanted = text.trim().toLowerCase();
  const index = condition.labels.findIndex((label) => label.toLowerCase() === wanted);
  if (index >= 0) return condition.codes[index];
  const value = /^[0-9.eE+-]+$/.test(wanted) ? Number(wanted) : NaN;
  return condition.codes.includes(value) ? value : null;
}

// Whether value is in [min, max], with the Python runtime's slack of 1e-6 x max(|min|, |max|),
// so that float32 round trips of the range ends (1 TeV, pi / 3) pass.
function inRange({ min, max }, value) {
  const slack = 1e-6 * Math.max(Math.abs(min), Math.abs(max));
  return value >= min - slack && value <= max + slack;
}

// A periodic value moved into [min, min + period); any other value unchanged.
function wrap(condition, value) {
  if (condition.period === undefined || !Number.isFinite(value)) return value;
  let wrapped = condition.min + ((value - condition.min) % condition.period);
  if (wrapped < condition.min) wrapped += condition.period;
  if (wrapped >= condition.min + condition.period) wrapped = condition.min;
  return wrapped;
}

function readRows(option, path, width) {
  let buffer;
  try {
    buffer = readFileSync(path);
  } catch {
    throw new FastsimError(`${option} file '${path}' cannot be read`);
  }
  if (buffer.length === 0 || buffer.length % (4 * width) !== 0) {
    throw new FastsimError(`${option} file '${path}' holds ${buffer.length} bytes, expected rows of ${width} float32 values`);
  }
  // Copy into an aligned Float32Array (little-endian hosts: x86-64, arm64).
  return new Float32Array(buffer.buffer.slice(buffer.byteOffset, buffer.byteOffset + buffer.length));
}

// Seeded uniforms in (0, 1): mulberry32.
function mulberry32(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

// Seeded standard-normal latents: mulberry32 uniforms and Box-Muller.
function normals(count, seed) {
  const uniform = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const radius = Math.sqrt(-2 * Math.log(uniform()));
    const angle = 2 * Math.PI * uniform();
    out[i] = radius * Math.cos(angle);
    if (i + 1 < count) out[i + 1] = radius * Math.sin(angle);
  }
  return out;
}

// A float16 output (the fp16 model variant) arrives as IEEE half bit patterns.
function halfToFloat(data) {
  const bits = new Uint16Array(data.buffer, data.byteOffset, data.length);
  return Float32Array.from(bits, (h) => {
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
  });
}

function parseEnergy(text) {
  const match = /^([0-9.eE+-]+)(MeV|GeV|TeV)?$/.exec(text ?? "");
  const value = match ? Number(match[1]) * { MeV: 1, GeV: 1e3, TeV: 1e6 }[match[2] ?? "MeV"] : NaN;
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new FastsimError(`--energy must be a positive energy such as 50000 or 50GeV, got '${text}'`);
  }
  return value;
}

// An angle in radians: 30deg, 0.5rad or a bare 0.5 (radians).
function parseAngle(option, text) {
  const match = /^([0-9.eE+-]+)(deg|rad)?$/.exec(text);
  const value = match ? Number(match[1]) * (match[2] === "deg" ? Math.PI / 180 : 1) : NaN;
  if (!Number.isFinite(value)) {
    throw new FastsimError(`${option} must be an angle such as 30deg, 0.5rad or 0.5 (radians), got '${text}'`);
  }
  return value;
}

function parseNumber(option, text) {
  const value = /^[0-9.eE+-]+$/.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(value)) throw new FastsimError(`${option} must be a finite number, got '${text}'`);
  return value;
}

// One value per condition from --energy/--theta/--phi/--particle/--condition, null where none is
// given; a comma list of categories as {choice: codes}, drawn per shower.
function givenConditions(spec, opts) {
  const names = spec.conditions.map((c) => c.name);
  const values = new Array(names.length).fill(null);
  const givenBy = new Array(names.length).fill(null);
  const claim = (option, name) => {
    const index = names.indexOf(name);
    if (index < 0) {
      throw new FastsimError(`${option}: condition '${name}' is not an input of model '${spec.name ?? "model"}' ` +
                             `(its conditions: ${names.join(", ")})`);
    }
    if (givenBy[index] !== null) throw new FastsimError(`${option}: condition '${name}' is already given by ${givenBy[index]}`);
    givenBy[index] = option;
    return index;
  };
  const set = (option, index, value, text) => {
    const condition = spec.conditions[index];
    const { min, max, unit } = condition;
    value = wrap(condition, value);
    if (!opts["allow-extrapolation"] && !inRange(condition, value)) {
      throw new FastsimError(`${option}: condition '${condition.name}' must be in the model's range [${min}, ${max}] ${unit}, ` +
                             `got ${value} ${unit} ('${text}'); --allow-extrapolation to go outside it`);
    }
    values[index] = value;
  };
  // A categorical condition: a label or code, or a comma list of them drawn per shower.
  const setCategory = (option, index, text) => {
    const condition = spec.conditions[index];
    if (condition.codes === undefined) {
      throw new FastsimError(`${option}: condition '${condition.name}' is not categorical (its spec has no categories); ` +
                             `pass --condition ${condition.name}=VALUE in ${condition.unit}`);
    }
    const codes = [];
    for (const item of text.split(",")) {
      const code = categoryCode(condition, item);
      if (code === null) {
        throw new FastsimError(`${option}: condition '${condition.name}' must be one of ${categoryList(condition)} ` +
                               `or a comma list of them, got '${item.trim()}'`);
      }
      if (codes.includes(code)) {
        throw new FastsimError(`${option}: condition '${condition.name}' lists a category twice in '${text}'`);
      }
      codes.push(code);
    }
    values[index] = codes.length === 1 ? codes[0] : { choice: codes };
  };
  if (opts.energy !== undefined) set("--energy", claim("--energy", "incident_energy"), parseEnergy(opts.energy), opts.energy);
  for (const [option, name] of [["--theta", "incident_theta"], ["--phi", "incident_phi"]]) {
    const text = opts[option.slice(2)];
    if (text === undefined) continue;
    const index = claim(option, name);
    const { unit } = spec.conditions[index];
    let value = parseAngle(option, text);
    if (unit === "deg") {
      value *= 180 / Math.PI;
    } else if (unit !== "rad") {
      throw new FastsimError(`${option}: condition '${name}' has unit '${unit}', expected rad or deg; ` +
                             `pass --condition ${name}=VALUE in ${unit}`);
    }
    set(option, index, value, text);
  }
  if (opts.particle !== undefined) setCategory("--particle", claim("--particle", "particle"), opts.particle);
  for (const pair of opts.condition ?? []) {
    const equals = pair.indexOf("=");
    if (equals <= 0) throw new FastsimError(`--condition must be NAME=VALUE, got '${pair}'`);
    const name = pair.slice(0, equals);
    const option = `--condition ${name}`;
    const index = claim(option, name);
    if (spec.conditions[index].codes !== undefined) {
      setCategory(option, index, pair.slice(equals + 1));
    } else {
      set(option, index, parseNumber(option, pair.slice(equals + 1)), pair.slice(equals + 1));
    }
  }
  return values;
}

// n rows of conditions: the given values, other conditions drawn per shower over their
// training range (uniform or log-uniform) from a stream of their own; a categorical one
// not given is drawn over all its categories, equally, as a comma list is.
function drawConditions(spec, given, n, seed) {
  const uniform = mulberry32((seed ^ 0x9e3779b9) >>> 0);
  const width = spec.conditions.length;
  const out = new Float32Array(n * width);
  for (let row = 0; row < n; row++) {
    for (let col = 0; col < width; col++) {
      const { min, max, sampling, codes } = spec.conditions[col];
      let value = given[col] === null && codes !== undefined ? { choice: codes } : given[col];
      if (value?.choice) {
        // The Python runtime's rule (ConditionPlan.values): codes[min(floor(u k), k - 1)].
        const k = value.choice.length;
        value = value.choice[Math.min(Math.floor(uniform() * k), k - 1)];
      } else if (value === null) {
        value = sampling === "log-uniform"
          ? Math.exp(Math.log(min) + (Math.log(max) - Math.log(min)) * uniform())
          : min + (max - min) * uniform();
      }
      out[row * width + col] = value;
    }
  }
  return out;
}

function writeAtomically(option, path, values) {
  // Written under a temporary name and renamed, so no half-written file looks complete.
  const tmp = `${path}.tmp`;
  try {
    writeFileSync(tmp, new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    renameSync(tmp, path);
  } catch (error) {
    rmSync(tmp, { force: true });
    throw new FastsimError(`${option} file '${path}' cannot be written: ${error.message}`);
  }
}

const USAGE = `usage: node generate.mjs MODEL.onnx [options]

Generate calorimeter showers with a fastsim decoder (ONNX) in one session.run.

options:
  --n N                  showers to generate (default 1000)
  --energy E             incident energy, MeV or with a GeV/TeV suffix
  --theta A              incident_theta, an angle: 30deg, 0.5rad or 0.5 (radians)
  --phi A                incident_phi, an angle as for --theta; a periodic condition is
                         wrapped into [min, min + period), e.g. 370deg -> 10deg
  --particle P[,P...]    particle, a categorical condition: a label or its code (photon,
                         22), or a comma list drawn per shower with equal probability
  --condition NAME=VALUE any condition, VALUE in its spec unit (repeatable); for a
                         categorical one a label, code or comma list as for --particle
                         A condition given no value is drawn per shower over its training
                         range (uniform or log-uniform, as its spec says), a categorical
                         one over all its categories, equally.
  --seed S               seed of the drawn latents (default 0)
  --threads T            ONNX Runtime intra-op threads (default 0: ONNX Runtime's choice)
  --out FILE             write raw little-endian float32, n x n_voxels, MeV (via FILE.tmp)
  --latents FILE         raw float32 latents (n x latent_dim) instead of drawn ones
  --conditions FILE      raw float32 conditions (n x n_conditions) instead of
                         --energy/--theta/--phi/--particle/--condition
  --conditions-out FILE  write the conditions used (raw float32, n x n_conditions)
  --allow-extrapolation  accept conditions outside the model's training range
  -h, --help             show this help and exit

example:
  node generate.mjs ../../exported/calo-electron.onnx --n 1000 --energy 50GeV --out showers.bin`;

async function main() {
  const options = {
    help: { type: "boolean", short: "h", default: false },
    n: { type: "string", default: "1000" },
    energy: { type: "string" },
    theta: { type: "string" },
    phi: { type: "string" },
    particle: { type: "string" },
    condition: { type: "string", multiple: true },
    "conditions-out": { type: "string" },
    seed: { type: "string", default: "0" },
    threads: { type: "string", default: "0" },
    latents: { type: "string" },
    conditions: { type: "string" },
    out: { type: "string" },
    "allow-extrapolation": { type: "boolean", default: false },
  };
  // "--phi -10deg": a value that starts with "-" is still the option's value (parseArgs
  // would refuse it as ambiguous), so pass each valued option as "--name=value".
  const args = process.argv.slice(2);
  const joined = [];
  for (let i = 0; i < args.length; i++) {
    const name = args[i].startsWith("--") ? args[i].slice(2) : "";
    const option = Object.hasOwn(options, name) ? options[name] : undefined;
    if (option?.type === "string" && i + 1 < args.length) {
      joined.push(`${args[i]}=${args[++i]}`);
    } else {
      joined.push(args[i]);
    }
  }
  const { values: opts, positionals } = parseArgs({ args: joined, allowPositionals: true, options });
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  if (positionals.length !== 1) throw new FastsimError("usage: node generate.mjs MODEL.onnx [--n N] [--energy E] [--out FILE] (--help for more)");
  const modelPath = positionals[0];
  let bytes;
  try {
    bytes = readFileSync(modelPath);
  } catch {
    throw new FastsimError(`model file '${modelPath}' does not exist or cannot be read`);
  }
  const spec = readSpec(modelPath, bytes);
  // Imported here, so that --help and argument errors need no installed binding.
  let ort;
  try {
    ({ default: ort } = await import("onnxruntime-node"));
  } catch (error) {
    throw new FastsimError(`onnxruntime-node cannot be loaded (${error.message}); run 'npm install --ignore-scripts' in examples/node`);
  }
  const { z: zName, conditions: cName, showers: sName } = spec.io_names;
  const nConditions = spec.conditions.length;

  let session;
  try {
    session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["cpu"],
      intraOpNumThreads: Number(opts.threads),
      interOpNumThreads: 1,
    });
  } catch (error) {
    throw new FastsimError(`model file '${modelPath}' cannot be loaded by ONNX Runtime: ${error.message}`);
  }
  for (const [kind, name, names] of [["input", zName, session.inputNames], ["input", cName, session.inputNames],
                                     ["output", sName, session.outputNames]]) {
    if (!names.includes(name)) throw new FastsimError(`model does not match its spec: ${kind} '${name}' not in graph ${kind}s [${names}]`);
  }

  // Inputs: from files (parity checks) or drawn here for a constant energy.
  let conditions;
  if (opts.conditions) {
    if ([opts.energy, opts.theta, opts.phi, opts.particle, opts.condition].some((value) => value !== undefined)) {
      throw new FastsimError("--conditions FILE replaces --energy/--theta/--phi/--particle/--condition; pass one or the other");
    }
    conditions = readRows("--conditions", opts.conditions, nConditions);
  } else {
    const n = Number(opts.n);
    if (!Number.isInteger(n) || n <= 0) throw new FastsimError(`--n must be a positive integer, got '${opts.n}'`);
    conditions = drawConditions(spec, givenConditions(spec, opts), n, Number(opts.seed));
  }
  const n = conditions.length / nConditions;
  const z = opts.latents ? readRows("--latents", opts.latents, spec.latent_dim) : normals(n * spec.latent_dim, Number(opts.seed));
  if (z.length !== n * spec.latent_dim) {
    throw new FastsimError(`--latents holds ${z.length / spec.latent_dim} rows, --conditions ${n}`);
  }
  for (let i = 0; i < conditions.length; i++) {
    const { name, min, max, unit, codes } = spec.conditions[i % nConditions];
    const value = conditions[i];
    // A code that is no category is refused even with --allow-extrapolation, as in Python.
    if (codes !== undefined && !codes.includes(value)) {
      throw new FastsimError(`condition '${name}' must be one of ${categoryList(spec.conditions[i % nConditions])}, got ${value}`);
    }
    if (!Number.isFinite(value) || (!opts["allow-extrapolation"] && !inRange(spec.conditions[i % nConditions], value))) {
      throw new FastsimError(`condition '${name}' must be in the model's range [${min}, ${max}] ${unit}, got ${value}`);
    }
  }

  const started = performance.now();
  const result = await session.run({
    [zName]: new ort.Tensor("float32", z, [n, spec.latent_dim]),
    [cName]: new ort.Tensor("float32", conditions, [n, nConditions]),
  });
  const seconds = (performance.now() - started) / 1000;
  const output = result[sName];
  const showers = output.type === "float16" ? halfToFloat(output.data) : output.data;
  if (opts.out) writeAtomically("--out", opts.out, showers);
  if (opts["conditions-out"]) writeAtomically("--conditions-out", opts["conditions-out"], conditions);
  let total = 0;
  for (const value of showers) total += value;
  console.log(`generate.mjs: ${n} showers of ${spec.name ?? "model"} (${spec.output.n_voxels} voxels) in ` +
              `${seconds.toFixed(4)} s, mean total energy ${(total / n).toPrecision(6)} ${spec.output.unit ?? "MeV"}` +
              `${opts.out ? `, written to ${opts.out}` : ""}`);
}

main().catch((error) => {
  const known = error instanceof FastsimError || error?.code?.startsWith?.("ERR_PARSE_ARGS");
  // One line: parseArgs' messages span several.
  console.error(`generate.mjs: error: ${known ? error.message.replace(/\s*\n\s*/g, " ") : error.stack}`);
  process.exit(known ? 2 : 1);
});
