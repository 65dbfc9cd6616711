// fastsim-cpp: command-line demo of fastsim::Generator. Generates showers in
// batches (one Run each) and writes them as raw little-endian float32.
//
//   fastsim-cpp MODEL.onnx --n 10000 --energy 50000 --out showers.bin
//   fastsim-cpp MODEL.onnx --n 1000 --energy 50GeV --theta 30deg --phi 370deg --out showers.bin
//   fastsim-cpp MODEL.onnx --n 1000 --energy 50GeV --particle electron,photon --out showers.bin
#include <algorithm>
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
  --theta A              incident_theta, an angle: 30deg, 0.5rad or 0.5 (radians)
  --phi A                incident_phi, an angle as for --theta; a periodic condition
                         is wrapped into [min, min + period), e.g. 370deg -> 10deg
  --particle P[,P...]    particle, a categorical condition: a label or its code
                         (photon, 22), or a comma list drawn per shower with equal
                         probability (electron,photon)
  --condition NAME=VALUE any condition, VALUE in its spec unit (repeatable); for a
                         categorical one a label, code or comma list as for --particle
                         A condition given no value is drawn per shower over its
                         training range (uniform or log-uniform, as its spec says),
                         a categorical one over all its categories, equally.
  --batch B              showers per Run (default 64; memory grows with it)
  --seed S               seed of the std::mt19937_64 stream (default 0)
  --threads T            intra-op threads (default 0: all cores)
  --device cpu|cuda      execution provider (default cpu)
  --spec FILE            spec JSON for a model without fastsim.spec metadata
  --out FILE             write the showers here (written to FILE.tmp, then renamed)
  --latents FILE         read latents (raw float32, n x latent_dim) instead of drawing them
  --conditions FILE      read conditions (raw float32, n x n_conditions) instead of
                         --energy/--theta/--phi/--particle/--condition
  --conditions-out FILE  write the conditions used (raw float32, n x n_conditions)
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
  std::string theta;
  std::string phi;
  std::string particle;
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
  std::string conditions_out;
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

// An angle in radians: 30deg, 0.5rad or a bare 0.5 (radians).
double parse_angle(const std::string& option, const std::string& text) {
  std::string number = text;
  double scale = 1.0;
  for (const auto& [unit, factor] : {std::pair<std::string, double>{"deg", std::acos(-1.0) / 180.0}, {"rad", 1.0}}) {
    if (number.size() > unit.size() && number.compare(number.size() - unit.size(), unit.size(), unit) == 0) {
      number.resize(number.size() - unit.size());
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
  if (used == 0 || used != number.size() || !std::isfinite(value)) {
    throw UsageError(option + " must be an angle such as 30deg, 0.5rad or 0.5 (radians), got '" + text + "'");
  }
  return value * scale;
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
    } else if (word == "--theta") {
      args.theta = value();
    } else if (word == "--phi") {
      args.phi = value();
    } else if (word == "--particle") {
      args.particle = value();
    } else if (word == "--condition") {
      const std::string& pair = value();
      const auto equals = pair.find('=');
      if (equals == std::string::npos || equals == 0) {
        throw UsageError("--condition must be NAME=VALUE, got '" + pair + "'");
      }
      if (!args.conditions.emplace(pair.substr(0, equals), pair.substr(equals + 1)).second) {
        throw UsageError("--condition " + pair.substr(0, equals) + " is given twice");
      }
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
    } else if (word == "--conditions-out") {
      args.conditions_out = value();
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
              << condition.unit << " (" << condition.sampling;
    if (condition.periodic()) std::cout << ", period " << condition.period;
    if (condition.categorical()) std::cout << ": " << condition.category_list();
    std::cout << ")\n";
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

// Fills a batch of conditions: the values given by --energy/--theta/--phi/--particle/--condition,
// and, per shower, draws of every other condition over its training range (a categorical
// one: one of its categories, each equally likely, as a comma list is drawn).
class ConditionSource {
 public:
  ConditionSource(const Arguments& args, const fastsim::ModelSpec& spec)
      : spec_(spec), rng_(args.seed ^ 0x9E3779B97F4A7C15ULL), allow_extrapolation_(args.allow_extrapolation) {
    const std::size_t width = spec.conditions.size();
    fixed_.assign(width, std::nullopt);
    log_range_.assign(width, std::nullopt);
    choice_.assign(width, std::nullopt);
    given_by_.assign(width, "");
    if (!args.energy.empty()) {
      const std::size_t index = claim("--energy", "incident_energy");
      const auto colon = args.energy.find(':');
      if (colon == std::string::npos) {
        set("--energy", index, parse_energy("--energy", args.energy), args.energy);
      } else {
        const double low = parse_energy("--energy", args.energy.substr(0, colon));
        const double high = parse_energy("--energy", args.energy.substr(colon + 1));
        if (!(low < high)) throw UsageError("--energy range MIN:MAX needs MIN < MAX, got '" + args.energy + "'");
        check_range("--energy", index, low, args.energy);
        check_range("--energy", index, high, args.energy);
        log_range_[index] = std::make_pair(std::log(low), std::log(high));
      }
    }
    if (!args.theta.empty()) set_angle("--theta", "incident_theta", args.theta);
    if (!args.phi.empty()) set_angle("--phi", "incident_phi", args.phi);
    if (!args.particle.empty()) set_category("--particle", claim("--particle", "particle"), args.particle);
    for (const auto& [name, text] : args.conditions) {
      const std::string option = "--condition " + name;
      const std::size_t index = claim(option, name);
      if (spec.conditions[index].categorical()) {
        set_category(option, index, text);
      } else {
        set(option, index, parse_number(option, text), text);
      }
    }
    for (std::size_t i = 0; i < width; ++i) {
      const auto& condition = spec.conditions[i];
      if (!fixed_[i] && !choice_[i] && condition.categorical()) {
        std::vector<double> codes;
        for (const auto& category : condition.categories) codes.push_back(category.code);
        choice_[i] = std::move(codes);
      }
      if (!fixed_[i] && !log_range_[i] && condition.sampling == "log-uniform") {
        log_range_[i] = std::make_pair(std::log(condition.min), std::log(condition.max));
      }
    }
  }

  // Drawn from their own stream, so the showers do not depend on --batch; row by row,
  // columns in the spec's order.
  void fill(std::size_t n, std::vector<float>& out) {
    const std::size_t width = fixed_.size();
    out.resize(n * width);
    std::uniform_real_distribution<double> unit(0.0, 1.0);
    for (std::size_t row = 0; row < n; ++row) {
      for (std::size_t col = 0; col < width; ++col) {
        double value = 0.0;
        if (fixed_[col]) {
          value = *fixed_[col];
        } else if (choice_[col]) {
          // The Python runtime's rule (ConditionPlan.values): codes[min(floor(u k), k - 1)].
          const auto& codes = *choice_[col];
          const auto pick = static_cast<std::size_t>(unit(rng_) * static_cast<double>(codes.size()));
          value = codes[std::min(pick, codes.size() - 1)];
        } else if (log_range_[col]) {
          const auto [low, high] = *log_range_[col];
          value = std::exp(low + (high - low) * unit(rng_));
        } else {
          const auto& condition = spec_.conditions[col];
          value = condition.min + (condition.max - condition.min) * unit(rng_);
        }
        out[row * width + col] = static_cast<float>(value);
      }
    }
  }

 private:
  // The column of condition `name`, which `option` sets; names the model's conditions if absent.
  std::size_t claim(const std::string& option, const std::string& name) {
    std::size_t index = 0;
    try {
      index = spec_.condition_index(name);
    } catch (const fastsim::ConditionError& error) {
      throw UsageError(option + ": " + error.what());
    }
    if (!given_by_[index].empty()) {
      throw UsageError(option + ": condition '" + name + "' is already given by " + given_by_[index]);
    }
    given_by_[index] = option;
    return index;
  }

  void set_angle(const std::string& option, const std::string& name, const std::string& text) {
    const std::size_t index = claim(option, name);
    const auto& condition = spec_.conditions[index];
    double value = parse_angle(option, text);
    if (condition.unit == "deg") {
      value *= 180.0 / std::acos(-1.0);
    } else if (condition.unit != "rad") {
      throw UsageError(option + ": condition '" + name + "' has unit '" + condition.unit +
                       "', expected rad or deg; pass --condition " + name + "=VALUE in " + condition.unit);
    }
    set(option, index, value, text);
  }

  // A categorical condition: a label or code, or a comma list of them drawn per shower.
  void set_category(const std::string& option, std::size_t index, const std::string& text) {
    const auto& condition = spec_.conditions[index];
    if (!condition.categorical()) {
      throw UsageError(option + ": condition '" + condition.name + "' is not categorical (its spec has no "
                       "categories); pass --condition " + condition.name + "=VALUE in " + condition.unit);
    }
    std::vector<double> codes;
    std::size_t start = 0;
    while (true) {
      const std::size_t comma = text.find(',', start);
      const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      const auto code = condition.category_code(item);
      if (!code) {
        const std::size_t first = std::min(item.find_first_not_of(' '), item.size());
        const std::size_t last = item.find_last_not_of(' ');
        const std::string shown = last == std::string::npos ? "" : item.substr(first, last + 1 - first);
        throw UsageError(option + ": condition '" + condition.name + "' must be one of " + condition.category_list() +
                         " or a comma list of them, got '" + shown + "'");
      }
      if (std::find(codes.begin(), codes.end(), *code) != codes.end()) {
        throw UsageError(option + ": condition '" + condition.name + "' lists a category twice in '" + text + "'");
      }
      codes.push_back(*code);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    if (codes.size() == 1) {
      fixed_[index] = codes.front();
    } else {
      choice_[index] = std::move(codes);
    }
  }

  void set(const std::string& option, std::size_t index, double value, const std::string& text) {
    value = spec_.conditions[index].wrap(value);
    check_range(option, index, value, text);
    fixed_[index] = value;
  }

  void check_range(const std::string& option, std::size_t index, double value, const std::string& text) const {
    const auto& condition = spec_.conditions[index];
    if (allow_extrapolation_ || condition.in_range(value)) return;
    std::ostringstream message;
    message << option << ": condition '" << condition.name << "' must be in the model's range [" << condition.min
            << ", " << condition.max << "] " << condition.unit << ", got " << value << " " << condition.unit
            << " ('" << text << "'"
            << (condition.periodic() ? ", wrapped by its period " + std::to_string(condition.period) : "")
            << "); --allow-extrapolation to go outside it";
    throw UsageError(message.str());
  }

  const fastsim::ModelSpec& spec_;
  std::mt19937_64 rng_;
  std::vector<std::optional<double>> fixed_;
  std::vector<std::optional<std::pair<double, double>>> log_range_;
  std::vector<std::optional<std::vector<double>>> choice_;  // a categorical condition's codes to draw from
  bool allow_extrapolation_ = false;
  std::vector<std::string> given_by_;
};

// Writes to PATH.tmp and renames on commit, so no half-written file looks complete.
class AtomicFile {
 public:
  AtomicFile(std::string option, std::string path)
      : option_(std::move(option)), path_(std::move(path)), tmp_(path_ + ".tmp") {
    out_.open(tmp_, std::ios::binary | std::ios::trunc);
    if (!out_) throw UsageError(option_ + " file '" + path_ + "' cannot be written (" + tmp_ + ")");
  }
  ~AtomicFile() {
    if (!committed_) {
      out_.close();
      std::remove(tmp_.c_str());
    }
  }
  void write(const std::vector<float>& values, std::size_t count) {
    out_.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(count * sizeof(float)));
    if (!out_) throw UsageError("writing " + option_ + " file '" + tmp_ + "' failed (disk full?)");
  }
  void commit() {
    out_.close();
    if (!out_) throw UsageError("writing " + option_ + " file '" + tmp_ + "' failed (disk full?)");
    std::error_code error;
    std::filesystem::rename(tmp_, path_, error);
    if (error) throw UsageError(option_ + " file '" + path_ + "' cannot be written: " + error.message());
    committed_ = true;
  }

 private:
  std::string option_;
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
    if (!args.energy.empty() || !args.theta.empty() || !args.phi.empty() || !args.particle.empty() ||
        !args.conditions.empty()) {
      throw UsageError("--conditions FILE replaces --energy/--theta/--phi/--particle/--condition; pass one or the "
                       "other");
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
  if (!args.out.empty()) out.emplace("--out", args.out);
  std::optional<AtomicFile> conditions_out;
  if (!args.conditions_out.empty()) conditions_out.emplace("--conditions-out", args.conditions_out);

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
    if (conditions_out) conditions_out->write(conditions, conditions.size());
  }
  if (out) out->commit();
  if (conditions_out) conditions_out->commit();

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
