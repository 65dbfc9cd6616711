// fastsim::Generator: loads a fastsim decoder (.onnx), reads its fastsim.spec,
// checks the graph against it, and turns caller-supplied conditions into
// showers in MeV, one ONNX Runtime Run per batch.
#pragma once

#include <cstddef>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fastsim/errors.hpp"
#include "fastsim/model_spec.hpp"

namespace fastsim {

/// Where the decoder runs.
enum class Device { cpu, cuda };

/// Session options; the defaults suit one generator per process.
struct GeneratorOptions {
  /// Intra-op threads for one Run; 0 lets ONNX Runtime use all cores.
  int threads = 0;
  /// cuda needs a build with FASTSIM_WITH_CUDA and a library with the CUDA provider.
  Device device = Device::cpu;
  int cuda_device_id = 0;
  /// Accept conditions outside the ranges the model was trained on.
  bool allow_extrapolation = false;
  /// Spec document to use when the model carries none in its metadata;
  /// empty: look for MODEL.onnx.json next to the model.
  std::string spec_path;
};

/// A loaded decoder. generate() and decode() are const and may be called from
/// several threads at once (ONNX Runtime sessions are thread-safe for Run).
class Generator {
 public:
  explicit Generator(const std::string& model_path, const GeneratorOptions& options = {});
  ~Generator();
  Generator(Generator&&) noexcept;
  Generator& operator=(Generator&&) noexcept;
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  const ModelSpec& spec() const;
  const std::string& path() const;
  /// The execution provider the session runs on, e.g. "CPUExecutionProvider".
  const std::string& provider() const;
  std::size_t latent_dim() const { return spec().latent_dim; }
  std::size_t n_conditions() const { return spec().conditions.size(); }
  std::size_t n_voxels() const { return spec().output.n_voxels; }

  /// Showers for n rows of conditions (row-major n x n_conditions, in the
  /// spec's units), with standard-normal latents drawn from rng. Writes
  /// n x n_voxels energies in MeV to showers. Throws ConditionError for a
  /// value outside the model's range (unless allow_extrapolation).
  void generate(const float* conditions, std::size_t n, std::mt19937_64& rng, float* showers) const;
  std::vector<float> generate(const std::vector<float>& conditions, std::mt19937_64& rng) const;

  /// One raw Run on caller-supplied latents (n x latent_dim) and conditions.
  void decode(const float* z, const float* conditions, std::size_t n, float* showers) const;
  std::vector<float> decode(const std::vector<float>& z, const std::vector<float>& conditions) const;

  /// Throws ConditionError unless every value is finite and, unless
  /// allow_extrapolation, inside its condition's [min, max].
  void check_conditions(const float* conditions, std::size_t n) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Providers the loaded ONNX Runtime library offers, e.g. {"CPUExecutionProvider"}.
std::vector<std::string> available_providers();

/// Version string of the ONNX Runtime library in use, e.g. "1.32.0".
std::string onnxruntime_version();

}  // namespace fastsim
