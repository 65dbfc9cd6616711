// Run a fastsim decoder from Node.js: read the fastsim.spec metadata from the
// ONNX file, check the graph's names, draw latents and decode one batch per Run.
//
//   node generate.mjs MODEL.onnx --n 1000 --energy 50000 --out showers.bin
//
// Output: raw little-endian float32, n x n_voxels, row-major, MeV.
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";

const SPEC_KEY = "fastsim.spec";
const FORMAT = "fastsim-decoder/1";

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
  if ((spec.format ?? FORMAT) !== FORMAT) throw new FastsimError(`spec: format must be '${FORMAT}', got '${spec.format}'`);
  if (!Number.isInteger(spec.latent_dim) || spec.latent_dim <= 0) {
    throw new FastsimError(`spec: latent_dim must be a positive integer, got ${JSON.stringify(spec.latent_dim)}`);
  }
  if (!Array.isArray(spec.conditions) || spec.conditions.length === 0) {
    throw new FastsimError("spec: conditions must be a non-empty list of conditions");
  }
  if (!Number.isInteger(spec.output?.n_voxels) || spec.output.n_voxels <= 0) {
    throw new FastsimError(`spec: output.n_voxels must be a positive integer, got ${JSON.stringify(spec.output?.n_voxels)}`);
  }
  spec.io_names = { z: "z", conditions: "conditions", showers: "showers", ...(spec.io_names ?? {}) };
  return spec;
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

// Seeded standard-normal latents: mulberry32 uniforms and Box-Muller.
function normals(count, seed) {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
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

const USAGE = `usage: node generate.mjs MODEL.onnx [options]

Generate calorimeter showers with a fastsim decoder (ONNX) in one session.run.

options:
  --n N                  showers to generate (default 1000)
  --energy E             incident energy, MeV or with a GeV/TeV suffix (models whose only
                         condition is incident_energy)
  --seed S               seed of the drawn latents (default 0)
  --threads T            ONNX Runtime intra-op threads (default 0: ONNX Runtime's choice)
  --out FILE             write raw little-endian float32, n x n_voxels, MeV (via FILE.tmp)
  --latents FILE         raw float32 latents (n x latent_dim) instead of drawn ones
  --conditions FILE      raw float32 conditions (n x n_conditions) instead of --energy
  --allow-extrapolation  accept conditions outside the model's training range
  -h, --help             show this help and exit

example:
  node generate.mjs ../../exported/calo-electron.onnx --n 1000 --energy 50GeV --out showers.bin`;

async function main() {
  const { values: opts, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      help: { type: "boolean", short: "h", default: false },
      n: { type: "string", default: "1000" },
      energy: { type: "string" },
      seed: { type: "string", default: "0" },
      threads: { type: "string", default: "0" },
      latents: { type: "string" },
      conditions: { type: "string" },
      out: { type: "string" },
      "allow-extrapolation": { type: "boolean", default: false },
    },
  });
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
    conditions = readRows("--conditions", opts.conditions, nConditions);
  } else {
    const n = Number(opts.n);
    if (!Number.isInteger(n) || n <= 0) throw new FastsimError(`--n must be a positive integer, got '${opts.n}'`);
    if (nConditions !== 1 || spec.conditions[0].name !== "incident_energy") {
      throw new FastsimError(`this model has conditions [${spec.conditions.map((c) => c.name)}]; pass --conditions FILE`);
    }
    conditions = new Float32Array(n).fill(parseEnergy(opts.energy));
  }
  const n = conditions.length / nConditions;
  const z = opts.latents ? readRows("--latents", opts.latents, spec.latent_dim) : normals(n * spec.latent_dim, Number(opts.seed));
  if (z.length !== n * spec.latent_dim) {
    throw new FastsimError(`--latents holds ${z.length / spec.latent_dim} rows, --conditions ${n}`);
  }
  for (let i = 0; i < conditions.length; i++) {
    const { name, min, max, unit } = spec.conditions[i % nConditions];
    const value = conditions[i];
    if (!Number.isFinite(value) || (!opts["allow-extrapolation"] && (value < min || value > max))) {
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
  if (opts.out) {
    // Written under a temporary name and renamed, so no half-written file looks complete.
    const tmp = `${opts.out}.tmp`;
    try {
      writeFileSync(tmp, new Uint8Array(showers.buffer, showers.byteOffset, showers.byteLength));
      renameSync(tmp, opts.out);
    } catch (error) {
      rmSync(tmp, { force: true });
      throw new FastsimError(`--out file '${opts.out}' cannot be written: ${error.message}`);
    }
  }
  let total = 0;
  for (const value of showers) total += value;
  console.log(`generate.mjs: ${n} showers of ${spec.name ?? "model"} (${spec.output.n_voxels} voxels) in ` +
              `${seconds.toFixed(4)} s, mean total energy ${(total / n).toPrecision(6)} ${spec.output.unit ?? "MeV"}` +
              `${opts.out ? `, written to ${opts.out}` : ""}`);
}

main().catch((error) => {
  const known = error instanceof FastsimError || error?.code?.startsWith?.("ERR_PARSE_ARGS");
  console.error(`generate.mjs: error: ${known ? error.message : error.stack}`);
  process.exit(known ? 2 : 1);
});
