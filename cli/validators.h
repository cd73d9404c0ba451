// Number checks for CLI options. CLI11 2.1's PositiveNumber/NonNegativeNumber print their
// double bounds in full ("Value 0 not in range 0.000000 to 1797693134862315708...") when they
// fail; these say what the value must be: "--tokens: must be > 0 (got 0)".
#pragma once

#include <CLI/CLI.hpp>

#include <limits>
#include <string>

namespace xmoe::cli {

/// Accepts a number in [lo, hi]; `rule` is what the error says it must be.
inline CLI::Validator number_in(double lo, double hi, const std::string& rule,
                                const std::string& help_name) {
  return CLI::Validator(
      [lo, hi, rule](std::string& input) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(input, value)) return "'" + input + "' is not a number";
        if (!(value >= lo && value <= hi)) return "must be " + rule + " (got " + input + ")";
        return {};
      },
      help_name);
}

inline const CLI::Validator kPositive =
    number_in(std::numeric_limits<double>::denorm_min(), std::numeric_limits<double>::max(), "> 0",
              "POSITIVE");
inline const CLI::Validator kNonNegative =
    number_in(0, std::numeric_limits<double>::max(), ">= 0", "NONNEGATIVE");

/// Rejects an empty value: `--languages ""` must not silently mean "the default".
inline const CLI::Validator kNonEmpty = CLI::Validator(
    [](std::string& input) -> std::string { return input.empty() ? "must not be empty" : ""; },
    "TEXT");

/// An integer range check whose help and error show the bounds: "in [2, 4096]".
inline CLI::Validator int_in(long long lo, long long hi) {
  const std::string bounds = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return number_in(static_cast<double>(lo), static_cast<double>(hi), "in " + bounds, bounds);
}

// Upper bounds that keep a typo from hanging the process or filling memory.
inline constexpr long long kMaxThreads = 256;
inline constexpr long long kMaxBenchIterations = 100000;

}  // namespace xmoe::cli
