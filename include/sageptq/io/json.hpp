#pragma once
/// @file json.hpp
/// Strict JSON parsing for io/ (nlohmann_json is used inside io/ only): duplicate keys, which nlohmann would resolve
/// silently by keeping the last, are an error, and errors come back as status::malformed_input, never as exceptions.

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../core/status.hpp"

SAGEPTQ_NAMESPACE_BEGIN
namespace io {
namespace detail {

using json = nlohmann::json;

/// Parses `text` as JSON. nlohmann keeps the last of duplicate keys silently; the callback rejects them instead.
inline result<json> parse_json_strict(std::string_view text, const std::string& origin) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  const auto on_event = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end: open_objects.pop_back(); break;
      case json::parse_event_t::key:
        if (!open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default: break;
    }
    return true;
  };
  try {
    json value = json::parse(text.begin(), text.end(), on_event);
    if (!duplicate.empty()) return fail(status::malformed_input, origin + ": duplicate key \"" + duplicate + "\"");
    return value;
  } catch (const json::exception& e) {
    return fail(status::malformed_input, origin + ": not valid JSON: " + e.what());
  }
}

}  // namespace detail
}  // namespace io
SAGEPTQ_NAMESPACE_END
