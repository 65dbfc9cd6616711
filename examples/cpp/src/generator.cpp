// fastsim::Generator: the ONNX Runtime session around a fastsim decoder, its
// spec (metadata or sidecar), the graph check, and one Run per batch.
#include "fastsim/generator.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <onnxruntime_cxx_api.h>

namespace fastsim {
namespace {

// The API table of the headers' version, checked once against the library:
// an older library returns null instead of a table it does not have.
const OrtApi& ort_api() {
  static const OrtApi* api = [] {
    const OrtApi* table = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (table == nullptr) {
      throw ModelError("ONNX Runtime library " + std::string(OrtGetApiBase()->GetVersionString()) +
                       " is older than the headers this program was built with (API version " +
                       std::to_string(ORT_API_VERSION) + "); link a library >= 1." +
                       std::to_string(ORT_API_VERSION));
    }
    Ort::InitApi(table);
    return table;
  }();
  return *api;
}

Ort::Env& ort_env() {
  ort_api();
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "fastsim");
  return env;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw SpecError("spec file '" + path.string() + "' cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string join(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

std::string dtype_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "element type " + std::to_string(static_cast<int>(type));
  }
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    out += (i ? ", " : "") + (shape[i] < 0 ? std::string("N") : std::to_string(shape[i]));
  }
  return out + "]";
}

struct GraphArg {
  std::string name;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
};

std::vector<GraphArg> graph_args(Ort::Session& session, bool inputs) {
  Ort::AllocatorWithDefaultOptions allocator;
  const std::size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
  std::vector<GraphArg> args(count);
  for (std::size_t i = 0; i < count; ++i) {
    auto name = inputs ? session.GetInputNameAllocated(i, allocator) : session.GetOutputNameAllocated(i, allocator);
    auto info = inputs ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
    args[i].name = name.get();
    if (info.GetONNXType() == ONNX_TYPE_TENSOR) {
      auto tensor = info.GetTensorTypeAndShapeInfo();
      args[i].type = tensor.GetElementType();
      args[i].shape = tensor.GetShape();
    }
  }
  return args;
}

// Every disagreement between spec and graph, reported at once (as fastsim/spec.py does).
ONNXTensorElementDataType check_graph(const ModelSpec& spec, Ort::Session& session) {
  const auto inputs = graph_args(session, true);
  const auto outputs = graph_args(session, false);
  std::vector<std::string> problems;
  ONNXTensorElementDataType output_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  struct Role {
    const char* kind;
    const char* role;
    const std::string& name;
    const std::vector<GraphArg>& available;
    std::size_t width;
    const char* what;
    std::string dtype;
  };
  const Role roles[] = {
      {"input", "z", spec.io_names.z, inputs, spec.latent_dim, "latent_dim", "float32"},
      {"input", "conditions", spec.io_names.conditions, inputs, spec.conditions.size(), "number of conditions",
       "float32"},
      {"output", "showers", spec.io_names.showers, outputs, spec.output.n_voxels, "output.n_voxels",
       spec.output.dtype},
  };
  for (const Role& role : roles) {
    auto found = std::find_if(role.available.begin(), role.available.end(),
                              [&](const GraphArg& arg) { return arg.name == role.name; });
    if (found == role.available.end()) {
      std::vector<std::string> names;
      for (const auto& arg : role.available) names.push_back(arg.name);
      problems.push_back(std::string(role.kind) + " '" + role.name + "' (role '" + role.role + "') not in graph " +
                         role.kind + "s " + join(names));
      continue;
    }
    if (found->shape.size() != 2) {
      problems.push_back(std::string(role.kind) + " '" + role.name + "' has shape " + shape_text(found->shape) +
                         ", expected rank 2 [N, " + std::to_string(role.width) + "]");
    } else {
      if (found->shape[1] > 0 && static_cast<std::size_t>(found->shape[1]) != role.width) {
        problems.push_back(std::string(role.kind) + " '" + role.name + "' has width " +
                           std::to_string(found->shape[1]) + ", spec " + role.what + " is " +
                           std::to_string(role.width));
      }
      if (found->shape[0] > 0) {
        problems.push_back(std::string(role.kind) + " '" + role.name + "' has a fixed batch size " +
                           std::to_string(found->shape[0]) + ", the contract needs a dynamic batch axis");
      }
    }
    if (dtype_name(found->type) != role.dtype) {
      problems.push_back(std::string(role.kind) + " '" + role.name + "' has dtype " + dtype_name(found->type) +
                         ", expected " + role.dtype);
    }
    if (std::string(role.role) == "showers") output_type = found->type;
  }
  for (const auto& arg : inputs) {
    if (arg.name != spec.io_names.z && arg.name != spec.io_names.conditions) {
      problems.push_back("graph has an input the contract does not feed: '" + arg.name + "'");
    }
  }
  if (!problems.empty()) {
    std::string message = "model does not match its spec: ";
    for (std::size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
    throw SpecError(message);
  }
  return output_type;
}

}  // namespace

struct Generator::Impl {
  // First member: every Ort object, even a null one, needs the API table to be destroyed.
  const OrtApi& api = ort_api();
  std::string path;
  GeneratorOptions options;
  ModelSpec spec;
  std::string provider = "CPUExecutionProvider";
  // Run is not const in the C++ wrapper but is thread-safe in ONNX Runtime.
  mutable Ort::Session session{nullptr};
  ONNXTensorElementDataType output_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  const char* input_names[2] = {nullptr, nullptr};
  const char* output_names[1] = {nullptr};
};

Generator::Generator(const std::string& model_path, const GeneratorOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& self = *impl_;
  self.path = model_path;
  self.options = options;
  if (!std::filesystem::is_regular_file(model_path)) {
    throw ModelError("model file '" + model_path + "' does not exist");
  }
  if (options.threads < 0) {
    throw Error("threads must be >= 0 (0: all cores), got " + std::to_string(options.threads));
  }

  Ort::SessionOptions session_options;
  try {
    ort_env();
    session_options.SetIntraOpNumThreads(options.threads);
    // One request at a time: inter-op parallelism only adds contention for a feed-forward decoder.
    session_options.SetInterOpNumThreads(1);
    session_options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
    session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  } catch (const Ort::Exception& error) {
    throw ModelError(std::string("cannot set up ONNX Runtime: ") + error.what());
  }
  if (options.device == Device::cuda) {
#ifdef FASTSIM_WITH_CUDA
    const auto providers = available_providers();
    if (std::find(providers.begin(), providers.end(), "CUDAExecutionProvider") == providers.end()) {
      throw ProviderError("device 'cuda' is not available in ONNX Runtime " + onnxruntime_version() +
                          "; available providers: " + join(providers));
    }
    try {
      OrtCUDAProviderOptions cuda;
      cuda.device_id = options.cuda_device_id;
      session_options.AppendExecutionProvider_CUDA(cuda);
      // Never a silent fallback: nodes CUDA cannot run make loading fail instead of landing on the CPU.
      session_options.AddConfigEntry("session.disable_cpu_ep_fallback", "1");
    } catch (const Ort::Exception& error) {
      throw ProviderError(std::string("device 'cuda' cannot be used: ") + error.what());
    }
    self.provider = "CUDAExecutionProvider";
#else
    throw ProviderError("device 'cuda' requested, but this program was built without CUDA support "
                        "(rebuild with FASTSIM_WITH_CUDA=ON); available: cpu");
#endif
  }

  try {
    self.session = Ort::Session(ort_env(), model_path.c_str(), session_options);
  } catch (const Ort::Exception& error) {
    throw ModelError("model file '" + model_path + "' cannot be loaded by ONNX Runtime: " + error.what());
  }

  // The spec: the model's own metadata, else an explicit or implicit sidecar.
  Ort::AllocatorWithDefaultOptions allocator;
  auto metadata = self.session.GetModelMetadata();
  auto embedded = metadata.LookupCustomMetadataMapAllocated(kSpecKey, allocator);
  const std::filesystem::path sidecar =
      std::filesystem::path(options.spec_path.empty() ? model_path + ".json" : options.spec_path);
  if (!options.spec_path.empty() || !embedded) {
    if (!std::filesystem::is_regular_file(sidecar)) {
      if (!options.spec_path.empty()) throw SpecError("spec file '" + sidecar.string() + "' does not exist");
      throw SpecError("model '" + model_path + "' has no '" + kSpecKey + "' metadata and no sidecar '" +
                      sidecar.filename().string() + "'; pass the spec file");
    }
    try {
      self.spec = ModelSpec::from_json(read_text(sidecar));
    } catch (const SpecError& error) {
      throw SpecError(std::string(error.what()) + " (in '" + sidecar.string() + "')");
    }
  } else {
    try {
      self.spec = ModelSpec::from_json(embedded.get());
    } catch (const SpecError& error) {
      throw SpecError(std::string(error.what()) + " (in the '" + kSpecKey + "' metadata of '" + model_path + "')");
    }
  }
  self.output_type = check_graph(self.spec, self.session);
  self.input_names[0] = self.spec.io_names.z.c_str();
  self.input_names[1] = self.spec.io_names.conditions.c_str();
  self.output_names[0] = self.spec.io_names.showers.c_str();
}

Generator::~Generator() = default;
Generator::Generator(Generator&&) noexcept = default;
Generator& Generator::operator=(Generator&&) noexcept = default;

const ModelSpec& Generator::spec() const { return impl_->spec; }
const std::string& Generator::path() const { return impl_->path; }
const std::string& Generator::provider() const { return impl_->provider; }

void Generator::check_conditions(const float* conditions, std::size_t n) const {
  const auto& specs = impl_->spec.conditions;
  for (std::size_t row = 0; row < n; ++row) {
    for (std::size_t col = 0; col < specs.size(); ++col) {
      const double value = conditions[row * specs.size() + col];
      const ConditionSpec& condition = specs[col];
      std::ostringstream message;
      if (!std::isfinite(value)) {
        message << "condition '" << condition.name << "' must be a finite number in " << condition.unit
                << ", got " << value << " (row " << row << ")";
        throw ConditionError(message.str());
      }
      // A code that is no category is refused even with allow_extrapolation, as in Python.
      if (condition.categorical() && !condition.is_code(value)) {
        message << "condition '" << condition.name << "' must be one of " << condition.category_list() << ", got "
                << value << " (row " << row << ")";
        throw ConditionError(message.str());
      }
      if (!impl_->options.allow_extrapolation && !condition.in_range(value)) {
        message << "condition '" << condition.name << "' must be in the model's range [" << condition.min << ", "
                << condition.max << "] " << condition.unit << ", got " << value << " (row " << row
                << "); allow extrapolation to go outside it";
        throw ConditionError(message.str());
      }
    }
  }
}

void Generator::decode(const float* z, const float* conditions, std::size_t n, float* showers) const {
  if (n == 0) return;
  const Impl& self = *impl_;
  const auto rows = static_cast<int64_t>(n);
  const int64_t z_shape[2] = {rows, static_cast<int64_t>(latent_dim())};
  const int64_t c_shape[2] = {rows, static_cast<int64_t>(n_conditions())};
  const int64_t s_shape[2] = {rows, static_cast<int64_t>(n_voxels())};
  try {
    auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    // Inputs are only read: the const_cast is what the C API's signature asks for.
    Ort::Value inputs[2] = {
        Ort::Value::CreateTensor<float>(memory, const_cast<float*>(z), n * latent_dim(), z_shape, 2),
        Ort::Value::CreateTensor<float>(memory, const_cast<float*>(conditions), n * n_conditions(), c_shape, 2),
    };
    if (self.output_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      // The output goes straight into the caller's buffer: no copy.
      Ort::Value output = Ort::Value::CreateTensor<float>(memory, showers, n * n_voxels(), s_shape, 2);
      self.session.Run(Ort::RunOptions{nullptr}, self.input_names, inputs, 2, self.output_names, &output, 1);
    } else {
      auto outputs = self.session.Run(Ort::RunOptions{nullptr}, self.input_names, inputs, 2, self.output_names, 1);
      const auto* half = outputs[0].GetTensorData<Ort::Float16_t>();
      for (std::size_t i = 0; i < n * n_voxels(); ++i) showers[i] = half[i].ToFloat();
    }
  } catch (const Ort::Exception& error) {
    throw ModelError("running model '" + self.path + "' failed: " + error.what());
  }
}

std::vector<float> Generator::decode(const std::vector<float>& z, const std::vector<float>& conditions) const {
  const std::size_t n = conditions.size() / n_conditions();
  if (conditions.size() != n * n_conditions() || z.size() != n * latent_dim()) {
    throw Error("decode: expected z of n x " + std::to_string(latent_dim()) + " and conditions of n x " +
                std::to_string(n_conditions()) + " values, got " + std::to_string(z.size()) + " and " +
                std::to_string(conditions.size()));
  }
  std::vector<float> showers(n * n_voxels());
  decode(z.data(), conditions.data(), n, showers.data());
  return showers;
}

void Generator::generate(const float* conditions, std::size_t n, std::mt19937_64& rng, float* showers) const {
  check_conditions(conditions, n);
  std::vector<float> z(n * latent_dim());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& value : z) value = normal(rng);
  decode(z.data(), conditions, n, showers);
}

std::vector<float> Generator::generate(const std::vector<float>& conditions, std::mt19937_64& rng) const {
  const std::size_t n = conditions.size() / n_conditions();
  if (conditions.size() != n * n_conditions()) {
    throw ConditionError("conditions must hold n x " + std::to_string(n_conditions()) + " values, got " +
                         std::to_string(conditions.size()));
  }
  std::vector<float> showers(n * n_voxels());
  generate(conditions.data(), n, rng, showers.data());
  return showers;
}

std::vector<std::string> available_providers() {
  ort_api();
  return Ort::GetAvailableProviders();
}

std::string onnxruntime_version() { return OrtGetApiBase()->GetVersionString(); }

}  // namespace fastsim
