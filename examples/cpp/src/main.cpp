// fastsim-cpp: command-line demo of fastsim::Generator. Generates showers in
// batches (one Run each) and writes them as raw little-endian float32.
//
//   fastsim-cpp MODEL.onnx --n 10000 --energy 50000 --out showers.bin
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fastsim/generator.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fastsim-cpp reads and writes raw little-endian float32; add byte swapping for this host"
#endif

namespace {

const char* const kUsage = R"(usage: fastsim-cpp MODEL.onnx [options]

Generate calorimeter showers with a fastsim decoder (ONNX), one Run per batch.
Output: raw little-endian float32, n x n_voxels, row-major, energies in MeV.

options:
  --n N                  number of showers (default 1000)
  --energy E|MIN:MAX     incident energy: a value or a log-uniform range; units
                         MeV (default), GeV or TeV, e.g. 50000, 50GeV, 1GeV:1TeV
  --condition NAME=VALUE value of a condition other than the energy (repeatable)
  --batch B              showers per Run (default 64; memory grows with it)
  --seed S               seed of the std::mt19937_64 stream (default 0)
  --threads T            intra-op threads (default 0: all cores)
  --device cpu|cuda      execution provider (default cpu)
  --spec FILE            spec JSON for a model without fastsim.spec metadata
  --out FILE             write the showers here (written to FILE.tmp, then renamed)
  --latents FILE         read latents (raw float32, n x latent_dim) instead of drawing them
  --conditions FILE      read conditions (raw float32, n x n_conditions) instead of
                         --energy/--condition
  --allow-extrapolation  accept conditions outside the model's training range
  --info                 print the model's spec and providers, then exit
  --voxel-centres FILE   write each voxel's (depth, r, alpha) in mm/rad as raw float64
                         (n_voxels x 3) from the spec's geometry, then exit
  --json                 print the run summary as one JSON line on stdout
  -h, --help             show this help
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Arguments {
  std::string model;
  std::size_t n = 1000;
  bool n_given = false;
  std::string energy;
  std::map<std::string, std::string> conditions;
  // Measured (benchmarks/results/embedding_batch.md): 16-256 showers per Run are the fastest
  // on CPU; 4096 was the slowest and needed 1.7 GB against 60 MiB at 64.
  std::size_t batch = 64;
  std::uint64_t seed = 0;
  int threads = 0;
  std::string device = "cpu";
  std::string spec;
  std::string out;
  std::string latents_file;
  std::string conditions_file;
  bool allow_extrapolation = false;
  bool info = false;
  std::string voxel_centres;
  bool json = false;
};

unsigned long long parse_count(const std::string& option, const std::string& text, bool allow_zero) {
  std::size_t used = 0;
  unsigned long long value = 0;
  try {
    if (!text.empty() && text[0] != '-') value = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || (!allow_zero && value == 0)) {
    throw UsageError(option + " must be a " + (allow_zero ? "non-negative" : "positive") + " integer, got '" +
                     text + "'");
  }
  return value;
}

// A number with an optional energy unit: 50000, 5e4, 50GeV, 1TeV (result in MeV).
double parse_energy(const std::string& option, const std::string& text) {
  static const std::pair<const char*, double> units[] = {{"TeV", 1e6}, {"GeV", 1e3}, {"MeV", 1.0}};
  std::string number = text;
  double scale = 1.0;
  for (const auto& [unit, factor] : units) {
    const std::string suffix = unit;
    if (number.size() > suffix.size() && number.compare(number.size() - suffix.size(), suffix.size(), suffix) == 0) {
      number.resize(number.size() - suffix.size());
      scale = factor;
      break;
    }
  }
  std::size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(number, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != number.size() || !std::isfinite(value) || value <= 0) {
    throw UsageError(option + " must be a positive energy such as 50000, 50GeV or 1GeV:1TeV, got '" + text + "'");
  }
  return value * scale;
}

double parse_number(const std::string& option, const std::string& text) {
  std::size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !std::isfinite(value)) {
    throw UsageError(option + " must be a finite number, got '" + text + "'");
  }
  return value;
}

Arguments parse_arguments(int argc, char** argv) {
  Arguments args;
  std::vector<std::string> words(argv + 1, argv + argc);
  for (std::size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= words.size()) throw UsageError(word + " needs a value");
      return words[++i];
    };
    if (word == "-h" || word == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (word == "--n") {
      args.n = parse_count(word, value(), false);
      args.n_given = true;
    } else if (word == "--energy") {
      args.energy = value();
    } else if (word == "--condition") {
      const std::string& pair = value();
      const auto equals = pair.find('=');
      if (equals == std::string::npos || equals == 0) {
        throw UsageError("--condition must be NAME=VALUE, got '" + pair + "'");
      }
      args.conditions[pair.substr(0, equals)] = pair.substr(equals + 1);
    } else if (word == "--batch") {
      args.batch = parse_count(word, value(), false);
    } else if (word == "--seed") {
      args.seed = parse_count(word, value(), true);
    } else if (word == "--threads") {
      args.threads = static_cast<int>(parse_count(word, value(), true));
    } else if (word == "--device") {
      args.device = value();
      if (args.device != "cpu" && args.device != "cuda") {
        throw UsageError("--device must be cpu or cuda, got '" + args.device + "'");
      }
    } else if (word == "--spec") {
      args.spec = value();
    } else if (word == "--out") {
      args.out = value();
    } else if (word == "--latents") {
      args.latents_file = value();
    } else if (word == "--conditions") {
      args.conditions_file = value();
    } else if (word == "--allow-extrapolation") {
      args.allow_extrapolation = true;
    } else if (word == "--info") {
      args.info = true;
    } else if (word == "--voxel-centres") {
      args.voxel_centres = value();
    } else if (word == "--json") {
      args.json = true;
    } else if (word.rfind("-", 0) == 0) {
      throw UsageError("unknown option '" + word + "' (see --help)");
    } else if (args.model.empty()) {
      args.model = word;
    } else {
      throw UsageError("unexpected argument '" + word + "' (one MODEL.onnx only)");
    }
  }
  if (args.model.empty()) throw UsageError("MODEL.onnx is required (see --help)");
  return args;
}

// A raw float32 file of rows of `width` values; n_rows is checked when given.
std::vector<float> read_rows(const std::string& option, const std::string& path, std::size_t width,
                             std::optional<std::size_t> n_rows) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UsageError(option + " file '" + path + "' cannot be read");
  const auto bytes = static_cast<std::size_t>(in.tellg());
  const std::size_t row_bytes = width * sizeof(float);
  if (bytes == 0 || bytes % row_bytes != 0) {
    throw UsageError(option + " file '" + path + "' holds " + std::to_string(bytes) +
                     " bytes, expected rows of " + std::to_string(width) + " float32 values (" +
                     std::to_string(row_bytes) + " bytes each)");
  }
  if (n_rows && bytes / row_bytes != *n_rows) {
    throw UsageError(option + " file '" + path + "' holds " + std::to_string(bytes / row_bytes) +
                     " rows, expected " + std::to_string(*n_rows));
  }
  std::vector<float> values(bytes / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), static_cast<std::streamsize>(bytes));
  return values;
}

void print_info(const fastsim::Generator& generator) {
  const auto& spec = generator.spec();
  std::cout << "model       " << generator.path() << "\n"
            << "name        " << spec.name << " " << spec.version << " (" << spec.format << ")\n"
            << "latent_dim  " << spec.latent_dim << " (" << spec.prior << ")\n";
  for (const auto& condition : spec.conditions) {
    std::cout << "condition   " << condition.name << " [" << condition.min << ", " << condition.max << "] "
              << condition.unit << " (" << condition.sampling << ")\n";
  }
  const auto& geometry = spec.output.geometry;
  if (!geometry.layers.empty()) {
    std::cout << "geometry    cylindrical, " << geometry.layers.size() << " layers of " << geometry.layer_thickness_mm
              << " mm, " << geometry.n_voxels() << " voxels\n";
  }
  std::cout << "output      " << spec.io_names.showers << ": " << spec.output.n_voxels << " voxels, "
            << spec.output.unit << ", " << spec.output.dtype << "\n"
            << "onnxruntime " << fastsim::onnxruntime_version() << ", providers:";
  for (const auto& provider : fastsim::available_providers()) std::cout << " " << provider;
  std::cout << "\n";
}

// Fills a batch of conditions: the --energy value or range and --condition values.
class ConditionSource {
 public:
  ConditionSource(const Arguments& args, const fastsim::ModelSpec& spec) : rng_(args.seed ^ 0x9E3779B97F4A7C15ULL) {
    values_.assign(spec.conditions.size(), std::nan(""));
    if (!args.energy.empty()) {
      const std::size_t index = spec.condition_index("incident_energy");
      const auto colon = args.energy.find(':');
      if (colon == std::string::npos) {
        values_[index] = parse_energy("--energy", args.energy);
      } else {
        log_min_ = std::log(parse_energy("--energy", args.energy.substr(0, colon)));
        log_max_ = std::log(parse_energy("--energy", args.energy.substr(colon + 1)));
        if (!(log_min_ < log_max_)) throw UsageError("--energy range MIN:MAX needs MIN < MAX, got '" + args.energy + "'");
        energy_index_ = index;
      }
    }
    for (const auto& [name, text] : args.conditions) {
      values_[spec.condition_index(name)] = parse_number("--condition " + name, text);
    }
    for (std::size_t i = 0; i < values_.size(); ++i) {
      if (std::isnan(values_[i]) && (!energy_index_ || *energy_index_ != i)) {
        const auto& condition = spec.conditions[i];
        std::ostringstream message;
        message << "condition '" << condition.name << "' has no value: pass "
                << (condition.name == "incident_energy" ? "--energy E" : "--condition " + condition.name + "=VALUE")
                << " (model range [" << condition.min << ", " << condition.max << "] " << condition.unit
                << ") or --conditions FILE";
        throw UsageError(message.str());
      }
    }
  }

  // Energies come from their own stream, so the showers do not depend on --batch.
  void fill(std::size_t n, std::vector<float>& out) {
    const std::size_t width = values_.size();
    out.resize(n * width);
    std::uniform_real_distribution<double> uniform(log_min_, log_max_);
    for (std::size_t row = 0; row < n; ++row) {
      for (std::size_t col = 0; col < width; ++col) {
        out[row * width + col] =
            static_cast<float>(energy_index_ && *energy_index_ == col ? std::exp(uniform(rng_)) : values_[col]);
      }
    }
  }

 private:
  std::mt19937_64 rng_;
  std::vector<double> values_;
  std::optional<std::size_t> energy_index_;
  double log_min_ = 0.0;
  double log_max_ = 0.0;
};

// Writes to PATH.tmp and renames on commit, so no half-written file looks complete.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
    out_.open(tmp_, std::ios::binary | std::ios::trunc);
    if (!out_) throw UsageError("--out file '" + path_ + "' cannot be written (" + tmp_ + ")");
  }
  ~AtomicFile() {
    if (!committed_) {
      out_.close();
      std::remove(tmp_.c_str());
    }
  }
  void write(const std::vector<float>& values, std::size_t count) {
    out_.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(count * sizeof(float)));
    if (!out_) throw UsageError("writing --out file '" + tmp_ + "' failed (disk full?)");
  }
  void commit() {
    out_.close();
    if (!out_) throw UsageError("writing --out file '" + tmp_ + "' failed (disk full?)");
    std::error_code error;
    std::filesystem::rename(tmp_, path_, error);
    if (error) throw UsageError("--out file '" + path_ + "' cannot be written: " + error.message());
    committed_ = true;
  }

 private:
  std::string path_;
  std::string tmp_;
  std::ofstream out_;
  bool committed_ = false;
};

// A JSON string literal (model names are user data).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out + "\"";
}

int run(const Arguments& args) {
  fastsim::GeneratorOptions options;
  options.threads = args.threads;
  options.device = args.device == "cuda" ? fastsim::Device::cuda : fastsim::Device::cpu;
  options.allow_extrapolation = args.allow_extrapolation;
  options.spec_path = args.spec;
  const fastsim::Generator generator(args.model, options);
  if (args.info) {
    print_info(generator);
    return 0;
  }
  const auto& spec = generator.spec();
  if (!args.voxel_centres.empty()) {
    if (spec.output.geometry.layers.empty()) {
      throw UsageError("--voxel-centres: model '" + spec.name + "' has no output.geometry in its spec");
    }
    std::vector<double> rows;
    for (const auto& centre : spec.output.geometry.voxel_centres()) {
      rows.insert(rows.end(), {centre.depth_mm, centre.r_mm, centre.alpha});
    }
    std::ofstream file(args.voxel_centres, std::ios::binary);
    file.write(reinterpret_cast<const char*>(rows.data()), static_cast<std::streamsize>(rows.size() * sizeof(double)));
    if (!file) throw UsageError("--voxel-centres file '" + args.voxel_centres + "' cannot be written");
    return 0;
  }

  // Inputs from files (parity checks, replaying a run) or drawn here.
  std::vector<float> file_conditions;
  std::vector<float> file_latents;
  std::optional<std::size_t> n_rows;
  if (args.n_given) n_rows = args.n;
  if (!args.conditions_file.empty()) {
    if (!args.energy.empty() || !args.conditions.empty()) {
      throw UsageError("--conditions FILE replaces --energy/--condition; pass one or the other");
    }
    file_conditions = read_rows("--conditions", args.conditions_file, generator.n_conditions(), n_rows);
    n_rows = file_conditions.size() / generator.n_conditions();
    generator.check_conditions(file_conditions.data(), *n_rows);
  }
  if (!args.latents_file.empty()) {
    file_latents = read_rows("--latents", args.latents_file, generator.latent_dim(), n_rows);
    n_rows = file_latents.size() / generator.latent_dim();
  }
  const std::size_t n = n_rows.value_or(args.n);
  std::optional<ConditionSource> source;
  if (file_conditions.empty()) source.emplace(args, spec);

  std::optional<AtomicFile> out;
  if (!args.out.empty()) out.emplace(args.out);

  std::mt19937_64 rng(args.seed);
  std::vector<float> conditions;
  std::vector<float> showers;
  double seconds = 0.0;
  double total_energy = 0.0;
  for (std::size_t start = 0; start < n; start += args.batch) {
    const std::size_t count = std::min(args.batch, n - start);
    showers.resize(count * generator.n_voxels());
    const auto begin = std::chrono::steady_clock::now();
    if (source) {
      source->fill(count, conditions);
    } else {
      conditions.assign(file_conditions.begin() + start * generator.n_conditions(),
                        file_conditions.begin() + (start + count) * generator.n_conditions());
    }
    if (file_latents.empty()) {
      generator.generate(conditions.data(), count, rng, showers.data());
    } else {
      generator.check_conditions(conditions.data(), count);
      generator.decode(file_latents.data() + start * generator.latent_dim(), conditions.data(), count,
                       showers.data());
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    for (std::size_t i = 0; i < showers.size(); ++i) total_energy += showers[i];
    if (out) out->write(showers, showers.size());
  }
  if (out) out->commit();

  const double rate = seconds > 0 ? static_cast<double>(n) / seconds : 0.0;
  const double mean_energy = n ? total_energy / static_cast<double>(n) : 0.0;
  if (args.json) {
    std::cout << "{\"model\": " << json_string(spec.name) << ", \"n\": " << n << ", \"batch\": " << args.batch
              << ", \"threads\": " << args.threads << ", \"provider\": \"" << generator.provider()
              << "\", \"onnxruntime\": \"" << fastsim::onnxruntime_version() << "\", \"seconds\": " << seconds
              << ", \"showers_per_second\": " << rate << ", \"mean_total_energy_mev\": " << mean_energy << "}"
              << std::endl;
  } else {
    std::cout << "fastsim-cpp: " << n << " showers of " << spec.name << " " << spec.version << " ("
              << generator.n_voxels() << " voxels) on " << generator.provider() << " in " << seconds << " s ("
              << rate << " showers/s), mean total energy " << mean_energy << " MeV"
              << (args.out.empty() ? "" : ", written to " + args.out) << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_arguments(argc, argv));
  } catch (const UsageError& error) {
    std::cerr << "fastsim-cpp: error: " << error.what() << std::endl;
    return 2;
  } catch (const fastsim::Error& error) {
    std::cerr << "fastsim-cpp: error: " << error.what() << std::endl;
    return 2;
  } catch (const std::exception& error) {
    std::cerr << "fastsim-cpp: unexpected error: " << error.what() << std::endl;
    return 1;
  }
}
