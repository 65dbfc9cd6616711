// fastsim C++ errors: one exception type per kind of failure, mirroring the
// Python runtime's fastsim.errors, all deriving from fastsim::Error.
#pragma once

#include <stdexcept>
#include <string>

namespace fastsim {

/// Base of every error this library throws; what() is a one-line message.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The model file is missing, unreadable or its graph breaks the contract.
class ModelError : public Error {
 public:
  using Error::Error;
};

/// The fastsim.spec document is missing, malformed or unsupported.
class SpecError : public Error {
 public:
  using Error::Error;
};

/// A condition value (e.g. the incident energy) is invalid or out of range.
class ConditionError : public Error {
 public:
  using Error::Error;
};

/// The requested execution provider is not available.
class ProviderError : public Error {
 public:
  using Error::Error;
};

}  // namespace fastsim
