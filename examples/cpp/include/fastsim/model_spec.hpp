// The fastsim model contract as C++ sees it: the fields of the fastsim.spec
// JSON document (format "fastsim-decoder/1", "fastsim-decoder/1.1" when a
// condition is periodic, "fastsim-decoder/1.2" when one is categorical) a host
// needs to drive a decoder.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace fastsim {

/// The ONNX metadata_props key holding the spec document.
inline constexpr const char* kSpecKey = "fastsim.spec";
/// The spec format of models whose conditions are all non-periodic.
inline constexpr const char* kSpecFormat = "fastsim-decoder/1";
/// The spec format that adds the optional `period` of a condition (e.g. an azimuth).
inline constexpr const char* kSpecFormatPeriodic = "fastsim-decoder/1.1";
/// The spec format that adds the optional `categories` of a condition (e.g. the particle type).
inline constexpr const char* kSpecFormatCategorical = "fastsim-decoder/1.2";

/// One category of a categorical condition: its label and the code the decoder receives.
struct Category {
  std::string label;  // e.g. "photon"
  double code = 0.0;  // e.g. 22 (an integer of magnitude <= 2^24: exact in float32)
};

/// One physical condition input, e.g. incident_energy in MeV on [1e3, 1e6].
struct ConditionSpec {
  std::string name;
  std::string unit;
  double min = 0.0;
  double max = 0.0;
  std::string sampling;  // "log-uniform", "uniform", ... (how Python samples it)
  double period = 0.0;   // > 0 for a periodic condition (format 1.1), 0 otherwise
  std::vector<Category> categories;  // in spec order; non-empty for a categorical condition (format 1.2)

  bool periodic() const { return period > 0.0; }
  bool categorical() const { return !categories.empty(); }
  /// The code of a category given by its label (case-insensitive) or its code written as a
  /// number ("photon", "Photon", "22"); nullopt when it is none of the categories.
  std::optional<double> category_code(const std::string& text) const;
  /// Whether `value` is one of the codes.
  bool is_code(double value) const;
  /// "electron (11), photon (22)", as the Python runtime lists them.
  std::string category_list() const;
  /// A periodic value moved into [min, min + period); any other value unchanged.
  double wrap(double value) const;
  /// Whether `value` is in [min, max], with the Python runtime's slack of 1e-6 x max(|min|, |max|)
  /// so that float32 round trips of the range ends (1 TeV, pi / 3) pass.
  bool in_range(double value) const;
};

/// Where one voxel is, relative to the shower axis at the calorimeter front face.
struct VoxelCentre {
  std::size_t layer = 0;
  double depth_mm = 0.0;  // along the particle direction, centre of the layer
  double r_mm = 0.0;      // distance from the axis, centre of the radial bin
  double alpha = 0.0;     // angle around the axis in [-pi, pi], centre of the alpha bin
};

/// The output's cylindrical voxel geometry (the spec's output.geometry block):
/// layers along the particle direction, each cut into radial rings and alpha sectors.
struct CylindricalGeometry {
  struct Layer {
    std::vector<double> r_edges;  // mm, increasing
    std::size_t n_alpha = 0;
  };
  double layer_thickness_mm = 3.4;
  std::vector<Layer> layers;  // empty when the spec has no geometry

  std::size_t n_voxels() const;
  /// Every voxel's centre in the output's flattening order (layer, alpha, radial).
  std::vector<VoxelCentre> voxel_centres() const;
};

/// The output tensor: energy per voxel.
struct OutputSpec {
  std::string name;
  std::string unit;
  std::size_t n_voxels = 0;
  std::string dtype = "float32";  // or "float16" for a half-precision variant
  CylindricalGeometry geometry;
};

/// Graph tensor names of the three contract roles (default: z, conditions, showers).
struct IoNames {
  std::string z = "z";
  std::string conditions = "conditions";
  std::string showers = "showers";
};

/// The parsed fastsim.spec document (fields a host needs; the rest is kept in json).
struct ModelSpec {
  std::string format;
  std::string name;
  std::string version;
  std::size_t latent_dim = 0;
  std::string prior = "standard_normal";
  std::vector<ConditionSpec> conditions;
  OutputSpec output;
  IoNames io_names;
  std::string json;  // the document as read

  /// Parse and check a spec document; throws SpecError naming the bad field.
  static ModelSpec from_json(const std::string& text);

  /// Index of the condition called `name`; throws ConditionError listing the names.
  std::size_t condition_index(const std::string& name) const;
};

}  // namespace fastsim
