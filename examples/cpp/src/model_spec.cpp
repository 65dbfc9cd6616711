// ModelSpec::from_json: parses and checks the fastsim.spec document with the
// same rules and messages as the Python runtime (fastsim/spec.py).
#include "fastsim/model_spec.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "fastsim/errors.hpp"

namespace fastsim {
namespace {

// Ordered: a condition's categories keep the document's order, which is the order a
// condition left out is drawn over (as in Python, whose dicts keep it too).
using Json = nlohmann::ordered_json;

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t\n\r\f\v");
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(" \t\n\r\f\v") + 1 - first);
}

// A category code as text: codes are integers, written without exponent or decimals.
std::string code_text(double code) { return std::to_string(static_cast<long long>(code)); }

SpecError fail(const std::string& where, const std::string& expected, const Json& given) {
  return SpecError("spec: " + where + " must be " + expected + ", got " + given.dump());
}

const Json& object_at(const Json& block, const std::string& key, const std::string& where) {
  if (!block.contains(key)) throw SpecError("spec: missing required key '" + key + "' in " + where);
  return block.at(key);
}

std::string string_at(const Json& block, const std::string& key, const std::string& where,
                      const char* fallback = nullptr) {
  if (!block.contains(key)) {
    if (fallback != nullptr) return fallback;
    throw SpecError("spec: missing required key '" + key + "' in " + where);
  }
  const Json& value = block.at(key);
  if (!value.is_string() || value.get<std::string>().empty()) {
    throw fail(where + "." + key, "a non-empty string", value);
  }
  return value.get<std::string>();
}

double number_at(const Json& block, const std::string& key, const std::string& where) {
  const Json& value = object_at(block, key, where);
  if (!value.is_number() || !std::isfinite(value.get<double>())) {
    throw fail(where + "." + key, "a finite number", value);
  }
  return value.get<double>();
}

std::size_t positive_int_at(const Json& block, const std::string& key, const std::string& where) {
  const Json& value = object_at(block, key, where);
  if (!value.is_number_integer() || value.get<long long>() <= 0) {
    throw fail(where == "spec" ? key : where + "." + key, "a positive integer", value);
  }
  return static_cast<std::size_t>(value.get<long long>());
}

// The rules of fastsim/spec.py ConditionSpec._check_categories, in its order.
void check_categories(const ConditionSpec& condition, const std::string& named) {
  const auto& categories = condition.categories;
  Json given = Json::object();
  Json labels = Json::array();
  Json codes = Json::array();
  for (const Category& category : categories) {
    given[category.label] = category.code;
    labels.push_back(category.label);
    codes.push_back(category.code);
  }
  if (condition.sampling != "categorical") {
    throw fail(named + ".sampling", "'categorical' for a condition with categories", condition.sampling);
  }
  if (categories.size() < 2) {
    throw fail(named + ".categories", "at least two categories {label: code}", categories.empty() ? Json() : given);
  }
  for (const Category& category : categories) {
    if (trim(category.label).empty() || category.label.find_first_of(":,") != std::string::npos) {
      throw fail(named + ".categories", "labels that are non-empty strings without ':' or ','", labels);
    }
  }
  // Codes reach the decoder as float32: integers up to 2^24 are exact there.
  for (const Category& category : categories) {
    if (category.code != std::round(category.code) || std::abs(category.code) > 16777216.0) {
      throw fail(named + ".categories", "integer codes of magnitude <= 2**24", codes);
    }
  }
  std::set<std::string> seen_labels;
  std::set<double> seen_codes;
  for (const Category& category : categories) {
    if (!seen_labels.insert(lower(category.label)).second || !seen_codes.insert(category.code).second) {
      throw fail(named + ".categories", "distinct labels and distinct codes", given);
    }
  }
  const double smallest = *seen_codes.begin();
  const double largest = *seen_codes.rbegin();
  if (condition.min != smallest || condition.max != largest) {
    throw fail(named + ".min/max",
               "the smallest and largest code (" + code_text(smallest) + ", " + code_text(largest) + ")",
               Json::array({condition.min, condition.max}));
  }
}

ConditionSpec parse_condition(const Json& block, std::size_t index) {
  const std::string where = "conditions[" + std::to_string(index) + "]";
  if (!block.is_object()) throw fail(where, "a JSON object", block);
  ConditionSpec condition;
  condition.name = string_at(block, "name", where);
  condition.unit = string_at(block, "unit", where);
  condition.min = number_at(block, "min", where);
  condition.max = number_at(block, "max", where);
  condition.sampling = string_at(block, "sampling", where, "uniform");
  if (block.contains("categories")) {
    const Json& categories = block.at("categories");
    if (!categories.is_object()) throw fail(where + ".categories", "a JSON object", categories);
    for (const auto& [label, code] : categories.items()) {
      if (!code.is_number() || !std::isfinite(code.get<double>())) {
        throw fail(where + ".categories['" + label + "']", "a finite number", code);
      }
      condition.categories.push_back({label, code.get<double>()});
    }
  }
  const std::string named = "conditions['" + condition.name + "']";
  if (condition.sampling != "uniform" && condition.sampling != "log-uniform" && condition.sampling != "categorical") {
    throw fail(named + ".sampling", "one of [uniform, log-uniform, categorical]", condition.sampling);
  }
  if (block.contains("categories") || condition.sampling == "categorical") check_categories(condition, named);
  if (!(condition.min < condition.max)) {
    throw fail(named + ".min/max", "finite with min < max", Json::array({condition.min, condition.max}));
  }
  if (condition.sampling == "log-uniform" && condition.min <= 0) {
    throw fail(named + ".min", "> 0 for log-uniform sampling", condition.min);
  }
  if (block.contains("period")) {
    const Json& period = block.at("period");
    if (!period.is_number() || !std::isfinite(period.get<double>()) || period.get<double>() <= 0) {
      throw fail(named + ".period", "a finite number > 0", period);
    }
    condition.period = period.get<double>();
    if (condition.max - condition.min > condition.period) {
      throw fail(named + ".period", "at least max - min = " + Json(condition.max - condition.min).dump(),
                 period);
    }
    if (condition.sampling != "uniform") {
      throw fail(named + ".sampling", "'uniform' for a periodic condition", condition.sampling);
    }
  }
  return condition;
}

// An absent or empty geometry block is allowed (the host then has no voxel positions);
// a cylindrical one must be complete and match n_voxels.
CylindricalGeometry parse_geometry(const Json& block, std::size_t n_voxels) {
  CylindricalGeometry geometry;
  if (block.is_object() && block.empty()) return geometry;
  if (!block.is_object()) throw fail("output.geometry", "a JSON object", block);
  const Json kind = block.value("kind", Json("cylindrical"));
  if (kind != "cylindrical") throw fail("output.geometry.kind", "'cylindrical'", kind);
  if (block.contains("layer_thickness_mm")) {
    geometry.layer_thickness_mm = number_at(block, "layer_thickness_mm", "output.geometry");
  }
  const Json& layers = object_at(block, "layers", "output.geometry");
  if (!layers.is_array() || layers.empty()) throw fail("output.geometry.layers", "a non-empty list", layers);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const std::string where = "output.geometry.layers[" + std::to_string(i) + "]";
    const Json& layer = layers[i];
    if (!layer.is_object()) throw fail(where, "a JSON object", layer);
    CylindricalGeometry::Layer parsed;
    parsed.n_alpha = positive_int_at(layer, "n_alpha", where);
    const Json& edges = object_at(layer, "r_edges", where);
    if (!edges.is_array() || edges.size() < 2) throw fail(where + ".r_edges", "at least two radii", edges);
    for (const Json& edge : edges) {
      if (!edge.is_number() || (!parsed.r_edges.empty() && edge.get<double>() <= parsed.r_edges.back())) {
        throw fail(where + ".r_edges", "increasing numbers", edges);
      }
      parsed.r_edges.push_back(edge.get<double>());
    }
    geometry.layers.push_back(std::move(parsed));
  }
  if (geometry.n_voxels() != n_voxels) {
    throw fail("output.geometry", "a geometry of output.n_voxels = " + std::to_string(n_voxels) + " voxels",
               geometry.n_voxels());
  }
  return geometry;
}

OutputSpec parse_output(const Json& block) {
  if (!block.is_object()) throw fail("output", "a JSON object", block);
  OutputSpec output;
  output.name = string_at(block, "name", "output", "showers");
  output.unit = string_at(block, "unit", "output", "MeV");
  output.n_voxels = positive_int_at(block, "n_voxels", "output");
  output.dtype = string_at(block, "dtype", "output", "float32");
  if (output.dtype != "float32" && output.dtype != "float16") {
    throw fail("output.dtype", "one of [float32, float16]", output.dtype);
  }
  if (block.contains("geometry")) output.geometry = parse_geometry(block.at("geometry"), output.n_voxels);
  return output;
}

IoNames parse_io_names(const Json& block) {
  if (!block.is_object()) throw fail("io_names", "a JSON object", block);
  IoNames names;
  for (const auto& [role, value] : block.items()) {
    if (!value.is_string()) throw fail("io_names." + role, "a string", value);
    if (role == "z") {
      names.z = value.get<std::string>();
    } else if (role == "conditions") {
      names.conditions = value.get<std::string>();
    } else if (role == "showers") {
      names.showers = value.get<std::string>();
    } else {
      throw fail("io_names", "keys among [conditions, showers, z]", role);
    }
  }
  return names;
}

}  // namespace

ModelSpec ModelSpec::from_json(const std::string& text) {
  Json doc;
  try {
    doc = Json::parse(text);
  } catch (const Json::parse_error& error) {
    throw SpecError(std::string("spec: not valid JSON (") + error.what() + ")");
  }
  if (!doc.is_object()) throw fail("document", "a JSON object", doc);

  ModelSpec spec;
  spec.json = text;
  spec.format = string_at(doc, "format", "spec", kSpecFormat);
  if (spec.format != kSpecFormat && spec.format != kSpecFormatPeriodic && spec.format != kSpecFormatCategorical) {
    throw fail("format",
               std::string("one of ['") + kSpecFormat + "', '" + kSpecFormatPeriodic + "', '" +
                   kSpecFormatCategorical + "']",
               spec.format);
  }
  spec.name = string_at(doc, "name", "spec", "unnamed");
  if (doc.contains("version")) {
    const Json& version = doc.at("version");
    spec.version = version.is_string() ? version.get<std::string>() : version.dump();
  } else {
    spec.version = "0.0.0";
  }
  spec.latent_dim = positive_int_at(doc, "latent_dim", "spec");
  if (doc.contains("prior")) {
    const Json& prior = doc.at("prior");
    if (!prior.is_object()) throw fail("prior", "a JSON object", prior);
    const Json kind = prior.value("kind", Json());
    if (kind != "standard_normal") throw fail("prior.kind", "one of [standard_normal]", kind);
  }

  const Json& conditions = object_at(doc, "conditions", "spec");
  if (!conditions.is_array() || conditions.empty()) {
    throw fail("conditions", "a non-empty list of conditions", conditions);
  }
  std::set<std::string> seen;
  for (std::size_t i = 0; i < conditions.size(); ++i) {
    spec.conditions.push_back(parse_condition(conditions[i], i));
    if (!seen.insert(spec.conditions.back().name).second) {
      throw fail("conditions", "uniquely named", spec.conditions.back().name);
    }
    // A format-1 reader knows no period: such a spec would be read without its wrapping.
    if (spec.conditions.back().periodic() && spec.format == kSpecFormat) {
      throw fail("conditions['" + spec.conditions.back().name + "'].period",
                 std::string("used with format '") + kSpecFormatPeriodic + "'", spec.format);
    }
    // Readers of formats 1 and 1.1 know no categories: such a spec would be drawn as a range.
    if (spec.conditions.back().categorical() && spec.format != kSpecFormatCategorical) {
      throw fail("conditions['" + spec.conditions.back().name + "'].categories",
                 std::string("used with format '") + kSpecFormatCategorical + "'", spec.format);
    }
  }
  spec.output = parse_output(object_at(doc, "output", "spec"));
  if (doc.contains("io_names")) spec.io_names = parse_io_names(doc.at("io_names"));
  return spec;
}

double ConditionSpec::wrap(double value) const {
  if (!periodic() || !std::isfinite(value)) return value;
  double wrapped = min + std::fmod(value - min, period);
  if (wrapped < min) wrapped += period;
  if (wrapped >= min + period) wrapped = min;  // fmod rounding at the upper edge
  return wrapped;
}

std::optional<double> ConditionSpec::category_code(const std::string& text) const {
  const std::string wanted = lower(trim(text));
  for (const Category& category : categories) {
    if (lower(category.label) == wanted) return category.code;
  }
  // A code written as a number: 22, 22.0, 2.2e1.
  const std::string number = trim(text);
  if (number.empty() || number.find_first_of("xX") != std::string::npos) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(number.c_str(), &end);
  if (end != number.c_str() + number.size() || !is_code(value)) return std::nullopt;
  return value;
}

bool ConditionSpec::is_code(double value) const {
  return std::any_of(categories.begin(), categories.end(), [&](const Category& c) { return c.code == value; });
}

std::string ConditionSpec::category_list() const {
  std::string out;
  for (std::size_t i = 0; i < categories.size(); ++i) {
    out += (i ? ", " : "") + categories[i].label + " (" + code_text(categories[i].code) + ")";
  }
  return out;
}

bool ConditionSpec::in_range(double value) const {
  const double slack = 1e-6 * std::max(std::abs(min), std::abs(max));
  return value >= min - slack && value <= max + slack;
}

std::size_t CylindricalGeometry::n_voxels() const {
  std::size_t total = 0;
  for (const Layer& layer : layers) total += layer.n_alpha * (layer.r_edges.size() - 1);
  return total;
}

std::vector<VoxelCentre> CylindricalGeometry::voxel_centres() const {
  const double pi = std::acos(-1.0);
  std::vector<VoxelCentre> centres;
  centres.reserve(n_voxels());
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const Layer& layer = layers[l];
    for (std::size_t k = 0; k < layer.n_alpha; ++k) {
      const double alpha = -pi + (static_cast<double>(k) + 0.5) * 2.0 * pi / static_cast<double>(layer.n_alpha);
      for (std::size_t j = 0; j + 1 < layer.r_edges.size(); ++j) {
        const double r = 0.5 * (layer.r_edges[j] + layer.r_edges[j + 1]);
        centres.push_back({l, (static_cast<double>(l) + 0.5) * layer_thickness_mm, r, alpha});
      }
    }
  }
  return centres;
}

std::size_t ModelSpec::condition_index(const std::string& condition_name) const {
  std::string names;
  for (std::size_t i = 0; i < conditions.size(); ++i) {
    if (conditions[i].name == condition_name) return i;
    names += (i ? ", " : "") + conditions[i].name;
  }
  throw ConditionError("condition '" + condition_name + "' is not an input of model '" + name +
                       "' (its conditions: " + names + ")");
}

}  // namespace fastsim
