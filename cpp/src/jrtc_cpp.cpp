// jrtc-cpp ENGINE_DIR --ids 1,2,3 [--max-new-tokens N] [--text]
// Greedy generation from an aoti engine; prints the generated ids space-separated on one line, or with
// --text the bytes they stand for (byte-level vocabularies).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "jrtc/engine.h"

namespace {

int usage(const std::string& problem) {
  std::cerr << "jrtc-cpp: error: " << problem << "\n"
            << "usage: jrtc-cpp ENGINE_DIR --ids 1,2,3 [--max-new-tokens N] [--text]\n";
  return 2;
}

bool parse_ids(const std::string& text, std::vector<int64_t>& ids) {
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(begin, end - begin);
    size_t used = 0;
    try {
      ids.push_back(std::stoll(item, &used));
    } catch (const std::exception&) {
      return false;
    }
    if (used != item.size()) return false;
    begin = end + 1;
  }
  return !ids.empty();
}

}  // namespace

int main(int argc, char** argv) {
  std::string engine_dir, ids_text;
  int64_t max_new_tokens = 256;
  bool as_text = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--ids" && i + 1 < argc) {
      ids_text = argv[++i];
    } else if (arg == "--max-new-tokens" && i + 1 < argc) {
      try {
        max_new_tokens = std::stoll(argv[++i]);
      } catch (const std::exception&) {
        return usage("--max-new-tokens takes a positive integer");
      }
      if (max_new_tokens < 1) return usage("--max-new-tokens takes a positive integer");
    } else if (arg == "--text") {
      as_text = true;
    } else if (!arg.empty() && arg[0] != '-' && engine_dir.empty()) {
      engine_dir = arg;
    } else {
      return usage("unexpected argument " + arg);
    }
  }
  if (engine_dir.empty()) return usage("no ENGINE_DIR given");
  std::vector<int64_t> prompt;
  if (!parse_ids(ids_text, prompt)) return usage("--ids takes comma-separated token ids, e.g. --ids 1,2,3");

  try {
    jrtc::Engine engine(engine_dir);
    if (as_text && engine.vocab_size() != 256) {
      std::cerr << "jrtc-cpp: error: --text needs a byte-level vocabulary (256 ids); this model has "
                << engine.vocab_size() << "\n";
      return 1;
    }
    bool first = true;
    engine.generate(prompt, max_new_tokens, [&](int64_t id) {
      if (as_text) {
        std::putchar(static_cast<int>(id));
      } else {
        std::cout << (first ? "" : " ") << id;
      }
      std::cout.flush();
      std::fflush(stdout);
      first = false;
    });
    if (!as_text) std::cout << "\n";
  } catch (const std::exception& e) {
    std::string message = e.what();
    std::cerr << "jrtc-cpp: error: " << message.substr(0, message.find('\n')) << "\n";
    return 1;
  }
  return 0;
}
